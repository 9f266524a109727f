"""Streamed folder against torchvision's ImageFolder + per-sample transforms, same workers, one process.

A generated folder of full-size JPEG photos (crops of scikit-image's bundled photos at 500x375,
quality 90, the size of an average ImageNet image) is read three ways, each by a DataLoader with
the same number of workers, batch and 96 px SimCLR views:

- *ours*: ``selfsup.data.StreamedImages`` (workers decode each batch to uint8 at 110 px, JPEGs at
  reduced scale with ``Image.draft``), then the batched ``simclr`` recipe on the training device;
- *reference*: ``torchvision.datasets.ImageFolder`` whose transform makes two views per image with
  ``torchvision.transforms.v2`` (RandomResizedCrop 96 scale 0.08-1, flip, ColorJitter 0.8/0.8/0.8/0.2
  p 0.8, grayscale 0.2, Gaussian blur p 0.5: the same recipe), collated by the DataLoader, as
  solo-learn and lightly train.

It prints images/s of the data path alone (decode + views), of decoding alone (ours: uint8 batches;
reference: ImageFolder decode + Resize/CenterCrop to the same 110 px), the same two read from the
folder's ``selfsup pack`` shards instead of its JPEGs (made once, next to ``--folder``), and of the whole SimCLR step
(views, the same ConvNet + projection head, NT-Xent, backward, SGD) fed by each, beside the step
alone on views made once (the ceiling of both); the ratios are ours / reference. Each figure is the median over ``--rounds`` alternating rounds; every round
skips its loader's first ``2 x workers + 1`` batches (worker start-up and prefetch).

    .venv/bin/python benchmarks/stream.py                 # 2 workers, 96 px, batch 64
    .venv/bin/python benchmarks/stream.py --width 8          # a model light enough that data decides the step
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/stream.py --width 8   # idle OpenMP threads sleep
    .venv/bin/python benchmarks/stream.py --workers 4 --backbone resnet18
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.augment import recipe
from selfsup.data.pack import pack_folder
from selfsup.data.stream import StreamedImages, folder_split, packed_split
from selfsup.engine import resolve_precision
from selfsup.methods import Batch, Progress, SimCLR
from selfsup.nn import build_backbone



def make_folder(root: Path, count: int) -> Path:
    """``count`` JPEGs of 500x375 cut from scikit-image's photos, one class folder per photo (cached)."""
    import skimage.data
    from PIL import Image

    from selfsup.data.photos import SKIMAGE_PHOTOS as PHOTOS

    if root.is_dir() and len(list(root.rglob("*.jpg"))) == count:
        return root
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(np.asarray(getattr(skimage.data, name)())[..., :3]) for name in PHOTOS]
    for k in range(count):
        picture = pictures[k % len(pictures)]
        w, h = picture.size
        scale = rng.uniform(0.6, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        image = picture.crop((left, top, left + cw, top + ch)).resize((500, 375), Image.Resampling.BICUBIC)
        folder = root / PHOTOS[k % len(pictures)]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{k:05d}.jpg", quality=90)
    return root


def reference_loader(root: Path, size: int, side: int, batch: int, workers: int, views: bool):
    import torchvision.transforms.v2 as T
    from torchvision.datasets import ImageFolder

    if views:
        one = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), T.RandomHorizontalFlip(),
                         T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
                         T.RandomApply([T.GaussianBlur(2 * round(0.05 * size) + 1, (0.1, 2.0))], p=0.5),
                         T.PILToTensor()])

        def transform(image):
            return one(image), one(image)
    else:
        transform = T.Compose([T.Resize(side, antialias=True), T.CenterCrop(side), T.PILToTensor()])
    dataset = ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, generator=torch.Generator().manual_seed(0))
    for images, _ in loader:
        yield [v.float().div_(255) for v in images] if views else images


