"""Random warps with known correspondences, for dense methods and their evaluation.

A warp is a homography ``H`` (3x3, per image) in continuous pixel coordinates: ``x`` to the right,
``y`` down, pixel ``(row i, column j)`` centred at ``(j + 0.5, i + 0.5)``, the image spanning
``[0, W] x [0, H]``. The warped image is ``B(p) = A(H^-1 p)`` (bilinear), so a pixel ``p`` of B
corresponds to the point ``H^-1 p`` of A exactly, and a point ``a`` of A to ``H a`` of B: no
depth, no matching, no approximation (Dense Object Nets learn from such correspondences; here they
come from warps of single images instead of 3-D reconstructions). A pixel of B is ``valid`` when its
source lies inside A's pixel centres, where bilinear interpolation needs no padding.

Warps compose a rotation, an isotropic scale, a shear, a translation, a horizontal flip and a half turn
about the image centre, and a small projective term (:func:`random_homographies`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.augment._common import _param_device, _rand


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return low + (high - low) * _rand((n,), device, generator, torch.float64)


def random_homographies(n: int, size: tuple[int, int], *, generator: torch.Generator | None = None,
                        rotation: float = 30.0, scale: tuple[float, float] = (0.8, 1.2), shear: float = 10.0,
                        shift: float = 0.1, perspective: float = 0.1, flip_p: float = 0.5,
                        half_turn_p: float = 0.0, device: torch.device | str | None = None) -> Tensor:
    """``(n, 3, 3)`` float64 homographies mapping points of the source image to the warped one.

    Args:
        n: how many.
        size: ``(height, width)`` of the images.
        rotation: the largest rotation in degrees (uniform in ``[-rotation, rotation]``).
        scale: the range of the isotropic scale.
        shear: the largest shear angle in degrees.
        shift: the largest translation as a fraction of each side.
        perspective: the largest projective distortion: the corners move by up to this fraction of
            the side, through the bottom row of H.
        flip_p: probability of a horizontal flip (a mirror image: handedness reversed).
        half_turn_p: probability of a rotation by 180 degrees (Dense Object Nets' flip,
            ``correspondence_augmentation.py``: a vertical then a horizontal flip, handedness kept), on top
            of ``rotation``.
        device: where the homographies go (default: the generator's device, else the CPU); the draws
            are made on the generator's own device, as every augmentation's.
    """
    for name, p in (("flip_p", flip_p), ("half_turn_p", half_turn_p)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    device = _param_device(device, generator)
    height, width = size
    angle = torch.deg2rad(_uniform(n, -rotation, rotation, generator, device))
    s = _uniform(n, *scale, generator, device)
    sh = torch.tan(torch.deg2rad(_uniform(n, -shear, shear, generator, device)))
    tx = _uniform(n, -shift, shift, generator, device) * width
    ty = _uniform(n, -shift, shift, generator, device) * height
    px = _uniform(n, -perspective, perspective, generator, device) / width
    py = _uniform(n, -perspective, perspective, generator, device) / height
    flip = _rand((n,), device, generator) < flip_p
    half_turn = _rand((n,), device, generator) < half_turn_p if half_turn_p > 0 else torch.zeros_like(flip)

    def matrix(rows: list[list[Tensor | float]]) -> Tensor:
        return torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).expand(n)
                                         for v in row], dim=-1) for row in rows], dim=-2)

    centre = matrix([[1.0, 0.0, -width / 2], [0.0, 1.0, -height / 2], [0.0, 0.0, 1.0]])
    uncentre = matrix([[1.0, 0.0, width / 2], [0.0, 1.0, height / 2], [0.0, 0.0, 1.0]])
    turn = torch.where(half_turn, -1.0, 1.0)
    flipping = matrix([[torch.where(flip, -1.0, 1.0) * turn, 0.0, 0.0], [0.0, turn, 0.0], [0.0, 0.0, 1.0]])
    cos, sin = torch.cos(angle), torch.sin(angle)
    linear = matrix([[s * cos, -s * sin, 0.0], [s * sin, s * cos, 0.0], [0.0, 0.0, 1.0]])
    shearing = matrix([[1.0, sh, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    projective = matrix([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [px, py, 1.0]])
    moving = matrix([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    return moving @ uncentre @ projective @ linear @ shearing @ flipping @ centre


def map_points(homographies: Tensor, points: Tensor) -> Tensor:
    """``points`` ``(n, k, 2)`` (x, y) mapped by ``homographies`` ``(n, 3, 3)``."""
    h = homographies.to(points.dtype) if points.dtype == torch.float64 else homographies.float()
    ones = torch.ones_like(points[..., :1])
    mapped = torch.cat((points, ones), dim=-1) @ h.transpose(1, 2)
    return mapped[..., :2] / mapped[..., 2:]


def pixel_centres(size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    """``(H * W, 2)`` the (x, y) centres of an image's pixels, row by row."""
    height, width = size
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack((xs.flatten() + 0.5, ys.flatten() + 0.5), dim=-1).float()


def to_grid(points: Tensor, size: tuple[int, int]) -> Tensor:
    """Continuous pixel coordinates as ``grid_sample``'s [-1, 1] (``align_corners=False``)."""
    height, width = size
    return torch.stack((2 * points[..., 0] / width - 1, 2 * points[..., 1] / height - 1), dim=-1)


def inside(points: Tensor, size: tuple[int, int]) -> Tensor:
    """Which points lie within the pixel centres of an image of ``size`` (bilinear without padding)."""
    height, width = size
    x, y = points[..., 0], points[..., 1]
    return (x >= 0.5) & (x <= width - 0.5) & (y >= 0.5) & (y <= height - 0.5)


def sample_at(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of ``maps`` ``(n, C, H, W)`` at ``points`` ``(n, k, 2)``: ``(n, k, C)``."""
    grid = to_grid(points.float(), maps.shape[-2:]).unsqueeze(1)
    return F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", align_corners=False).squeeze(2).transpose(1, 2)


def warp(images: Tensor, homographies: Tensor) -> tuple[Tensor, Tensor]:
    """``(warped, valid)``: each image warped by its homography (``B(p) = A(H^-1 p)``, bilinear, zeros
    outside) and ``(n, H, W)`` whether each pixel's source lies inside the image."""
    n, _, height, width = images.shape
    source = map_points(torch.linalg.inv(homographies), pixel_centres((height, width), images.device)
                        .double().expand(n, -1, -1))
    grid = to_grid(source, (height, width)).view(n, height, width, 2)
    warped = F.grid_sample(images.float(), grid.to(torch.float32), mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return warped.to(images.dtype) if images.is_floating_point() else warped, inside(source, (height, width)).view(n, height, width)


def identity_like(homographies: Tensor) -> Tensor:
    """Identity homographies of the same batch, dtype and device."""
    return torch.eye(3, dtype=homographies.dtype, device=homographies.device).expand_as(homographies).clone()


__all__ = ["identity_like", "inside", "map_points", "pixel_centres", "random_homographies", "sample_at", "to_grid",
           "warp"]
