"""Gaussian blur: separable, per-sample sigma, reflect padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.augment._common import _check_images, _check_p, _check_range, _pair, _per_sample, _rand, to_float


def blur_kernel_size(side: int) -> int:
    """Odd Gaussian kernel size of about 10% of an image side, at least 3.

    The SimCLR recipe (10% of 224 gives 23); capped at ``2 * side - 1`` so that
    reflect padding stays valid on tiny images.

    Examples:
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

    Examples:
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

    Examples:
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
