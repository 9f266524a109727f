#!/usr/bin/env bash
# The test suite: set up, then run every test (learning checks and 2-process DDP tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_report.py renders the report page in headless Chromium. On a root Debian machine (CI)
# install Debian's when none is on PATH (about 30 s; once), so that test runs instead of skipping.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
        >/dev/null || echo "scripts/test.sh: could not install chromium; tests/test_report.py skips its browser checks" >&2
fi
# One pytest worker per usable core (within the CPU quota; pytest-xdist, at most 8), each with one intra-op thread: most tests are
# small enough that Python, not the arithmetic, bounds them, so two workers of one thread finish the
# suite in about 70% of the time of one worker of two threads (benchmarks/README.md). The thread count
# is fixed so that a learning check's arithmetic does not depend on the core count; the DDP tests' ranks
# inherit it. `bash scripts/test.sh -n 0` runs in this process, one test at a time.
workers=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the usable cores (nproc obeys both variables)
# A container's CPU quota (cgroup v2 cpu.max, v1 cfs_quota_us) can allow fewer cores than nproc sees.
quota=
if [ -r /sys/fs/cgroup/cpu.max ]; then
    read -r q p < /sys/fs/cgroup/cpu.max && [ "$q" != max ] && quota=$(( (q + p - 1) / p ))
elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] && [ -r /sys/fs/cgroup/cpu/cpu.cfs_period_us ]; then
    q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); p=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
    [ "$q" -gt 0 ] && quota=$(( (q + p - 1) / p ))
fi
if [ -n "$quota" ] && [ "$quota" -ge 1 ] && [ "$quota" -lt "$workers" ]; then
    workers=$quota
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -n $((workers < 8 ? workers : 8)) --dist worksteal --durations=15 "$@"
