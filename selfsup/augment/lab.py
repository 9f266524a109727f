"""CIE Lab (D65) to and from sRGB, batched on the device: colorization's input and target, CMC's views.

The standard conversion, as scikit-image's ``rgb2lab`` / ``lab2rgb``: sRGB companding, the sRGB
primaries to XYZ, the D65 white point, and the CIE 1976 L*a*b* function with its linear part
below (6/29)^3. L lies in [0, 100]; a and b in about [-128, 127].
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.augment._common import _check_images, full_float32_products, to_float

_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_EPSILON = (6 / 29) ** 3  # 0.008856


def _matrix(rows, like: Tensor) -> Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def rgb_to_lab(x: Tensor) -> Tensor:
    """``(B, 3, H, W)`` sRGB (uint8, or float in [0, 1]) to float Lab: L in [0, 100], then a, b.

    Examples:
        >>> rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten().round(decimals=2).abs().tolist()  # white: a = b = 0
        [100.0, 0.0, 0.0]
    """
    _check_images(x)
    if x.shape[1] != 3:
        raise ValueError(f"Lab needs RGB images (3 channels), got {x.shape[1]} channel(s)")
    rgb = x if x.dtype == torch.float64 else to_float(x)  # float64 stays float64 (for precise checks)
    # L in [0, 100] needs float32, not bf16, nor TF32 on a GPU (its einsum, emulated on a CPU, moves L, a and b
    # by up to 0.02, 0.06 and 0.04)
    with torch.autocast(rgb.device.type, enabled=False), full_float32_products(rgb.device):
        return _rgb_to_lab(rgb)


def _rgb_to_lab(rgb: Tensor) -> Tensor:
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _matrix(_RGB_TO_XYZ, linear), linear)
    xyz = xyz / _matrix(_WHITE_D65, xyz).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPSILON, xyz.clamp(min=_EPSILON) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Float Lab ``(B, 3, H, W)`` back to sRGB in [0, 1] (out-of-gamut colours clipped)."""
    if lab.ndim != 4 or lab.shape[1] != 3 or not lab.is_floating_point():
        raise ValueError(f"lab must be a float tensor of shape (B, 3, H, W), got {tuple(lab.shape)} {lab.dtype}")
    # As rgb_to_lab: a bf16 einsum is off by 5e-2, and a TF32 one (emulated) by up to 1e-2
    with torch.autocast(lab.device.type, enabled=False), full_float32_products(lab.device):
        return _lab_to_rgb(lab)


def _lab_to_rgb(lab: Tensor) -> Tensor:
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f > 6 / 29, f ** 3, (f - 16 / 116) / 7.787)
    xyz = xyz.clamp(min=0) * _matrix(_WHITE_D65, xyz).view(1, 3, 1, 1)
    linear = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_matrix(_RGB_TO_XYZ, xyz)), xyz).clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear).clamp(0, 1)


__all__ = ["lab_to_rgb", "rgb_to_lab"]
