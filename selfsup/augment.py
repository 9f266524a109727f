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

Example:
    >>> import torch
    >>> from selfsup.augment import recipe
    >>> augment = recipe("simclr", 32)
    >>> images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    >>> view1, view2 = augment(images, generator=torch.Generator().manual_seed(0))
    >>> view1.shape, view1.dtype
    (torch.Size([8, 3, 32, 32]), torch.float32)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import _kernels

__all__ = [
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
    "random_resized_crop",
    "recipe",
    "resized_crop",
    "sample_crop_boxes",
    "sample_jitter",
    "solarize",
    "to_float",
]

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses them.
_LUMA = (0.2989, 0.587, 0.114)
# torchvision's RandomResizedCrop gives up after this many rejected draws.
_CROP_ATTEMPTS = 10


# ---------------------------------------------------------------- helpers


def _check_images(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) for a single image"
        )
    if x.shape[1] not in (1, 3):
        raise ValueError(
            f"{name} must have 1 or 3 channels (dim 1), got shape {tuple(x.shape)}; "
            "images must be channels-first (B, C, H, W)"
        )
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0..255) or floating point (0..1), got dtype {x.dtype}")


def _pair(size: int | tuple[int, int], name: str = "size") -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in pair):
        raise ValueError(f"{name} must be an int or a (height, width) pair of ints, got {size!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return pair  # type: ignore[return-value]


def _check_range(value: tuple[float, float], name: str, low: float = 0.0) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low <= lo <= hi:
        raise ValueError(f"{name} must be a (min, max) pair with {low} <= min <= max, got {value!r}")
    return lo, hi


def _check_p(p: float, name: str = "p") -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} is a probability and must lie in [0, 1], got {p!r}")
    return float(p)


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) floats on ``device``, drawn from ``generator`` when given."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _param_device(device: torch.device | str | None, generator: torch.Generator | None) -> torch.device:
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    return torch.device(device)


