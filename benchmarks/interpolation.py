"""How far apart the crop filters are: antialiased bilinear (selfsup's, torchvision's default, MoCo's)
against bicubic (SimCLR's, BYOL's and DINO's code), on the same random resized crops.

Each of the first ``--images`` training images gets one crop of torchvision's RandomResizedCrop
parameters (scale 0.08-1, ratio 3/4-4/3, seed 0), resized back to the image's side both ways with
``torchvision.transforms.v2.functional.resized_crop`` (bicubic clamped to 0-255); printed: the mean
absolute difference per pixel in gray levels of 255, its median over images and the largest pixel's.

    .venv/bin/python benchmarks/interpolation.py --data fashion_mnist --images 2000
"""

from __future__ import annotations

import argparse

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from selfsup.data import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    images = load(args.data, "train").images[:args.images].float()
    side = list(images.shape[-2:])
    torch.manual_seed(0)
    means, peaks = [], []
    for image in images:
        box = T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        bilinear = F.resized_crop(image, *box, side, interpolation=InterpolationMode.BILINEAR, antialias=True)
        bicubic = F.resized_crop(image, *box, side, interpolation=InterpolationMode.BICUBIC, antialias=True)
        gap = (bilinear - bicubic.clamp(0, 255)).abs()
        means.append(gap.mean())
        peaks.append(gap.max())
    means = torch.stack(means)
    print(f"{args.data}, {len(images)} training images at {side[0]}x{side[1]}, one crop each: "
          f"|bilinear - bicubic| {means.mean():.2f} gray levels per pixel on average (median image "
          f"{means.median():.2f}, largest pixel {torch.stack(peaks).max():.1f})")


if __name__ == "__main__":
    main()
