"""Batched image augmentations with independent random parameters per sample.

Every operation takes a whole batch ``(B, C, H, W)`` (C = 1 or 3) on whatever
device holds it and draws its random parameters as ``(B, ...)`` tensors, so a
view of 512 images costs a handful of tensor operations instead of 512 Python
calls. The maths reproduces ``torchvision.transforms.v2.functional`` on float
images (see each function for the exact correspondence and tolerance):

* crop + resize + horizontal flip are one pair of batched matrix products with
  per-sample interpolation matrices: the antialiased bilinear filter of
  ``torch.nn.functional.interpolate(..., antialias=True)``, i.e. torchvision's
  default ``resized_crop(..., antialias=True)``; on upscales it is plain
  bilinear interpolation;
* brightness, contrast, saturation and grayscale are one fused blend
  ``clamp(a * x + b * gray + c * mean(gray))`` with per-sample ``(a, b, c)``;
* hue is torchvision's HSV hue rotation computed batched (exact up to float
  rounding, not a YIQ approximation);
* Gaussian blur is separable with per-sample kernels and reflect padding.

Random parameters come from ``generator`` when one is given (drawn on the
generator's device, then moved to the batch's device), otherwise from torch's
global RNG on the batch's device.

One concept per file: ``geometry`` (crop, resize, flip), ``colour`` (jitter,
grayscale, solarize), ``blur``, ``runner`` (a ``View``, its per-sample plan,
the masked reference path and the CPU paths tested against it) and
``recipes`` (the papers' views); ``_common`` holds the input checks and RNG
helpers they share.

Examples:
    >>> import torch
    >>> from selfsup.augment import recipe
    >>> augment = recipe("simclr", 32)
    >>> images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    >>> view1, view2 = augment(images, generator=torch.Generator().manual_seed(0))
    >>> view1.shape, view1.dtype
    (torch.Size([8, 3, 32, 32]), torch.float32)
"""

from __future__ import annotations

from selfsup.augment._common import to_float
from selfsup.augment.blur import apply_blur, blur_kernel_size, gaussian_blur
from selfsup.augment.colour import (
    JitterParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_color_jitter,
    apply_grayscale,
    apply_solarize,
    color_jitter,
    grayscale,
    sample_jitter,
    solarize,
)
from selfsup.augment.geometry import (
    apply_hflip,
    horizontal_flip,
    random_resized_crop,
    resized_crop,
    sample_crop_boxes,
)
from selfsup.augment import pretext
from selfsup.augment.clips import clip_to_float, clip_views
from selfsup.augment.lab import lab_to_rgb, rgb_to_lab
from selfsup.augment.recipes import RECIPES, override, recipe
from selfsup.augment.runner import Augmentation, View, augment_view

__all__ = [
    "clip_to_float",
    "clip_views",
    "RECIPES",
    "pretext",
    "lab_to_rgb",
    "rgb_to_lab",
    "Augmentation",
    "JitterParams",
    "View",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_blur",
    "apply_color_jitter",
    "apply_grayscale",
    "apply_hflip",
    "apply_solarize",
    "augment_view",
    "blur_kernel_size",
    "color_jitter",
    "gaussian_blur",
    "grayscale",
    "horizontal_flip",
    "override",
    "random_resized_crop",
    "recipe",
    "resized_crop",
    "sample_crop_boxes",
    "sample_jitter",
    "solarize",
    "to_float",
]
