"""Peak memory of one SimCLR step against the batch size, with and without gradient caching.

Each measurement is its own process (a fresh peak): a Trainer on Fashion-MNIST as 3x32x32
(ResNet-18 with the small-image stem, the CIFAR shape), two optimiser steps, then the peak resident
set (CPU) or the peak allocated memory (CUDA) and the time of the second step. With
``train.micro_batch_size`` the activations in memory are one micro-batch's, so the peak should stay
nearly flat as the batch grows; without it the peak grows with the batch, and a child whose peak
would pass ``--limit-gb`` (an address-space limit, so the machine never swaps) reports "out of
memory" instead.

    .venv/bin/python benchmarks/grad_cache.py                         # batches 256, 1024, 4096; micro 256
    .venv/bin/python benchmarks/grad_cache.py --batches 64 128 --micro 32 --backbone convnet --size 28 --channels 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> None:
    limit = int(args.limit_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    from selfsup.config import load_config
    from selfsup.engine import Trainer

    overrides = [f"backbone.name={args.backbone}", f"data.size={args.size}", f"data.channels={args.channels}",
                 f"train.batch_size={args.batch}", "train.progress=false", "train.knn_every=0", "eval.plots=false",
                 "train.out_dir=/tmp/selfsup_grad_cache_bench", "method_args.proj_hidden_dim=512"]
    if args.micro:
        overrides.append(f"train.micro_batch_size={args.micro}")
    try:
        trainer = Trainer(load_config("recipes/simclr_fashion_mnist.yaml", overrides))
        trainer.train_step(0)
        if trainer.fabric.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train_step(1)
        if trainer.fabric.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() if trainer.fabric.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        print(json.dumps({"peak_gb": peak / 2 ** 30, "step_s": seconds, "device": trainer.fabric.device.type,
                          "precision": trainer.precision}))
    except (MemoryError, RuntimeError) as error:  # the address-space limit: torch's allocations fail
        if not isinstance(error, MemoryError) and "alloc" not in str(error).lower():
            raise
        print(json.dumps({"error": f"out of memory ({type(error).__name__})"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--micro", type=int, default=256)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--limit-gb", type=float, default=20.0, help="address-space limit of each child")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    common = ["--backbone", args.backbone, "--size", str(args.size), "--channels", str(args.channels),
              "--limit-gb", str(args.limit_gb)]
    print(f"SimCLR, {args.backbone} at {args.channels}x{args.size}x{args.size}, micro-batch {args.micro}, "
          f"each child limited to {args.limit_gb:g} GB of address space")
    print(f"{'batch':>6} | {'plain peak':>12} {'step':>8} | {'cached peak':>12} {'step':>8} | peak ratio")
    for batch in args.batches:
        row = {}
        for name, micro in (("plain", 0), ("cached", args.micro)):
            done = subprocess.run([sys.executable, __file__, "--child", "--batch", str(batch), "--micro", str(micro),
                                   *common], capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            row[name] = json.loads(lines[-1]) if lines else {"error": f"failed ({done.returncode})"}
        cells = []
        for name in ("plain", "cached"):
            result = row[name]
            cells.append(f"{result['error']:>21}" if "error" in result
                         else f"{result['peak_gb']:9.2f} GB {result['step_s']:7.1f}s")
        ratio = (row["plain"]["peak_gb"] / row["cached"]["peak_gb"]
                 if "peak_gb" in row["plain"] and "peak_gb" in row["cached"] else float("nan"))
        print(f"{batch:>6} | {cells[0]} | {cells[1]} | {ratio:.2f}", flush=True)
    device = next((r["device"] + ", " + r["precision"] for r in row.values() if "device" in r), "?")
    print(f"({device}; the cached step computes every micro-batch's forward twice)")


if __name__ == "__main__":
    main()
