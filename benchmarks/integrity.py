"""What the checkpoints' integrity record costs: digests against the write and the load, in one run.

A checkpoint-shaped state of ``--mb`` MB of float32 tensors (a model and an optimiser state, as many
tensors as a ResNet) is saved atomically with its digests (``selfsup.engine.checkpoint.save_atomic``)
and without (``torch.save`` through the same atomic write), and loaded with the check and without,
alternately, ``--rounds`` times; the medians are compared.

    .venv/bin/python benchmarks/integrity.py            # 100 MB
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selfsup._io import atomic_write
from selfsup.engine import checkpoint


def state_of(megabytes: float) -> dict:
    count = 120  # about a ResNet-50's parameter tensors
    per = int(megabytes * 2 ** 20 / 4 / (2 * count))
    generator = torch.Generator().manual_seed(0)
    model = {f"layer{k}.weight": torch.randn(per, generator=generator) for k in range(count)}
    optimizer = {"state": {k: {"momentum_buffer": torch.randn(per, generator=generator)} for k in range(count)}}
    return {"model": model, "optimizer": optimizer, "config": {"method": "simclr"}, "step": 1, "data": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    state = state_of(args.mb)
    times = {"write, digests": [], "write, plain": [], "load, checked": [], "load, unchecked": [], "digests alone": []}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.ckpt"
        for _ in range(args.rounds):
            start = time.perf_counter()
            checkpoint.save_atomic(state, path)
            times["write, digests"].append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpoint.load(path)
            times["load, checked"].append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpoint.load(path, check=False)
            times["load, unchecked"].append(time.perf_counter() - start)
            start = time.perf_counter()
            atomic_write(path, lambda file: torch.save(state, file))
            times["write, plain"].append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpoint.digests(state)
            times["digests alone"].append(time.perf_counter() - start)
        size = path.stat().st_size / 2 ** 20
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"checkpoint of {size:.0f} MB ({checkpoint.DIGEST}), median of {args.rounds} rounds:")
    for key, value in median.items():
        print(f"  {key:16s} {value:7.3f} s")
    print(f"  digests / plain write : {median['digests alone'] / median['write, plain']:.2f}")
    print(f"  write with digests / plain write : {median['write, digests'] / median['write, plain']:.2f}")
    print(f"  checked load / unchecked load    : {median['load, checked'] / median['load, unchecked']:.2f}")


if __name__ == "__main__":
    main()
