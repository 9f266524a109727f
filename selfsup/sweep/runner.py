"""A study's runs started, one at a time, in parallel or through submitit, each resumable."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from selfsup.errors import ConfigError
from selfsup.sweep.study import Run, Study, check_runs_match, expand


def commands(study: Study, run: Run) -> list[list[str]]:
    """The commands that bring ``run`` to done: pretrain (resumed when it was cut), then the study's
    fine-tuning where it is not written yet."""
    python = [sys.executable, "-m", "selfsup"]
    steps = []
    status = run.status()
    if status != "done":
        recipe = run.point.recipe or study.recipe
        steps.append([*python, "pretrain", *([recipe] if recipe else []), *run.overrides,
                      *(["--resume"] if status == "resume" else [])])
    if study.finetune and not (run.folder / "evaluations" / "finetune.json").is_file():
        labels = ",".join(f"{100 * f:g}%" for f in study.finetune)
        steps.append([*python, "evaluate", "finetune", str(run.folder / "checkpoints" / "last.ckpt"),
                      "--labels", labels, "--seeds", str(run.seed),  # each run its own subset and scratch network
                      *(["--steps", str(study.finetune_steps)] if study.finetune_steps else [])])
    return steps


_STOPPING = threading.Event()
"""Set when the sweep is interrupted: no further command starts (local executor)."""
_RUNNING: set[subprocess.Popen] = set()
_LOCK = threading.Lock()


def _execute_one(steps: list[list[str]], log: str) -> int:
    """Run the commands in order, appending their output to ``log``; the first failing status
    (130 for a command the interrupted sweep never started)."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        for command in steps:
            with _LOCK:
                if _STOPPING.is_set():
                    return 130
                out.write(f"$ {shlex.join(command)}\n")
                out.flush()
                child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
                _RUNNING.add(child)
            try:
                code = child.wait()
            finally:
                with _LOCK:
                    _RUNNING.discard(child)
            if code != 0:
                return code
    return 0


def _check_configs(study: Study, runs: list[Run]) -> None:
    """Each point's config read as its runs will read it, before any starts: a misspelt key or a bad value stops
    the sweep in one line instead of failing every run (or every cluster job) later."""
    from selfsup.config import load_config

    seen = set()
    for run in runs:
        if run.point.name in seen or run.status() == "done":
            continue
        seen.add(run.point.name)
        try:
            load_config(run.point.recipe or study.recipe, list(run.overrides))
        except ConfigError as error:
            raise ConfigError(f"sweep {study.name}, point {run.point.name}: {error}") from None


def _stop_local_runs(pool: ThreadPoolExecutor) -> None:
    """Ctrl-C: the queued runs never start, the running ones get SIGINT (as from the terminal: each writes its
    checkpoint's last whole state and stops) and are waited for, so rerunning the sweep resumes them."""
    with _LOCK:
        _STOPPING.set()
        running = list(_RUNNING)
    pool.shutdown(wait=False, cancel_futures=True)
    for child in running:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    for child in running:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()


def execute(study: Study, *, jobs: int = 1, executor: str = "local", slurm: dict[str, Any] | None = None,
            progress: bool = True, say: Callable[[str], None] = print) -> dict[str, int]:
    """Bring every run of ``study`` to done; returns ``{run folder: exit status}`` of those run now.

    ``executor="local"``: ``jobs`` processes at a time on this machine. ``"slurm"``: each run a
    submitit job (``slurm`` holds submitit's parameters, e.g. ``{"slurm_partition": "gpu",
    "timeout_min": 60, "gpus_per_node": 1}``); ``"submitit-local"``: submitit's local executor (the
    same path without a cluster, what the tests use).
    """
    from tqdm.auto import tqdm

    if executor not in ("local", "slurm", "submitit-local"):
        raise ConfigError(f"--executor: {executor!r}; choose local, slurm or submitit-local")
    pool_of_jobs = _submitit_executor(study, executor, slurm) if executor != "local" else None
    check_runs_match(study)
    runs = expand(study)
    todo = [run for run in runs if commands(study, run)]
    _check_configs(study, todo)
    counts = {status: sum(r.status() == status for r in todo) for status in ("resume", "new")}
    shape = (f"{len(study.points)} points x {len(study.seeds)} seeds" if study.uniform_seeds else
             f"{len(study.points)} points, " + ", ".join(f"{p.name} {len(study.seeds_of(p))}" for p in study.points)
             + " seeds")
    say(f"sweep {study.name}: {len(runs)} runs ({shape}) in "
        f"{study.folder}; {len(runs) - len(todo)} done, {counts['resume']} to resume, {counts['new']} to start")
    results: dict[str, int] = {}
    if not todo:
        return results
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", desc=study.name, disable=not progress)
    if executor == "local":
        _STOPPING.clear()
        pool = ThreadPoolExecutor(max_workers=max(1, jobs))
        try:
            futures = {pool.submit(_execute_one, commands(study, run), str(run.folder / "sweep.log")): run
                       for run in todo}
            for future, run in futures.items():
                results[str(run.folder)] = future.result()
                bar.update()
        except KeyboardInterrupt:
            bar.close()
            _stop_local_runs(pool)
            raise
        pool.shutdown()
    else:
        submitted = [(pool_of_jobs.submit(_execute_one, commands(study, run), str(run.folder / "sweep.log")), run)
                     for run in todo]
        for job, run in submitted:
            results[str(run.folder)] = job.result()
            bar.update()
    bar.close()
    failed = [folder for folder, code in results.items() if code != 0]
    if failed:
        say(f"sweep {study.name}: {len(failed)} run(s) failed; their output is in <run>/sweep.log: "
            + ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else ""))
    return results


def _submitit_executor(study: Study, executor: str, slurm: dict[str, Any] | None):
    """submitit's executor for ``--executor slurm`` / ``submitit-local``, checked before any run is touched:
    the cluster extra missing, a machine without SLURM and a parameter submitit does not know are one line."""
    try:
        import submitit  # the cluster extra
    except ImportError as error:
        raise ConfigError(f"--executor {executor} needs submitit: pip install 'selfsup[cluster]' ({error})") from None
    if executor == "slurm" and shutil.which("srun") is None:
        raise ConfigError("--executor slurm: this machine has no `srun` on its PATH (not a SLURM cluster's node): "
                          "run the sweep from the cluster's login node, or with --executor local")
    pool = submitit.AutoExecutor(folder=study.folder / "submitit",
                                 cluster="local" if executor == "submitit-local" else "slurm")
    try:
        pool.update_parameters(**(slurm or {}))
    except (ValueError, TypeError, NameError) as error:  # submitit names an unknown parameter with a NameError
        raise ConfigError(f"--slurm: {' '.join(str(error).split())}") from None
    return pool


# -- the summary ------------------------------------------------------------------------------
