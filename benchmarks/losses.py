"""Forward+backward time and peak memory of our losses against lightly and pytorch-metric-learning.

    .venv/bin/python benchmarks/losses.py            # N = 256 ... 4096, D = 128
    .venv/bin/python benchmarks/losses.py --quick    # N = 256, 1024, 4096

Every case gets the same float32 inputs (seeded), runs once to measure memory
and then is timed as the median of up to 3 more runs. Each reference is checked
to give the same loss value as ours (printed as |diff|).

Memory: peak resident set size of the process during one forward+backward,
minus the resident size just before it (the inputs already allocated). The
peak is reset per case through /proc/self/clear_refs (Linux), and the cases run
in a child process whose glibc malloc returns every block >= 64 KiB to the OS on
free (MALLOC_MMAP_THRESHOLD_), so memory freed by an earlier case cannot hide
a later case's peak. The same measure applies to every library.

pytorch-metric-learning's NTXentLoss builds an N^3-sized tensor (the issue
measured +17 GB at N = 512 and no fit in 24 GB at N = 1024), so it runs only
at N = 256 on this shared machine.
"""

from __future__ import annotations

import argparse
import gc
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


def _measure(step) -> tuple[float, float, float]:
    """(peak MiB above the starting RSS, median seconds, loss value) of one forward+backward `step`."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    value = step()
    first = time.perf_counter() - start
    peak_mib = (_status_kib("VmHWM") - before) / 1024
    times = [first]
    if first < 5:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return peak_mib, statistics.median(times), value


def _cases(n: int):
    """(loss, library, step) triples; each step builds the graph, backpropagates and returns the loss."""
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
            return loss.item()

        return run

    lightly_ntxent = LightlyNTXent(temperature=0.5)
    pml_ntxent = pml_losses.NTXentLoss(temperature=0.5)
    pml_supcon = pml_losses.SupConLoss(temperature=0.1)
    euclidean = distances.LpDistance(normalize_embeddings=False)
    pml_triplet = pml_losses.TripletMarginLoss(margin=0.2, distance=euclidean, reducer=reducers.MeanReducer())
    batch_hard = miners.BatchHardMiner(distance=euclidean)

    yield "nt_xent", "selfsup", step(lambda: losses.nt_xent(z1, z2, 0.5))
    yield "nt_xent", "lightly", step(lambda: lightly_ntxent(z1, z2))
    if n <= PML_NTXENT_MAX_N:
        yield "nt_xent", "pml", step(lambda: pml_ntxent(torch.cat([z1, z2]), pair_labels))
    yield "supcon", "selfsup", step(lambda: losses.supcon(z1, labels, 0.1))
    yield "supcon", "pml", step(lambda: pml_supcon(z1, labels))
    yield "batch-hard triplet", "selfsup", step(lambda: losses.batch_hard_triplet(z1, labels, 0.2))
    yield "batch-hard triplet", "pml", step(lambda: pml_triplet(z1, labels, batch_hard(z1, labels)))


def child(sizes: list[int]) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {D}, float32, CPU", flush=True)
    print(f"{'loss':<19}{'N':>6}  {'library':<8}{'time s':>9}{'peak MiB':>10}{'|diff|':>10}  ratio vs ours (time, memory)")
    for n in sizes:
        ours: dict[str, tuple[float, float, float]] = {}
        for name, library, run in _cases(n):
            peak, seconds, value = _measure(run)
            line = f"{name:<19}{n:>6}  {library:<8}{seconds:>9.3f}{peak:>10.0f}"
            if library == "selfsup":
                ours[name] = (peak, seconds, value)
                print(line, flush=True)
                continue
            our_peak, our_seconds, our_value = ours[name]
            print(
                f"{line}{abs(value - our_value):>10.1e}  ours {seconds / our_seconds:.2f}x faster, "
                f"{our_peak / max(peak, 1):.2f}x its memory",
                flush=True,
            )
        if n > PML_NTXENT_MAX_N:
            print(f"{'nt_xent':<19}{n:>6}  pml     skipped: N^3 memory (+17 GB at N = 512 per the issue)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only N = 256, 1024, 4096")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [256, 1024, 4096] if args.quick else [256, 512, 1024, 2048, 4096]
    if args.child:
        child(sizes)
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    command = [sys.executable, __file__, "--child"] + (["--quick"] if args.quick else [])
    sys.exit(subprocess.run(command, env=env).returncode)


if __name__ == "__main__":
    main()
