"""Forward+backward time and peak memory of our losses against lightly and pytorch-metric-learning.

    .venv/bin/python benchmarks/losses.py                # N = 256 ... 4096, D = 128
    .venv/bin/python benchmarks/losses.py --quick        # N = 256, 1024, 4096
    .venv/bin/python benchmarks/losses.py --threads 1    # a per-core comparison

Every case gets the same float32 inputs (seeded); each reference is checked to
give the same loss and the same input gradients as ours (printed as |diff|).

Time: each side runs once to warm up, then `--repeats` rounds (more for fast
cases, up to about one second each) each run ours and the reference back to
back, alternating which goes first, so both see the same load from whatever
else runs on the machine. Printed: the median seconds of each side and the
median (min-max) over rounds of the per-round speed-up (reference time / our
time), which cancels load that drifts between rounds. Timing runs in this
process with the default allocator, as a user runs it.

Memory: peak resident set size during one forward+backward minus the resident
size just before it (the inputs already allocated), measured in a child process
after one tiny warm-up pass over every case: the peak is reset per case through
/proc/self/clear_refs (Linux), and the child's glibc malloc returns every block
>= 64 KiB to the OS on free (MALLOC_MMAP_THRESHOLD_), so memory freed by an
earlier case cannot hide a later case's peak. The same measure applies to every
library.

pytorch-metric-learning's NTXentLoss builds an N^3-sized tensor (the issue
measured +17 GB at N = 512 and no fit in 24 GB at N = 1024), so it runs only
at N = 256 on this shared machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

D = 128
PML_NTXENT_MAX_N = 256


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_mib(step) -> float:
    """Peak MiB above the starting RSS during one forward+backward `step`."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) / 1024


def _seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _cases(n: int):
    """(loss, reference library, our step, its step) for size n.

    A step builds the graph, backpropagates and returns the loss value and the input gradients.
    """
    from lightly.loss import NTXentLoss as LightlyNTXent
    from pytorch_metric_learning import distances, losses as pml_losses, miners, reducers

    from selfsup import losses

    g = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, D, generator=g).requires_grad_()
    z2 = torch.randn(n, D, generator=g).requires_grad_()
    labels = torch.randint(0, 64, (n,), generator=g)
    pair_labels = torch.arange(n).repeat(2)

    def step(fn):
        def run():
            z1.grad = z2.grad = None
            loss = fn()
            loss.backward()
            return loss.item(), [x.grad for x in (z1, z2) if x.grad is not None]

        return run

    lightly_ntxent = LightlyNTXent(temperature=0.5)
    pml_ntxent = pml_losses.NTXentLoss(temperature=0.5)
    pml_supcon = pml_losses.SupConLoss(temperature=0.1)
    euclidean = distances.LpDistance(normalize_embeddings=False)
    pml_triplet = pml_losses.TripletMarginLoss(margin=0.2, distance=euclidean, reducer=reducers.MeanReducer())
    batch_hard = miners.BatchHardMiner(distance=euclidean)

    our_ntxent = step(lambda: losses.nt_xent(z1, z2, 0.5))
    yield "nt_xent", "lightly", our_ntxent, step(lambda: lightly_ntxent(z1, z2))
    if n <= PML_NTXENT_MAX_N:
        yield "nt_xent", "pml", our_ntxent, step(lambda: pml_ntxent(torch.cat([z1, z2]), pair_labels))
    yield "supcon", "pml", step(lambda: losses.supcon(z1, labels, 0.1)), step(lambda: pml_supcon(z1, labels))
    yield (
        "batch-hard triplet",
        "pml",
        step(lambda: losses.batch_hard_triplet(z1, labels, 0.2)),
        step(lambda: pml_triplet(z1, labels, batch_hard(z1, labels))),
    )


def memory_child(sizes: list[int]) -> None:
    """Print one JSON line per case: the peak MiB of ours and of the reference."""
    for _, _, ours, reference in _cases(8):  # one-time set-up of each library is not a loss's memory
        ours()
        reference()
    for n in sizes:
        for name, library, ours, reference in _cases(n):
            print(json.dumps({"key": [name, n, library], "ours": _peak_mib(ours), "ref": _peak_mib(reference)}))


def _timed(ours, reference, repeats: int) -> tuple[list[float], list[float], float, float]:
    """Interleaved times of both sides, and the largest |loss| and |gradient| differences.

    Fast cases get more rounds than `repeats`, up to about one second of timing or 50 rounds.
    """
    start = time.perf_counter()
    our_value, our_grads = ours()
    ref_value, ref_grads = reference()
    warm_up = time.perf_counter() - start
    grad_diff = max((a - b).abs().max().item() for a, b in zip(our_grads, ref_grads))
    our_times, ref_times = [], []
    for round_ in range(max(repeats, min(50, int(1 / warm_up)))):
        if round_ % 2:
            ref_times.append(_seconds(reference))
            our_times.append(_seconds(ours))
        else:
            our_times.append(_seconds(ours))
            ref_times.append(_seconds(reference))
    return our_times, ref_times, abs(our_value - ref_value), grad_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only N = 256, 1024, 4096")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per case (default 5)")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1:
        parser.error(f"--threads and --repeats must be >= 1, got {args.threads} and {args.repeats}")
    torch.set_num_threads(args.threads)
    sizes = [256, 1024, 4096] if args.quick else [256, 512, 1024, 2048, 4096]
    if args.memory_child:
        memory_child(sizes)
        return

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    command = [sys.executable, __file__, "--memory-child", "--threads", str(args.threads)]
    child = subprocess.run(command + (["--quick"] if args.quick else []), env=env, capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"memory child failed:\n{child.stderr}")
    peaks = {tuple(row["key"]): (row["ours"], row["ref"]) for row in map(json.loads, child.stdout.splitlines())}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {D}, float32, CPU, {args.repeats} rounds")
    print(
        f"{'loss':<19}{'N':>6}  {'vs':<8}{'ours s':>8}{'ref s':>8}  {'speed-up (min-max)':<19}"
        f"{'ours MiB':>9}{'ref MiB':>9}{'mem ratio':>10}{'|dloss|':>9}{'|dgrad|':>9}"
    )
    for n in sizes:
        for name, library, ours, reference in _cases(n):
            our_times, ref_times, loss_diff, grad_diff = _timed(ours, reference, args.repeats)
            ratios = [r / o for o, r in zip(our_times, ref_times)]
            our_peak, ref_peak = peaks[(name, n, library)]
            speed = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            our_s, ref_s = statistics.median(our_times), statistics.median(ref_times)
            print(
                f"{name:<19}{n:>6}  {library:<8}{our_s:>8.3f}{ref_s:>8.3f}"
                f"  {speed:<19}{our_peak:>9.0f}{ref_peak:>9.0f}{our_peak / max(ref_peak, 1):>9.2f}x"
                f"{loss_diff:>9.1e}{grad_diff:>9.1e}",
                flush=True,
            )
        if n > PML_NTXENT_MAX_N:
            print(f"{'nt_xent':<19}{n:>6}  pml     skipped: N^3 memory (+17 GB at N = 512 per the issue)", flush=True)


if __name__ == "__main__":
    main()
