"""Input checks, per-sample RNG draws and the luma shared by every augmentation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses them.
_LUMA = (0.2989, 0.587, 0.114)


@contextlib.contextmanager
def full_float32_products(device: torch.device) -> Iterator[None]:
    """Full float32 matrix products on a CUDA device inside the block, whatever precision the run set.

    A run on a tensor-core GPU sets ``torch.set_float32_matmul_precision("high")`` (TF32; Lightning's advice,
    ``train.matmul_precision``), which is right for the network but not for pixels: the crop's interpolation
    products in TF32 move a view by up to 5e-4 (0.12 of a grey level) and the identity view is no longer
    exact, against the 1e-5 the fused kernel and the tests hold the paths to. On other devices, and where
    the precision is already "highest", nothing changes. Call it around eager code, or around the call of a
    compiled function (the products it launches read the setting when they run), not inside one.
    """
    before = torch.get_float32_matmul_precision()
    if device.type != "cuda" or before == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


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
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
    if not low <= lo <= hi:
        raise ValueError(f"{name} must be a (min, max) pair with {low} <= min <= max, got {value!r}")
    return lo, hi


def _check_p(p: float, name: str = "p") -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} is a probability and must lie in [0, 1], got {p!r}")
    return float(p)


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform [0, 1) floats on ``device``, drawn from ``generator`` (on its own device) when given."""
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _param_device(device: torch.device | str | None, generator: torch.Generator | None) -> torch.device:
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    return torch.device(device)


def _randint(high: int, shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Uniform integers in [0, high) on ``device``, drawn from ``generator`` (on its own device) when given."""
    if generator is None:
        return torch.randint(high, shape, device=device)
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


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

    Examples:
        >>> to_float(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)).max().item()
        1.0
    """
    _check_images(x)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)
