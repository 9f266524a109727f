"""Colour: brightness, contrast, saturation and hue as one blend, jitter in each sample's order, grayscale, solarize."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from selfsup.augment._common import (
    _bernoulli,
    _check_images,
    _check_p,
    _gray,
    _param_device,
    _per_sample,
    _rand,
    to_float,
)


def adjust_brightness(x: Tensor, factor: float | Tensor) -> Tensor:
    """``clamp(factor * x, 0, 1)`` per sample (torchvision ``adjust_brightness``).

    Args:
        x: ``(B, C, H, W)`` batch.
        factor: float or ``(B,)`` non-negative factors.

    Examples:
        >>> adjust_brightness(torch.full((1, 1, 1, 1), 0.6), 2.0).item()
        1.0
    """
    xf = to_float(x)
    return _blend(xf, _per_sample(factor, xf, "factor"), None, None)


def adjust_contrast(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each image with the mean of its luma (torchvision ``adjust_contrast``).

    ``clamp(f * x + (1 - f) * mean(gray(x)), 0, 1)`` with
    ``gray = 0.2989 R + 0.587 G + 0.114 B`` (the image itself when C = 1).

    Examples:
        >>> adjust_contrast(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2), 0.0).flatten().tolist()
        [0.5, 0.5]
    """
    xf = to_float(x)
    factor = _per_sample(factor, xf, "factor")
    return _blend(xf, factor, None, 1.0 - factor)


def adjust_saturation(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each image with its luma image (torchvision ``adjust_saturation``).

    ``clamp(f * x + (1 - f) * gray(x), 0, 1)``; the identity when C = 1.

    Examples:
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

    Examples:
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

    Examples:
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

    Examples:
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
    # their order in (B, 3) and (B, 2) (sized, not -1: an empty batch has no size to infer).
    ops = order[order != 3 if colour else order < 2].view(batch, 3 if colour else 2)
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

    Examples:
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

    Examples:
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

    Examples:
        >>> grayscale(torch.rand(4, 3, 8, 8), p=1.0).std(dim=1).max().item() < 1e-6
        True
    """
    _check_images(x)
    return apply_grayscale(x, _bernoulli(x.shape[0], _check_p(p), x.device, generator))


def apply_solarize(x: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert pixels ``>= threshold`` (``x -> 1 - x``) in the samples where ``mask`` is True.

    Equals torchvision ``solarize(img, threshold)`` on float images.

    Examples:
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

    Examples:
        >>> solarize(torch.rand(4, 3, 8, 8), p=1.0).shape
        torch.Size([4, 3, 8, 8])
    """
    _check_images(x)
    return apply_solarize(x, _bernoulli(x.shape[0], _check_p(p), x.device, generator), threshold)
