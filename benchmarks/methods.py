"""Training-step throughput of every method's recipe against SimCLR's, in one process.

Each recipe's method is built as the engine builds it (its backbone, heads and method arguments,
its augmentation, channels-last), on a batch of uint8 images of the recipe's data shape, and runs
the engine's step: the views, ``training_step`` under the run's autocast, backward, SGD step,
``on_step_end``. Methods are timed in rounds (a block of consecutive steps of each in turn, SimCLR
among them), so drifting load hits every method alike; the median block is compared with SimCLR's.
No data is read: images are random (speed does not depend on their content), labels cycle through
the classes, and memory-bank methods get a bank of the training set's size (60,000 on Fashion-MNIST).

    .venv/bin/python benchmarks/methods.py                              # every recipes/*_fashion_mnist.yaml
    .venv/bin/python benchmarks/methods.py recipes/mocov3_fashion_mnist.yaml recipes/instdisc_fashion_mnist.yaml
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from selfsup.config import load_config
from selfsup.engine import build_method, resolve_precision, tune_allocator
from selfsup.engine.setup import build_augmentation
from selfsup.methods import Batch, Progress

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"fashion_mnist": (1, 28, 60000, 10), "photos": (3, 32, 4500, 9)}
REFERENCE = ROOT / "recipes" / "simclr_fashion_mnist.yaml"


def build(recipe: Path, device: torch.device, batch: int):
    """(name, one-step function) of ``recipe``'s method on random images of its data's shape."""
    cfg = load_config(str(recipe), [f"train.batch_size={batch}"])
    channels, size, num_samples, classes = SHAPES[cfg.data.name]
    torch.manual_seed(0)
    captions = extra = None
    if cfg.data.captions == "templates":  # image-text (CLIP): the template captions of Fashion-MNIST's class names
        from selfsup.data.captions import TEMPLATES, class_prompts
        from selfsup.data.idx import FASHION_MNIST

        captions = [p for per_class in class_prompts(FASHION_MNIST.classes) for p in per_class]
    method = build_method(cfg, in_channels=channels, image_size=size, mean=[0.5] * channels, std=[0.25] * channels,
                          num_samples=num_samples, captions=captions).to(device).to(memory_format=torch.channels_last)
    augment = build_augmentation(method, cfg.augment, size)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, device=device)
    index = torch.randperm(num_samples, device=device)[:batch]
    labels = torch.arange(batch, device=device) % classes
    if captions is not None:  # each image a caption of its class, the template drawn at random
        extra = {"caption_ids": labels * len(TEMPLATES) + torch.randint(0, len(TEMPLATES), (batch,), device=device)}
    step = [0]

    def one_step(dtype) -> None:
        with torch.no_grad():
            views = [v.contiguous(memory_format=torch.channels_last) for v in augment(images)]
        progress = Progress(step[0], 10_000, 234)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = method(Batch(views, index, labels, extra), progress)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.on_step_end(progress)
        step[0] += 1

    return cfg.name, one_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=3, help="consecutive timed steps per block")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    allocator = "tuned" if tune_allocator() else "glibc defaults"
    device = torch.device(args.device)
    precision, why = resolve_precision(args.precision, device.type)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    recipes = args.recipes or [r for r in sorted((ROOT / "recipes").glob("*_fashion_mnist.yaml")) if "vit" not in r.name]
    if REFERENCE not in [r.resolve() for r in recipes]:
        recipes = [REFERENCE, *recipes]
    methods = [build(recipe, device, args.batch) for recipe in recipes]
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    for name, step in methods:  # warm-up: allocator, kernels, Z / prior estimates
        for _ in range(2):
            step(dtype)
    for _ in range(args.rounds):
        for name, step in methods:
            step(dtype)  # the first step of a block is not timed
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.block):
                step(dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / args.block)
    print(f"batch {args.batch} on {device} ({precision}: {why}), CPU kernels "
          f"{torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}, malloc {allocator}, "
          f"median of {args.rounds} blocks of {args.block} steps; images/s counts images, not views:")
    reference = statistics.median(times["simclr_fashion_mnist"])
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"  {name:<34} {args.batch / seconds:8,.0f} images/s   {reference / seconds:5.2f}x SimCLR's")


if __name__ == "__main__":
    main()
