"""Crop, resize and flip: per-sample crop boxes and interpolation matrices, two batched products."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from selfsup.augment._common import (
    _bernoulli,
    _check_images,
    _check_p,
    _check_range,
    _pair,
    _param_device,
    _rand,
    to_float,
)

# torchvision's RandomResizedCrop gives up after this many rejected draws.
_CROP_ATTEMPTS = 10


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

    Examples:
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
    # An output pixel centred outside the image (a shifted crop, View.pad) has no input pixel: a zero
    # row, the black border of zero padding, instead of 0 / 0.
    total = weights.sum(dim=2, keepdim=True)
    return weights.div_(torch.where(total > 0, total, torch.ones_like(total)))


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

    Examples:
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

    Examples:
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

    Examples:
        >>> apply_hflip(torch.arange(2.0).view(1, 1, 1, 2) / 2, torch.tensor([True])).flatten().tolist()
        [0.5, 0.0]
    """
    xf = to_float(x)
    return torch.where(mask.to(xf.device).view(-1, 1, 1, 1), xf.flip(-1), xf)


def horizontal_flip(x: Tensor, p: float = 0.5, *, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each sample left-right with probability ``p`` (``RandomHorizontalFlip``).

    Examples:
        >>> horizontal_flip(torch.rand(4, 3, 8, 8)).shape
        torch.Size([4, 3, 8, 8])
    """
    _check_images(x)
    return apply_hflip(x, _bernoulli(x.shape[0], _check_p(p), x.device, generator))


def view_to_image(points: Tensor, boxes: Tensor, flip: Tensor | None, size: tuple[int, int]) -> Tensor:
    """Where points of a view lie in the image it was cut from.

    Coordinates are continuous ``(y, x)`` with pixel ``j`` covering ``[j, j + 1)`` (its centre at
    ``j + 0.5``), the convention of :func:`resized_crop`: the view's point ``u`` comes from the
    image's ``top + u * box_h / size_h`` down and, across, ``left + u * box_w / size_w``, or
    ``left + (size_w - u) * box_w / size_w`` where the view is mirrored.

    Args:
        points: ``(B, P, 2)`` points in the views' coordinates.
        boxes: ``(B, 4)`` the views' ``(top, left, height, width)`` in the image (a shifted view,
            ``View.pad``, has a box reaching past the border).
        flip: ``(B,)`` bool, True where the view is mirrored, or None.
        size: the views' ``(height, width)``.

    Returns:
        ``(B, P, 2)`` float points in the images' coordinates.
    """
    boxes = boxes.to(points.device, torch.float32)
    y, x = points.float().unbind(2)
    if flip is not None:
        x = torch.where(flip.to(points.device).view(-1, 1), size[1] - x, x)
    return torch.stack((boxes[:, :1] + y * (boxes[:, 2:3] / size[0]),
                        boxes[:, 1:2] + x * (boxes[:, 3:4] / size[1])), dim=2)


def image_to_view(points: Tensor, boxes: Tensor, flip: Tensor | None, size: tuple[int, int]) -> Tensor:
    """The inverse of :func:`view_to_image`: where points of the image lie in its view (outside
    ``[0, size)`` where the view does not show them)."""
    boxes = boxes.to(points.device, torch.float32)
    y, x = points.float().unbind(2)
    y = (y - boxes[:, :1]) * (size[0] / boxes[:, 2:3])
    x = (x - boxes[:, 1:2]) * (size[1] / boxes[:, 3:4])
    if flip is not None:
        x = torch.where(flip.to(points.device).view(-1, 1), size[1] - x, x)
    return torch.stack((y, x), dim=2)
