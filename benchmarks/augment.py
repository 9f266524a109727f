"""Views per second of the SimCLR augmentation: selfsup (batched) vs torchvision v2 (per sample) vs kornia (batched).

All three run the same pipeline on a uint8 batch in one process, on the CPU:
random resized crop (scale 0.08-1) -> horizontal flip 0.5 -> colour jitter
(0.4, 0.4, 0.4, 0.1) with p 0.8 -> grayscale 0.2 -> Gaussian blur p 0.5
(sigma 0.1-2, kernel 3) -> float in [0, 1].

* selfsup: ``recipe("simclr", side)(batch)``, two views per call.
* torchvision: ``transforms.v2.Compose`` of the same transforms applied image
  by image, as a DataLoader worker does (uint8 tensors, float at the end).
* kornia: ``kornia.augmentation`` modules on the whole float batch, the
  conversion to float included. For 1-channel images kornia's ColorJitter
  refuses saturation and hue (identities there anyway), so it gets
  brightness and contrast only.

``--compiled`` adds selfsup's compiled path (what ``train.compile`` gives a GPU run, and a CPU run
of one-channel images): the same views through ``torch.compile`` of the reference arithmetic, its
compilation (5-15 s per view shape on a CPU) before the timing.

Run: ``.venv/bin/python benchmarks/augment.py`` (about a minute). By default
everything runs on one thread, a per-core comparison (torchvision would use one
DataLoader worker per core); ``--threads 2`` lets the batched pipelines use
both cores. The ratios within one run are what count: the machine's load moves
the absolute figures.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import kornia.augmentation as K
import torch
import torchvision.transforms.v2 as T
from torch import nn

from selfsup.augment import blur_kernel_size, recipe, runner, to_float
from selfsup.engine import tune_allocator


def views_per_second(make_views: Callable[[], int], min_seconds: float) -> float:
    """Best-of-repeats throughput: runs ``make_views`` (which returns its view count) for ``min_seconds``."""
    make_views()  # warm-up: allocator, kernels, caches
    best = 0.0
    spent = 0.0
    repeats = 0
    while spent < min_seconds or repeats < 3:
        start = time.perf_counter()
        count = make_views()
        elapsed = time.perf_counter() - start
        spent += elapsed
        repeats += 1
        best = max(best, count / elapsed)
    return best


def torchvision_pipeline(side: int, channels: int) -> T.Compose:
    kernel = blur_kernel_size(side)
    return T.Compose(
        [
            T.RandomResizedCrop(side, scale=(0.08, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
            T.ToDtype(torch.float32, scale=True),
        ]
    )


def kornia_pipeline(side: int, channels: int) -> nn.Module:
    kernel = blur_kernel_size(side)
    saturation, hue = (0.4, 0.1) if channels == 3 else (0.0, 0.0)
    return nn.Sequential(
        K.RandomResizedCrop((side, side), scale=(0.08, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, saturation, hue, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=0.5),
    )


def run(channels: int, side: int, batch_size: int, per_sample_images: int, min_seconds: float,
        compiled: bool = False) -> dict[str, float]:
    images = torch.randint(0, 256, (batch_size, channels, side, side), dtype=torch.uint8)
    ours = recipe("simclr", side)
    reference = torchvision_pipeline(side, channels)
    peer = kornia_pipeline(side, channels)
    subset = images[:per_sample_images]

    def selfsup_views() -> int:
        return sum(view.shape[0] for view in ours(images))

    def torchvision_views() -> int:
        for image in subset:
            reference(image)
            reference(image)
        return 2 * len(subset)

    def kornia_views() -> int:
        floats = images.float().div_(255)
        return peer(floats).shape[0] + peer(floats).shape[0]

    def compiled_views() -> int:  # the compiled path itself, which Augmentation(compiled=True) skips for RGB on a CPU
        xf = to_float(images)
        return sum(runner._run_view_compiled(xf, view, runner._plan_view(view, xf.shape, xf.device, None)).shape[0]
                   for view in ours.output_views)

    with torch.inference_mode():
        rates = {"selfsup": views_per_second(selfsup_views, min_seconds)}
        if compiled:
            rates["selfsup compiled"] = views_per_second(compiled_views, min_seconds)
        return rates | {
            "torchvision v2 per sample": views_per_second(torchvision_views, min_seconds),
            "kornia batched": views_per_second(kornia_views, min_seconds),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--per-sample-images", type=int, default=256, help="images timed for torchvision")
    parser.add_argument("--min-seconds", type=float, default=4.0, help="timing budget per pipeline and shape")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 compares per core (one DataLoader worker per core for torchvision)",
    )
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="keep glibc's default mmap/trim thresholds instead of the engine's (see selfsup.engine.allocator)")
    parser.add_argument("--compiled", action="store_true", help="also time the compiled views (train.compile)")
    args = parser.parse_args()
    if not args.glibc_malloc:
        tune_allocator()  # what the engine does; it applies to all three pipelines in this process
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, recipe simclr")
    for channels, side in ((3, 32), (1, 28)):
        rates = run(channels, side, args.batch_size, args.per_sample_images, args.min_seconds, args.compiled)
        ours = rates["selfsup"]
        print(f"\n{channels}x{side}x{side} uint8")
        for name, rate in rates.items():
            ratio = "" if name == "selfsup" else f"   selfsup is {ours / rate:6.2f}x faster"
            print(f"  {name:28s} {rate:10.0f} views/s{ratio}")


if __name__ == "__main__":
    main()