def _bernoulli(batch_size: int, p: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return _rand((batch_size,), device, generator) < p


def _per_sample(value: float | Tensor, x: Tensor, name: str) -> Tensor:
    """A scalar or (B,) factor as a (B, 1, 1, 1) float tensor on x's device."""
    factor = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    if factor.ndim == 0:
        factor = factor.expand(x.shape[0])
    if factor.shape != (x.shape[0],):
        raise ValueError(f"{name} must be a float or a ({x.shape[0]},) tensor, got shape {tuple(factor.shape)}")
    return factor.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma of a float batch; a 1-channel batch is its own luma."""
    if x.shape[1] == 1:
        return x
    red, green, blue = x.unbind(1)
    return (red * _LUMA[0]).add_(green, alpha=_LUMA[1]).add_(blue, alpha=_LUMA[2]).unsqueeze(1)


def to_float(x: Tensor) -> Tensor:
    """Validate a batch and return it as float32 in [0, 1].

    Args:
        x: ``(B, C, H, W)`` uint8 in 0..255 (divided by 255) or floating point in
            0..1 (cast to float32, values trusted), C = 1 or 3.

    Returns:
        ``(B, C, H, W)`` float32 tensor on ``x``'s device.

    Example:
        >>> to_float(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)).max().item()
        1.0
    """
    _check_images(x)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


# ------------------------------------------------------- crop, resize, flip


def sample_crop_boxes(
    batch_size: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw one random-resized-crop box per sample, as torchvision does.

    Follows ``torchvision.transforms.v2.RandomResizedCrop``: up to 10 draws of
    an area fraction ``s ~ U(scale)`` and a log aspect ratio
    ``log r ~ U(log ratio)``, giving ``w = round(sqrt(s H W r))`` and
    ``h = round(sqrt(s H W / r))``; the first draw that fits is kept, with a
    uniform integer position. A sample whose 10 draws all fail gets the central
    crop clamped to ``ratio``. The 10 draws are made for every sample at once.

    Args:
        batch_size: number of boxes B.
        height, width: input image size.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio width / height.
        generator: optional RNG for reproducibility.
        device: where the boxes live (default: the generator's device, or CPU).

    Returns:
        ``(B, 4)`` int64 tensor of ``(top, left, height, width)``.

    Example:
        >>> boxes = sample_crop_boxes(4, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> boxes.shape
        torch.Size([4, 4])
    """
    lo, hi = _check_range(scale, "scale")
    rlo, rhi = _check_range(ratio, "ratio")
    if hi <= 0 or rlo <= 0:
        raise ValueError(f"scale and ratio must be positive ranges, got scale={scale!r}, ratio={ratio!r}")
    device = _param_device(device, generator)
    draws = _rand((batch_size, _CROP_ATTEMPTS, 2), device, generator)
    area = (lo + (hi - lo) * draws[..., 0]) * (height * width)
    log_lo, log_hi = math.log(rlo), math.log(rhi)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
    crop_w = torch.sqrt(area * aspect).round_()
    crop_h = torch.sqrt(area / aspect).round_()
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    found = fits.any(dim=1)

    in_ratio = width / height
    if in_ratio < rlo:
        fallback_w, fallback_h = width, round(width / rlo)
    elif in_ratio > rhi:
        fallback_w, fallback_h = round(height * rhi), height
    else:
        fallback_w, fallback_h = width, height
    crop_w = torch.where(found, crop_w.gather(1, first).squeeze(1), float(fallback_w))
    crop_h = torch.where(found, crop_h.gather(1, first).squeeze(1), float(fallback_h))

    position = _rand((batch_size, 2), device, generator)
    top = torch.where(
        found, torch.floor(position[:, 0] * (height - crop_h + 1)), float((height - fallback_h) // 2)
    )
    left = torch.where(found, torch.floor(position[:, 1] * (width - crop_w + 1)), float((width - fallback_w) // 2))
    # floor(u * n) with u just below 1 can round up to n in float32.
    top = torch.minimum(top, height - crop_h)
    left = torch.minimum(left, width - crop_w)
    return torch.stack((top, left, crop_h, crop_w), dim=1).to(torch.int64)


def _interpolation_matrix(
    start: Tensor, length: Tensor, out_size: int, in_size: int, flip: Tensor | None = None
) -> Tensor:
    """(B, out_size, in_size) weights resampling [start, start + length) to out_size.

    Antialiased bilinear (triangle) filter as in PyTorch's ``_upsample_bilinear2d_aa``
    with ``align_corners=False``: output pixel ``o`` is centred at
    ``start + scale * (o + 0.5)`` with ``scale = length / out_size``; the
    triangle is widened by ``scale`` when downsampling; weights of pixels inside
    the crop are normalised to sum to one. Where ``flip`` is set, output pixel
    ``o`` takes the weights of ``out_size - 1 - o`` (a mirrored output).
    """
    device = start.device
    scale = length.to(torch.float32).div_(out_size).view(-1, 1)
    index = torch.arange(out_size, device=device, dtype=torch.float32)
    if flip is not None:
        index = torch.where(flip.to(device).view(-1, 1), out_size - 1 - index, index)
    # Filter centres in input pixel coordinates (pixel j has its centre at j + 0.5).
    centre = (index + 0.5).mul(scale).add_(start.view(-1, 1) - 0.5)
    pixels = torch.arange(in_size, device=device, dtype=torch.float32).view(1, -1)
    offset = pixels - start.view(-1, 1)
    # Pixels outside the crop sit at infinity, so the triangle gives them weight 0.
    pixels = torch.where((offset >= 0) & (offset < length.view(-1, 1)), pixels, math.inf)
    inverse_support = scale.clamp(min=1.0).reciprocal_().view(-1, 1, 1)
    distance = (pixels.unsqueeze(1) - centre.unsqueeze(2)).mul_(inverse_support)
    weights = distance.abs_().neg_().add_(1.0).clamp_(min=0.0)
    return weights.div_(weights.sum(dim=2, keepdim=True))


def resized_crop(x: Tensor, boxes: Tensor, size: int | tuple[int, int], flip: Tensor | None = None) -> Tensor:
    """Crop a box from each image, resize it to ``size`` and optionally mirror it.

    Equals ``torchvision.transforms.v2.functional.resized_crop(img, top, left,
    height, width, size, antialias=True)`` (bilinear, torchvision's default),
    followed by ``hflip`` where ``flip`` is set, on each float image, up to
    float32 rounding (~1e-6). Computed as ``Wy @ x @ Wx^T`` with per-sample
    ``(size, H)`` and ``(size, W)`` interpolation matrices; mirroring reverses
    the rows of ``Wx``, so it costs nothing.

    Args:
        x: ``(B, C, H, W)`` batch, uint8 or float.
        boxes: ``(B, 4)`` integer ``(top, left, height, width)`` inside the image,
            e.g. from :func:`sample_crop_boxes`.
        size: output ``side`` or ``(height, width)``.
        flip: optional ``(B,)`` bool tensor, True where the output is mirrored.

    Returns:
        ``(B, C, size_h, size_w)`` float32 in [0, 1].

    Example:
        >>> x = torch.rand(2, 3, 32, 32)
        >>> boxes = torch.tensor([[0, 0, 32, 32], [4, 4, 16, 16]])
        >>> resized_crop(x, boxes, 24).shape
        torch.Size([2, 3, 24, 24])
    """
    xf = to_float(x)
    out_h, out_w = _pair(size)
    batch, channels, height, width = xf.shape
    boxes = torch.as_tensor(boxes, device=xf.device)
    if boxes.shape != (batch, 4) or boxes.is_floating_point():
        raise ValueError(f"boxes must be a ({batch}, 4) integer tensor of (top, left, height, width), got {boxes!r}")
    top, left, box_h, box_w = boxes.unbind(1)
    if bool(((top < 0) | (left < 0) | (box_h <= 0) | (box_w <= 0)).any()) or bool(
        ((top + box_h > height) | (left + box_w > width)).any()
    ):
        raise ValueError(f"boxes must lie inside the {height}x{width} image with positive height and width, got {boxes!r}")
    return _resized_crop(xf, boxes, (out_h, out_w), flip)


def _resized_crop(xf: Tensor, boxes: Tensor, size: tuple[int, int], flip: Tensor | None) -> Tensor:
    return _resample(xf, *_crop_matrices(boxes, size, xf.shape[2], xf.shape[3], flip))


def _crop_matrices(
    boxes: Tensor, size: tuple[int, int], height: int, width: int, flip: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(B, out_h, H) row and (B, out_w, W) column interpolation matrices, mirroring folded in."""
    top, left, box_h, box_w = boxes.unbind(1)
    rows = _interpolation_matrix(top, box_h, size[0], height)
    cols = _interpolation_matrix(left, box_w, size[1], width, flip)
    return rows, cols


def _resample(xf: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ x @ cols^T`` per sample and channel: (B, C, H, W) -> (B, C, out_h, out_w)."""
    batch, channels, height, width = xf.shape
    out_h, out_w = rows.shape[1], cols.shape[1]
    # Width first as one (B, C*H, W) @ (B, W, out_w) product, then height as a
    # (B*C) batch of (out_h, H) @ (H, out_w): both plain bmm, output contiguous.
    across = torch.bmm(xf.reshape(batch, channels * height, width), cols.transpose(1, 2))
    if channels > 1:
        rows = rows.repeat_interleave(channels, dim=0)
    out = torch.bmm(rows, across.view(batch * channels, height, out_w))
    # Convex weights can overshoot 1 by an ulp; keep the [0, 1] contract.
    return out.view(batch, channels, out_h, out_w).clamp_(0.0, 1.0)


def random_resized_crop(
    x: Tensor,
    size: int | tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    flip_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random resized crop per sample (torchvision's ``RandomResizedCrop``), fused with an optional flip.

    Boxes come from :func:`sample_crop_boxes`, the resampling from
    :func:`resized_crop`; ``flip_p`` mirrors each output with that probability
    at no extra cost (``RandomHorizontalFlip`` after the crop).

    Args:
        x: ``(B, C, H, W)`` uint8 or float batch.
        size: output side or ``(height, width)``.
        scale, ratio: see :func:`sample_crop_boxes`.
        flip_p: probability of a horizontal flip.
        generator: optional RNG.

    Returns:
        ``(B, C, size_h, size_w)`` float32 in [0, 1].

    Example:
        >>> random_resized_crop(torch.rand(4, 3, 32, 32), 16).shape
        torch.Size([4, 3, 16, 16])
    """
    _check_images(x)
    _pair(size)
    batch, _, height, width = x.shape
    boxes = sample_crop_boxes(batch, height, width, scale, ratio, generator=generator, device=x.device)
    flip = _bernoulli(batch, _check_p(flip_p, "flip_p"), x.device, generator)
    return resized_crop(x, boxes, size, flip)


def apply_hflip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the samples where ``mask`` is True (torchvision ``hflip``).

    Args:
        x: ``(B, C, H, W)`` batch.
        mask: ``(B,)`` bool tensor.

    Returns:
        ``(B, C, H, W)`` float32 in [0, 1].

    Example:
        >>> apply_hflip(torch.arange(2.0).view(1, 1, 1, 2) / 2, torch.tensor([True])).flatten().tolist()
        [0.5, 0.0]
    """
    xf = to_float(x)
    return torch.where(mask.to(xf.device).view(-1, 1, 1, 1), xf.flip(-1), xf)


def horizontal_flip(x: Tensor, p: float = 0.5, *, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each sample left-right with probability ``p`` (``RandomHorizontalFlip``).

    Example:
        >>> horizontal_flip(torch.rand(4, 3, 8, 8)).shape
        torch.Size([4, 3, 8, 8])
    """
    _check_images(x)
    return apply_hflip(x, _bernoulli(x.shape[0], _check_p(p), x.device, generator))


# ------------------------------------------------------------------ colour


def adjust_brightness(x: Tensor, factor: float | Tensor) -> Tensor:
    """``clamp(factor * x, 0, 1)`` per sample (torchvision ``adjust_brightness``).

    Args:
        x: ``(B, C, H, W)`` batch.
        factor: float or ``(B,)`` non-negative factors.

    Example:
        >>> adjust_brightness(torch.full((1, 1, 1, 1), 0.6), 2.0).item()
        1.0
    """
    xf = to_float(x)
    return _blend(xf, _per_sample(factor, xf, "factor"), None, None)


def adjust_contrast(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each image with the mean of its luma (torchvision ``adjust_contrast``).

    ``clamp(f * x + (1 - f) * mean(gray(x)), 0, 1)`` with
    ``gray = 0.2989 R + 0.587 G + 0.114 B`` (the image itself when C = 1).

    Example:
        >>> adjust_contrast(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2), 0.0).flatten().tolist()
        [0.5, 0.5]
    """
    xf = to_float(x)
    factor = _per_sample(factor, xf, "factor")
    return _blend(xf, factor, None, 1.0 - factor)


def adjust_saturation(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each image with its luma image (torchvision ``adjust_saturation``).

    ``clamp(f * x + (1 - f) * gray(x), 0, 1)``; the identity when C = 1.

    Example:
        >>> adjust_saturation(torch.rand(2, 3, 4, 4), 0.0).std(dim=1).max().item() < 1e-6
        True
    """
    xf = to_float(x)
    if xf.shape[1] == 1:
        return xf
    factor = _per_sample(factor, xf, "factor")
    return _blend(xf, factor, 1.0 - factor, None)


def _blend(xf: Tensor, a: Tensor, b: Tensor | None, c: Tensor | None) -> Tensor:
    """``clamp(a * x + b * gray(x) + c * mean(gray(x)), 0, 1)`` with (B, 1, 1, 1) factors.

    Brightness (a=f), contrast (a=f, c=1-f), saturation (a=f, b=1-f) and
    grayscale (a=0, b=1) are all this one blend, which is why colour jitter
    costs one pass per jitter step whatever op each sample draws.
    """
    if b is None and c is None:
        return (xf * a).clamp_(0.0, 1.0)
    gray = _gray(xf)
    offset = None if b is None else gray * b
    if c is not None:
        mean_term = gray.mean(dim=(1, 2, 3), keepdim=True) * c
        offset = mean_term if offset is None else offset.add_(mean_term)
    return torch.addcmul(offset, xf, a).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, factor: float | Tensor) -> Tensor:
    """Rotate the hue of each image by ``factor`` turns (torchvision ``adjust_hue``).

    Exact HSV arithmetic, batched: the hue ``H`` of each pixel (in sixths of a
    turn, from the channel holding the maximum, ties resolved R, then G, then B,
    as torchvision and Pillow do) is shifted by ``6 * factor`` modulo 6; value
    ``V = max`` and chroma ``max - min`` are kept, and channel ``n`` (5, 3, 1 for
    R, G, B) becomes ``V - chroma * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + H) mod 6``, the closed form of torchvision's sector table.
    Matches torchvision to ~1e-6 (float rounding). Identity when C = 1.

    Args:
        x: ``(B, C, H, W)`` batch.
        factor: float or ``(B,)`` tensor in [-0.5, 0.5].

    Example:
        >>> red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
        >>> adjust_hue(red, 1 / 3).flatten().tolist()  # a third of a turn: red -> green
        [0.0, 1.0, 0.0]
    """
    xf = to_float(x)
    factor = _per_sample(factor, xf, "factor")
    if bool(((factor < -0.5) | (factor > 0.5)).any()):
        raise ValueError(f"hue factor must lie in [-0.5, 0.5], got {factor.flatten().tolist()}")
    if xf.shape[1] == 1:
        return xf
    return _rotate_hue(xf, factor)


def _rotate_hue(xf: Tensor, factor: Tensor) -> Tensor:
    # Written with arithmetic masks on (B, H, W) planes: on the CPU, torch.where
    # with a full-size boolean condition and reductions over the channel dim
    # cost several times more than these elementwise ops.
    red, green, blue = xf.unbind(1)
    high = torch.maximum(torch.maximum(red, green), blue)
    chroma = high - torch.minimum(torch.minimum(red, green), blue)
    red_max = (high == red).to(xf.dtype)
    green_max = (high == green).to(xf.dtype).mul_(1.0 - red_max)
    blue_max = 1.0 - red_max - green_max
    # Hue in sixths of a turn, in [-1, 5): 0 + (G - B) / chroma where R is the
    # maximum, 2 + (B - R) / chroma for G, 4 + (R - G) / chroma for B. Where
    # chroma == 0 every numerator is 0 and any hue gives back V, as wanted.
    sixths = red_max * (green - blue)
    sixths.addcmul_(green_max, (blue - red).add_(chroma, alpha=2.0))
    sixths.addcmul_(blue_max, (red - green).add_(chroma, alpha=4.0))
    sixths = sixths.div_(chroma.clamp(min=torch.finfo(xf.dtype).tiny)).add_(factor.view(-1, 1, 1) * 6.0)
    sixths = sixths.sub_(torch.floor(sixths / 6.0), alpha=6.0)  # wrap into [0, 6)
    # Channel n (own hue 0, 2, 4 for R, G, B) keeps V within 1 sixth of its own
    # hue, falls linearly to V - chroma at 2 sixths and stays there.
    own_hue = torch.tensor([0.0, 2.0, 4.0], device=xf.device).view(1, 3, 1, 1)
    distance = (sixths.unsqueeze(1) - own_hue).abs_()
    distance = torch.minimum(distance, 6.0 - distance)
    ramp = distance.sub_(1.0).clamp_(0.0, 1.0)
    return torch.addcmul(high.unsqueeze(1), ramp, chroma.unsqueeze(1), value=-1.0)


class JitterParams(NamedTuple):
    """Per-sample colour-jitter parameters.

    Attributes:
        factors: ``(B, 4)`` brightness, contrast, saturation, hue factors.
        order: ``(B, 4)`` int64, a permutation of ``0..3`` per sample: the order
            in which the four adjustments (indices into ``factors``) are applied.
        applied: ``(B,)`` bool, False where the whole jitter is skipped.
    """

    factors: Tensor
    order: Tensor
    applied: Tensor


def sample_jitter(
    batch_size: int,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> JitterParams:
    """Draw ``ColorJitter`` parameters for a batch, as torchvision's ``ColorJitter`` does.

    Brightness, contrast and saturation factors are ``U(max(0, 1 - v), 1 + v)``,
    the hue factor ``U(-hue, hue)``, the order a uniform random permutation per
    sample (``argsort`` of 4 uniforms), and the jitter is applied with
    probability ``p`` (``RandomApply``).

    Example:
        >>> params = sample_jitter(8, generator=torch.Generator().manual_seed(0))
        >>> params.factors.shape, params.order.shape, params.applied.shape
        (torch.Size([8, 4]), torch.Size([8, 4]), torch.Size([8]))
    """
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if value < 0:
            raise ValueError(f"{name} jitter must be >= 0, got {value!r}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue jitter must lie in [0, 0.5], got {hue!r}")
    _check_p(p)
    device = _param_device(device, generator)
    draws = _rand((batch_size, 9), device, generator)
    low = torch.tensor(
        [max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue], device=device
    )
    high = torch.tensor([1 + brightness, 1 + contrast, 1 + saturation, hue], device=device)
    factors = low + (high - low) * draws[:, :4]
    order = draws[:, 4:8].argsort(dim=1)
    return JitterParams(factors, order, draws[:, 8] < p)


def apply_color_jitter(x: Tensor, params: JitterParams) -> Tensor:
    """Apply per-sample colour jitter in each sample's own random order.

    Sample ``i`` gets the adjustments ``params.order[i]`` in sequence, each
    exactly as :func:`adjust_brightness` ... :func:`adjust_hue` (index 0..3);
    the result equals torchvision's ``ColorJitter`` with the same factors and
    permutation, up to float rounding.

    How the random order is made cheap: brightness, contrast and saturation are
    one blend (see ``_blend``), so a sample's three non-hue steps are three
    blend passes whatever ops it drew. Here (any device, no synchronisation)
    every sample goes through three passes, the hue rotation, then three more,
    with exact identities in the slots it does not use; the view pipeline on
    the CPU instead groups the samples by hue position and runs only the three
    passes and the rotation each one needs.

    Args:
        x: ``(B, C, H, W)`` batch.
        params: from :func:`sample_jitter`.

    Example:
        >>> params = sample_jitter(4, generator=torch.Generator().manual_seed(0))
        >>> apply_color_jitter(torch.rand(4, 3, 8, 8), params).shape
        torch.Size([4, 3, 8, 8])
    """
    xf = to_float(x)
    factors = params.factors.to(device=xf.device, dtype=torch.float32)
    order = params.order.to(xf.device)
    applied = params.applied.to(xf.device)
    batch = xf.shape[0]
    if factors.shape != (batch, 4) or order.shape != (batch, 4) or applied.shape != (batch,):
        raise ValueError(
            f"jitter params must have shapes ({batch}, 4), ({batch}, 4), ({batch},) for a batch of {batch}, "
            f"got {tuple(factors.shape)}, {tuple(order.shape)}, {tuple(applied.shape)}"
        )
    return _masked_jitter(xf, *_jitter_plan(factors, order, applied, colour=xf.shape[1] == 3))


def _jitter_plan(
    factors: Tensor, order: Tensor, applied: Tensor, colour: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Each sample's jitter as ``steps`` (B, S, 3): the blend ``(a, b, c)`` of its
    non-hue adjustments in its order, S = 3 (brightness, contrast, saturation)
    for colour images and S = 2 for 1-channel images, where saturation and hue
    are identities and are dropped; ``hue`` (B,) factors (None when C = 1);
    ``group`` (B,) int64: 0 where the jitter is skipped, else 1 + the number of
    steps before the hue rotation (S + 1 for 1-channel images)."""
    batch = factors.shape[0]
    hue_position = (order == 3).to(torch.int64).argmax(dim=1)
    # Each row holds exactly one 3 (hue) and one 2 (saturation), so the others keep
    # their order in (B, 3) and (B, 2).
    ops = order[order != 3 if colour else order < 2].view(batch, -1)
    factor = factors[:, :3].gather(1, ops)
    is_contrast = ops == 1
    is_saturation = ops == 2
    steps = torch.stack(
        (
            factor,
            torch.where(is_saturation, 1.0 - factor, 0.0),
            torch.where(is_contrast, 1.0 - factor, 0.0),
        ),
        dim=2,
    )
    group = torch.where(applied, hue_position + 1 if colour else ops.shape[1] + 1, 0)
    return steps, factors[:, 3] if colour else None, group


def _masked_jitter(xf: Tensor, steps: Tensor, hue: Tensor | None, group: Tensor) -> Tensor:
    """The jitter on the whole batch at once, without looking at the parameters.

    Every sample goes through three blend passes, the hue rotation and three
    more passes; in the pass slots it does not use (and everywhere when its
    jitter is skipped) it gets the identity blend ``(1, 0, 0)`` or hue weight
    0, both exact. Nothing synchronises with the device, which suits the GPU;
    the CPU path groups the samples instead (see ``_run_view_grouped``).
    """
    hue_position = (group - 1).view(-1, 1, 1)
    slot = torch.arange(steps.shape[1], device=xf.device).view(1, -1, 1)
    applied = (group > 0).view(-1, 1, 1)
    identity = torch.tensor([1.0, 0.0, 0.0], device=xf.device)
    before = torch.where(applied & (slot < hue_position), steps, identity)
    after = torch.where(applied & (slot >= hue_position), steps, identity)
    for coefficients in before.unbind(1):
        xf = _blend_step(xf, coefficients)
    if hue is None:
        return xf
    # lerp with 0/1 weights returns exactly one end (torch computes end - diff * 0
    # for weight 1), and is cheaper on the CPU than a broadcast torch.where.
    xf = torch.lerp(xf, _rotate_hue(xf, hue), applied.to(xf.dtype).view(-1, 1, 1, 1))
    for coefficients in after.unbind(1):
        xf = _blend_step(xf, coefficients)
    return xf


def _blend_step(xf: Tensor, coefficients: Tensor) -> Tensor:
    """One brightness / contrast / saturation step with (B, 3) blend coefficients."""
    a, b, c = coefficients.view(-1, 3, 1, 1, 1).unbind(1)
    return _blend(xf, a, b if xf.shape[1] == 3 else None, c)


def _grouped_jitter(xf: Tensor, steps: Tensor, hue: Tensor | None, n_before: int) -> Tensor:
    """The jitter of samples that all rotate the hue after ``n_before`` steps."""
    for step in range(n_before):
        xf = _blend_step(xf, steps[:, step])
    if hue is not None:
        xf = _rotate_hue(xf, hue)
    for step in range(n_before, steps.shape[1]):
        xf = _blend_step(xf, steps[:, step])
    return xf


def color_jitter(
    x: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` per sample.

    See :func:`sample_jitter` for the distributions and
    :func:`apply_color_jitter` for how the random order is applied.

    Example:
        >>> color_jitter(torch.rand(4, 3, 8, 8)).shape
        torch.Size([4, 3, 8, 8])
    """
    _check_images(x)
    params = sample_jitter(x.shape[0], brightness, contrast, saturation, hue, p, generator=generator, device=x.device)
    return apply_color_jitter(x, params)


def apply_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """Replace the samples where ``mask`` is True by their luma, kept at C channels.

    Equals torchvision ``rgb_to_grayscale(img, num_output_channels=C)``; the
    identity when C = 1.

    Example:
        >>> apply_grayscale(torch.rand(2, 3, 4, 4), torch.tensor([True, False])).shape
        torch.Size([2, 3, 4, 4])
    """
    xf = to_float(x)
    if xf.shape[1] == 1:
        return xf
    a = (~mask.to(xf.device)).to(torch.float32).view(-1, 1, 1, 1)
    return _blend(xf, a, 1.0 - a, None)


def grayscale(x: Tensor, p: float = 0.2, *, generator: torch.Generator | None = None) -> Tensor:
    """Convert each sample to grayscale with probability ``p`` (``RandomGrayscale``).

    Example:
        >>> grayscale(torch.rand(4, 3, 8, 8), p=1.0).std(dim=1).max().item() < 1e-6
        True
    """
    _check_images(x)
    return apply_grayscale(x, _bernoulli(x.shape[0], _check_p(p), x.device, generator))


def apply_solarize(x: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert pixels ``>= threshold`` (``x -> 1 - x``) in the samples where ``mask`` is True.

    Equals torchvision ``solarize(img, threshold)`` on float images.

    Example:
        >>> apply_solarize(torch.tensor([0.25, 0.75]).view(1, 1, 1, 2), torch.tensor([True])).flatten().tolist()
        [0.25, 0.25]
    """
    xf = to_float(x)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] for float images, got {threshold!r}")
    return _solarize(xf, mask.to(device=xf.device, dtype=xf.dtype), threshold)


def _solarize(xf: Tensor, weight: Tensor, threshold: float) -> Tensor:
    # lerp with 0/1 weights returns exactly one end.
    return torch.lerp(xf, _solarized(xf, threshold), weight.view(-1, 1, 1, 1))


def _solarized(xf: Tensor, threshold: float) -> Tensor:
    if threshold == 0.5:
        # min(x, 1 - x) is exactly solarize at 0.5 and avoids a full-size torch.where.
        return torch.minimum(xf, 1.0 - xf)
    return torch.where(xf >= threshold, 1.0 - xf, xf)


def solarize(
    x: Tensor, p: float = 0.2, threshold: float = 0.5, *, generator: torch.Generator | None = None
) -> Tensor:
    """Solarize each sample with probability ``p`` (``RandomSolarize``, as in BYOL).

    Example:
        >>> solarize(torch.rand(4, 3, 8, 8), p=1.0).shape
        torch.Size([4, 3, 8, 8])
    """
    _check_images(x)
    return apply_solarize(x, _bernoulli(x.shape[0], _check_p(p), x.device, generator), threshold)


# -------------------------------------------------------------------- blur


def blur_kernel_size(side: int) -> int:
    """Odd Gaussian kernel size of about 10% of an image side, at least 3.

    The SimCLR recipe (10% of 224 gives 23); capped at ``2 * side - 1`` so that
    reflect padding stays valid on tiny images.

    Example:
        >>> blur_kernel_size(224), blur_kernel_size(32), blur_kernel_size(96)
        (23, 3, 9)
    """
    return min(max(3, int(0.1 * side) | 1), 2 * side - 1)


def _gaussian_taps(sigma: Tensor, kernel_size: int) -> Tensor:
    """(B, K) normalised Gaussian taps ``exp(-t^2 / (2 sigma^2))``, t = -(K-1)/2 .. (K-1)/2."""
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=sigma.device)
    return torch.softmax(-(t / sigma.view(-1, 1)).pow(2) / 2, dim=1)


def _separable_blur(xf: Tensor, taps_y: Tensor, taps_x: Tensor) -> Tensor:
    """Depthwise blur along H then W with per-sample (B, K) taps and reflect padding."""
    for dim, taps in ((2, taps_y), (3, taps_x)):
        kernel_size = taps.shape[1]
        if kernel_size == 1:
            continue
        pad = kernel_size // 2
        padding = (0, 0, pad, pad) if dim == 2 else (pad, pad, 0, 0)
        padded = F.pad(xf, padding, mode="reflect")
        length = xf.shape[dim]
        out = padded.narrow(dim, 0, length) * taps[:, 0].view(-1, 1, 1, 1)
        for tap in range(1, kernel_size):
            out.addcmul_(padded.narrow(dim, tap, length), taps[:, tap].view(-1, 1, 1, 1))
        xf = out
    return xf


def apply_blur(x: Tensor, sigma: float | Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """Gaussian blur with a per-sample ``sigma`` (torchvision ``gaussian_blur``).

    Separable taps ``exp(-t^2 / (2 sigma^2))`` normalised, reflect padding, the
    same ``sigma`` on both axes; equals ``gaussian_blur(img, [kx, ky], [s, s])``
    up to float rounding (torchvision convolves with the 2-D outer product).
    A sample with ``sigma == 0`` is left unchanged.

    Args:
        x: ``(B, C, H, W)`` batch.
        sigma: float or ``(B,)`` tensor, >= 0.
        kernel_size: odd size, or ``(height, width)`` pair of odd sizes.

    Example:
        >>> apply_blur(torch.rand(2, 3, 8, 8), torch.tensor([0.0, 1.5]), 3).shape
        torch.Size([2, 3, 8, 8])
    """
    xf = to_float(x)
    k_h, k_w = _pair(kernel_size, "kernel_size")
    if k_h % 2 == 0 or k_w % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size!r}")
    if k_h // 2 >= xf.shape[2] or k_w // 2 >= xf.shape[3]:
        raise ValueError(f"kernel_size {kernel_size!r} is too large for images of shape {tuple(xf.shape)}")
    sigma = _per_sample(sigma, xf, "sigma").view(-1)
    if bool((sigma < 0).any()):
        raise ValueError("sigma must be >= 0")
    return _blur_or_keep(xf, sigma, k_h, k_w)


def _blur_or_keep(xf: Tensor, sigma: Tensor, k_h: int, k_w: int) -> Tensor:
    return _separable_blur(xf, _blur_taps(sigma, k_h), _blur_taps(sigma, k_w))


def _blur_taps(sigma: Tensor, kernel_size: int) -> Tensor:
    """(B, K) Gaussian taps; sigma == 0 gives the identity tap [0, .., 1, .., 0]."""
    keep = (sigma <= 0).view(-1, 1)
    gauss = _gaussian_taps(torch.where(keep.view(-1), 1.0, sigma), kernel_size)
    identity = torch.zeros_like(gauss)
    identity[:, kernel_size // 2] = 1.0
    return torch.where(keep, identity, gauss)


def gaussian_blur(
    x: Tensor,
    kernel_size: int | tuple[int, int] | None = None,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Blur each sample with probability ``p`` and ``sigma ~ U(sigma)`` (``RandomApply(GaussianBlur)``).

    Args:
        x: ``(B, C, H, W)`` batch.
        kernel_size: odd size(s); default :func:`blur_kernel_size` of each side.
        sigma: ``(min, max)`` range of the standard deviation in pixels.
        p: probability of blurring a sample.
        generator: optional RNG.

    Example:
        >>> gaussian_blur(torch.rand(4, 3, 32, 32), p=1.0).shape
        torch.Size([4, 3, 32, 32])
    """
    _check_images(x)
    if kernel_size is None:
        kernel_size = (blur_kernel_size(x.shape[2]), blur_kernel_size(x.shape[3]))
    lo, hi = _check_range(sigma, "sigma")
    if lo <= 0:
        raise ValueError(f"sigma range must be positive, got {sigma!r}")
    return apply_blur(x, _draw_sigmas(x.shape[0], (lo, hi), _check_p(p), x.device, generator), kernel_size)


def _draw_sigmas(
    batch: int, sigma: tuple[float, float], p: float, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """(B,) sigma ~ U(sigma) where a sample is blurred (probability p), 0 where it is not."""
    draws = _rand((batch, 2), device, generator)
    return torch.where(draws[:, 0] < p, sigma[0] + (sigma[1] - sigma[0]) * draws[:, 1], 0.0)


# ----------------------------------------------------------------- recipes


@dataclass(frozen=True)
class View:
    """How one view is made; :func:`augment_view` applies it.

    Steps, in the order of the papers' torchvision pipelines: random resized
    crop (``scale`` None: resize the whole image) with horizontal flip, colour
    jitter with probability ``jitter_p``, grayscale, Gaussian blur, solarize.

    Attributes:
        size: output ``(height, width)``.
        scale: crop area range, or None for the whole image.
        ratio: crop aspect-ratio range.
        flip_p: horizontal flip probability.
        jitter: brightness, contrast, saturation, hue strengths.
        jitter_p: probability of applying the colour jitter.
        gray_p: grayscale probability.
        blur_p: Gaussian blur probability.
        blur_sigma: sigma range of the blur.
        solarize_p: solarize probability (threshold 0.5).
    """

    size: tuple[int, int]
    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


def augment_view(xf: Tensor, view: View, generator: torch.Generator | None = None) -> Tensor:
    """Make one augmented view of a float batch, every parameter drawn per sample.

    Args:
        xf: ``(B, C, H, W)`` float32 batch in [0, 1] (see :func:`to_float`).
        view: the recipe of the view.
        generator: optional RNG.

    Returns:
        ``(B, C, view.size[0], view.size[1])`` float32 in [0, 1].

    Example:
        >>> augment_view(torch.rand(4, 3, 32, 32), View(size=(16, 16))).shape
        torch.Size([4, 3, 16, 16])
    """
    plan = _plan_view(view, xf.shape, xf.device, generator)
    # RGB on the CPU: the fused C kernel where it could be built (1.5x the grouped path), else the
    # grouped torch path, which skips the hue rotation and blur where a sample has none (1.3-1.9x
    # the masked path at one thread). One-channel views have only cheap blend passes: there the
    # masked path is 10-20% faster than grouping at 28x28, and the kernel measured no gain.
    # benchmarks/augment.py measures both shapes.
    rgb_cpu = xf.device.type == "cpu" and xf.shape[1] == 3
    out = _run_view_fused(xf, view, plan) if rgb_cpu else None
    if out is None:
        out = _run_view_grouped(xf, view, plan) if rgb_cpu else _run_view(xf, view, plan)
    # Interpolation weights sum to 1 only up to rounding, so a saturated pixel can come out as
    # 1 + 1e-7; clamp so the promised range holds exactly (evaluation refuses values outside it).
    return out.clamp_(0.0, 1.0)


_CPU_CHUNK_BYTES = 1 << 21


class _ViewPlan(NamedTuple):
    """Per-sample parameters of one view, all with the batch as first dim."""

    boxes: Tensor | None  # (B, 4) crop boxes; None: keep the image
    flip: Tensor | None  # (B,) bool
    steps: Tensor | None  # (B, S, 3) jitter blends, see _jitter_plan
    hue: Tensor | None  # (B,) hue factors (3 channels only)
    group: Tensor | None  # (B,) int64 jitter group, see _jitter_plan
    gray: Tensor | None  # (B,) bool (3 channels only)
    sigma: Tensor | None  # (B,) blur sigma, 0 where not blurred
    solarize: Tensor | None  # (B,) bool


def _plan_view(
    view: View, shape: torch.Size, device: torch.device, generator: torch.Generator | None
) -> _ViewPlan:
    batch, channels, height, width = shape
    boxes = flip = None
    if view.scale is not None:
        boxes = sample_crop_boxes(batch, height, width, view.scale, view.ratio, generator=generator, device=device)
        flip = _bernoulli(batch, view.flip_p, device, generator)
    elif (height, width) != view.size:
        boxes = torch.tensor([[0, 0, height, width]], device=device).expand(batch, 4)
    steps = hue = group = gray = sigma = solarize = None
    if view.jitter_p > 0:
        params = sample_jitter(batch, *view.jitter, view.jitter_p, generator=generator, device=device)
        steps, hue, group = _jitter_plan(*params, colour=channels == 3)
    if view.gray_p > 0:
        # Drawn for 1-channel images too, so that both kinds consume the RNG alike.
        gray = _bernoulli(batch, view.gray_p, device, generator) if channels == 3 else None
    if view.blur_p > 0:
        sigma = _draw_sigmas(batch, view.blur_sigma, view.blur_p, device, generator)
    if view.solarize_p > 0:
        solarize = _bernoulli(batch, view.solarize_p, device, generator)
    return _ViewPlan(boxes, flip, steps, hue, group, gray, sigma, solarize)


def _run_view(xf: Tensor, view: View, plan: _ViewPlan) -> Tensor:
    """The view on the whole batch, every step masked per sample (no synchronisation)."""
    out = xf
    if plan.boxes is not None:
        out = _resample(xf, *_crop_matrices(plan.boxes, view.size, xf.shape[2], xf.shape[3], plan.flip))
    if plan.steps is not None and plan.group is not None:
        out = _masked_jitter(out, plan.steps, plan.hue, plan.group)
    if plan.gray is not None:
        keep = (~plan.gray).to(out.dtype).view(-1, 1, 1, 1)
        out = _blend(out, keep, 1.0 - keep, None)
    if plan.sigma is not None:
        out = _separable_blur(out, *_view_taps(plan.sigma, view))
    if plan.solarize is not None:
        out = _solarize(out, plan.solarize.to(out.dtype), 0.5)
    return out


def _view_taps(sigma: Tensor, view: View) -> tuple[Tensor, Tensor]:
    return _blur_taps(sigma, blur_kernel_size(view.size[0])), _blur_taps(sigma, blur_kernel_size(view.size[1]))


# A sample's key is 8 * jitter group + 4 * blurred + 2 * gray + solarized.
_KEYS = 5 * 8


def _chunk_rows(shape: torch.Size, view: View) -> int:
    """Samples per CPU chunk: about ``_CPU_CHUNK_BYTES`` of float32 in the larger of input and view."""
    _, channels, height, width = shape
    return max(1, _CPU_CHUNK_BYTES // (4 * channels * max(height * width, view.size[0] * view.size[1])))


def _run_view_grouped(xf: Tensor, view: View, plan: _ViewPlan) -> Tensor:
    """The view on the CPU: each step runs only on the samples it changes.

    The samples are sorted by what they need (jitter group, then blur, gray,
    solarize), so each step's samples are contiguous rows of the sorted batch:
    a jittered sample costs three blend passes and one hue rotation instead of
    six and one, a sample that is not blurred costs no blur, and so on. The
    sorted batch goes through in chunks of about ``_CPU_CHUNK_BYTES`` (2 MiB)
    per tensor, cut at jitter-group edges, so a chunk's temporaries stay in
    cache while the per-op overhead stays small: with the engine's malloc
    tuning (``selfsup.engine.allocator``) 2 MiB measured 1.1-1.2x faster than
    1 MiB and 512 KiB, and the whole batch at once (3x32x32 and 3x64x64) within
    noise of 2 MiB. Every sample gets exactly the arithmetic of ``_run_view``, whose
    identity passes are exact, so the output is the same bit for bit; the
    parameters are all drawn beforehand, so neither depends on the chunking.
    """
    batch, channels, height, width = xf.shape
    key = torch.zeros(batch, dtype=torch.int64)
    for flag, weight in ((plan.group, 8), (plan.sigma, 4), (plan.gray, 2), (plan.solarize, 1)):
        if flag is not None:
            key += (flag if flag.dtype == torch.int64 else (flag > 0).to(torch.int64)) * weight
    perm = torch.argsort(key, stable=True)
    edges = [0, *itertools.accumulate(torch.bincount(key, minlength=_KEYS).tolist())]
    plan = _ViewPlan(*(None if p is None else p[perm] for p in plan))

    def rows_where(bit: int) -> list[tuple[int, int]]:
        return [(edges[k], edges[k + 1]) for k in range(_KEYS) if k & bit and edges[k] < edges[k + 1]]

    blurred, grayed, solarized = rows_where(4), rows_where(2), rows_where(1)
    taps = None if plan.sigma is None else _view_taps(plan.sigma, view)
    # Per-sample tensors are built once for the sorted batch and sliced per chunk.
    crop = None if plan.boxes is None else _crop_matrices(plan.boxes, view.size, height, width, plan.flip)
    chunk = _chunk_rows(xf.shape, view)
    # Chunks are written in sorted order and the batch is put back in order with one row gather
    # at the end: index_select of whole rows runs at memcpy speed, while scattering each chunk
    # with index_put_ took about a quarter of the whole view (3x32x32, one thread).
    out = xf.new_empty(batch, channels, *view.size)
    for group in range(_KEYS // 8):
        first, last = edges[8 * group], edges[8 * group + 8]
        parts = -(-(last - first) // chunk)
        for part in range(parts):
            start = first + (last - first) * part // parts
            stop = first + (last - first) * (part + 1) // parts
            rows = slice(start, stop)
            work = xf.index_select(0, perm[rows])
            if crop is not None:
                work = _resample(work, crop[0][rows], crop[1][rows])
            if group > 0 and plan.steps is not None:
                work = _grouped_jitter(work, plan.steps[rows], None if plan.hue is None else plan.hue[rows], group - 1)
            for begin, end in _overlaps(grayed, start, stop):
                work[begin:end] = _gray(work[begin:end])
            if taps is not None:
                for begin, end in _overlaps(blurred, start, stop):
                    work[begin:end] = _separable_blur(
                        work[begin:end], taps[0][start + begin : start + end], taps[1][start + begin : start + end]
                    )
            for begin, end in _overlaps(solarized, start, stop):
                work[begin:end] = _solarized(work[begin:end], 0.5)
            out[rows] = work
    return out.index_select(0, torch.argsort(perm))


def _run_view_fused(xf: Tensor, view: View, plan: _ViewPlan) -> Tensor | None:
    """The view of an RGB batch on the CPU with the C kernel (``selfsup._kernels.view``).

    The crop runs as in the other paths (two ``bmm``), chunk by chunk in batch order so that its
    temporaries stay in cache; the kernel then takes each image of the chunk through its jitter (in
    its own order), grayscale, blur and solarize while the image sits in L1 cache, and writes it
    straight into the output. No sorting and no gathers; about 1.5x faster than the grouped torch
    path at 3x32x32. Returns None when the kernel is unavailable.
    """
    if not _kernels.available():
        return None
    batch, channels, height, width = xf.shape
    steps = xf.new_zeros(batch, 3, 3) if plan.steps is None else plan.steps
    hue = xf.new_zeros(batch) if plan.hue is None else plan.hue
    position = torch.full((batch,), -1) if plan.group is None else plan.group - 1
    off = torch.zeros(batch, dtype=torch.bool)
    gray = off if plan.gray is None else plan.gray
    blur = off if plan.sigma is None else plan.sigma > 0
    taps = (xf.new_ones(batch, 1), xf.new_ones(batch, 1)) if plan.sigma is None else _view_taps(plan.sigma, view)
    solarize = off if plan.solarize is None else plan.solarize
    crop = None if plan.boxes is None else _crop_matrices(plan.boxes, view.size, height, width, plan.flip)
    out = xf.new_empty(batch, channels, *view.size)
    chunk = _chunk_rows(xf.shape, view)
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        work = xf[rows] if crop is None else _resample(xf[rows], crop[0][rows], crop[1][rows])
        _kernels.view(work, out[rows], steps[rows], hue[rows], position[rows], gray[rows], taps[0][rows],
                      taps[1][rows], blur[rows], solarize[rows], 0.5)
    return out


def _overlaps(ranges: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int]]:
    """The parts of ``ranges`` inside [start, stop), relative to start."""
    return [(max(a, start) - start, min(b, stop) - start) for a, b in ranges if a < stop and b > start]


class Augmentation(nn.Module):
    """A list of views made from one batch; call it as ``augment(images, generator=None)``.

    Holds no parameters, so it runs on whatever device the batch is on.

    Args:
        views: the :class:`View` recipes, in output order.

    Example:
        >>> augment = Augmentation([View(size=(16, 16)), View(size=(8, 8), scale=(0.05, 0.4))])
        >>> [v.shape[-1] for v in augment(torch.rand(2, 3, 32, 32))]
        [16, 8]
    """

    def __init__(self, views: list[View]) -> None:
        super().__init__()
        if not views:
            raise ValueError("an Augmentation needs at least one View")
        self.views = list(views)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """Return ``len(self.views)`` float32 views ``(B, C, h_i, w_i)`` in [0, 1] of ``x``.

        Args:
            x: ``(B, C, H, W)`` uint8 (0..255) or float (0..1) batch, C = 1 or 3.
            generator: optional RNG for reproducible views.
        """
        xf = to_float(x)
        return [augment_view(xf, view, generator) for view in self.views]

    def extra_repr(self) -> str:
        return "\n".join(repr(view) for view in self.views)


RECIPES = ("simclr", "moco_v2", "byol", "dino", "none", "eval")


def recipe(name: str, size: int | tuple[int, int], *, n_local: int | None = None) -> Augmentation:
    """The augmentation of a paper, batched.

    * ``"simclr"`` (Chen et al. 2020): 2 views; crop scale 0.08-1, flip 0.5,
      colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, blur 0.5
      (sigma 0.1-2, kernel about 10% of the side).
    * ``"moco_v2"`` (Chen et al. 2020b): as simclr with crop scale 0.2-1.
    * ``"byol"`` (Grill et al. 2020): 2 asymmetric views, jitter (0.4, 0.4,
      0.2, 0.1) p 0.8, grayscale 0.2, crop 0.08-1; blur 1.0 / 0.1, solarize
      0 / 0.2.
    * ``"dino"`` (Caron et al. 2021): 2 global crops (scale 0.4-1, at ``size``,
      BYOL's colour, blur 1.0 / 0.1, solarize 0 / 0.2) then ``n_local``
      (default 6) local crops (scale 0.05-0.4, side ``round(size * 96 / 224)``,
      blur 0.5).
    * ``"none"`` / ``"eval"``: one view, the image as float (resized to
      ``size`` with antialiased bilinear if it differs).

    Args:
        name: one of :data:`RECIPES`.
        size: output side or ``(height, width)`` of the (global) views.
        n_local: number of DINO local crops (dino only).

    Returns:
        An :class:`Augmentation`.

    Example:
        >>> views = recipe("dino", 32, n_local=2)(torch.rand(4, 3, 32, 32))
        >>> [tuple(v.shape[-2:]) for v in views]
        [(32, 32), (32, 32), (14, 14), (14, 14)]
    """
    pair = _pair(size)
    if n_local is not None and name != "dino":
        raise ValueError(f"n_local is a 'dino' option, not one of recipe {name!r}")
    if name in ("simclr", "moco_v2"):
        view = View(size=pair, scale=(0.08, 1.0) if name == "simclr" else (0.2, 1.0))
        return Augmentation([view, view])
    if name in ("byol", "dino"):
        first = View(size=pair, jitter=(0.4, 0.4, 0.2, 0.1), blur_p=1.0)
        second = replace(first, blur_p=0.1, solarize_p=0.2)
        if name == "byol":
            return Augmentation([first, second])
        n_local = 6 if n_local is None else n_local
        if not isinstance(n_local, int) or n_local < 0:
            raise ValueError(f"n_local must be an int >= 0, got {n_local!r}")
        local_size = (max(1, round(pair[0] * 96 / 224)), max(1, round(pair[1] * 96 / 224)))
        local = replace(first, size=local_size, scale=(0.05, 0.4), blur_p=0.5)
        globals_ = [replace(first, scale=(0.4, 1.0)), replace(second, scale=(0.4, 1.0))]
        return Augmentation(globals_ + [local] * n_local)
    if name in ("none", "eval"):
        return Augmentation([View(size=pair, scale=None, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)])
    raise ValueError(f"unknown augmentation recipe {name!r}; known recipes: {', '.join(RECIPES)}")