def ours_loader(root: Path, size: int, batch: int, workers: int, views: bool, device, pack: Path | None = None):
    split = packed_split(pack, "train", size, workers=workers) if pack else folder_split(root, "train", size, 3,
                                                                                        workers=workers)
    source = StreamedImages(split, batch_size=batch, workers=workers, device=device)
    augment = recipe("simclr", size)
    try:
        for position in range(source.steps_per_epoch()):
            images = source.batch(0, position, 0).images
            if views:
                with torch.no_grad():  # left before yielding: a suspended `with` would keep grad off for the step
                    out = augment(images)
                yield out
            else:
                yield images
    finally:
        source.close()


def timed(batches, count: int, skip: int, work=None) -> float:
    """Images/s over ``count`` batches after ``skip`` untimed ones."""
    it = iter(batches)
    for _ in range(skip):
        item = next(it)
        if work is not None:
            work(item)
    start, n = time.perf_counter(), 0
    for _ in range(count):
        item = next(it)
        if work is not None:
            work(item)
        n += len(item[0]) if isinstance(item, list) else len(item)
    elapsed = time.perf_counter() - start
    it.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/selfsup-stream-bench", help="where the JPEG folder is made (cached)")
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--width", type=int, default=32, help="the ConvNet's base width (its cost grows as width^2)")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    skip = 2 * args.workers + 1
    if args.images < (skip + args.steps) * args.batch:
        parser.error(f"--images must be at least (2 x workers + 1 + steps) x batch = {(skip + args.steps) * args.batch}")
    root = make_folder(Path(args.folder), args.images)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision, why = resolve_precision(args.precision, device.type)
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    side = round(args.size * 1.15)

    torch.manual_seed(0)
    method = SimCLR(build_backbone(args.backbone, in_channels=3, image_size=args.size, width=args.width), proj_hidden_dim=512,
                    proj_dim=128).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    progress = Progress(0, 1, 1)

    def step(views) -> None:
        views = [v.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = method.training_step(Batch(views, torch.arange(len(views[0]), device=device)), progress)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    a = dict(size=args.size, batch=args.batch, workers=args.workers)
    pack = Path(args.folder + f"-pack{args.size}")
    if not (pack / "index.json").is_file():
        pack_folder(root, pack, size=args.size, progress=False)  # selfsup pack, once
    cases = {
        "data path (decode + 2 views)": (lambda: ours_loader(root, views=True, device=device, **a),
                                         lambda: reference_loader(root, side=side, views=True, **a), None),
        "decode only (uint8 at 110 px)": (lambda: ours_loader(root, views=False, device=device, **a),
                                          lambda: reference_loader(root, side=side, views=False, **a), None),
        "packed shards: read + 2 views": (lambda: ours_loader(root, views=True, device=device, pack=pack, **a),
                                          lambda: reference_loader(root, side=side, views=True, **a), None),
        "packed shards: read only": (lambda: ours_loader(root, views=False, device=device, pack=pack, **a),
                                     lambda: reference_loader(root, side=side, views=False, **a), None),
        "whole SimCLR step": (lambda: ours_loader(root, views=True, device=device, **a),
                              lambda: reference_loader(root, side=side, views=True, **a), step),
    }
    print(f"{args.images} JPEGs 500x375 in {root}; {args.workers} workers, batch {args.batch}, {args.size} px views; "
          f"{args.backbone} (width {args.width}) on {device} ({precision}: {why}); CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, {torch.multiprocessing.cpu_count()} cores, OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; median of {args.rounds} "
          f"rounds of {args.steps} batches")
    fixed = [v.clone() for v in next(iter(ours_loader(root, views=True, device=device, **a)))]
    for _ in range(3):
        step(fixed)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(fixed)
    print(f"  {'model step alone (fixed views)':32s} {args.steps * args.batch / (time.perf_counter() - start):8,.0f} img/s"
          f": the ceiling of either whole step on this machine")
    for name, (ours, reference, work) in cases.items():
        mine, theirs = [], []
        for _ in range(args.rounds):  # alternating, so drifting load hits both
            mine.append(timed(ours(), args.steps, skip, work))
            theirs.append(timed(reference(), args.steps, skip, work))
        m, t = statistics.median(mine), statistics.median(theirs)
        print(f"  {name:32s} ours {m:8,.0f} img/s   ImageFolder+transforms {t:8,.0f} img/s   ratio {m / t:5.2f}")


if __name__ == "__main__":
    main()
