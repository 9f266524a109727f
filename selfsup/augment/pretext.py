"""Pretext-task inputs built on the device, batched: rotations, grid patches with gaps and jitter,
jigsaw permutations of maximal Hamming distance.

Each function takes a batch ``(B, C, H, W)`` and returns the task's inputs with their labels; the
random choices (patch jitter, which neighbour, which permutation) are drawn per sample in one
call, with an optional ``generator``.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.augment._common import _check_images, _rand, _randint
from selfsup.nn.dtypes import at_least_float32

NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)
"""Cells of a 3x3 grid around the centre (4), in row-major order: label k is cell NEIGHBOURS[k]."""


def rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """Every image at 0, 90, 180 and 270 degrees, with the label k of a rotation by k * 90 degrees
    counter-clockwise (Gidaris et al. 2018: all four rotations of each image in the batch).

    Returns ``(4B, C, H, W)`` images (all images at 0 degrees, then all at 90, ...) and ``(4B,)``
    labels. Square images only (a rotated image must keep the shape).

    Examples:
        >>> images, labels = rotations(torch.rand(2, 3, 8, 8))
        >>> images.shape, labels.tolist()
        (torch.Size([8, 3, 8, 8]), [0, 0, 1, 1, 2, 2, 3, 3])
    """
    _check_images(x)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotations need square images, got {x.shape[-2]}x{x.shape[-1]}")
    images = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return images, labels


def grid_geometry(side: int, grid: int, patch: int, gap: int) -> tuple[int, int]:
    """The cell side and the jitter range of patches of ``patch`` pixels in a ``grid`` x ``grid``
    grid over ``side`` pixels, such that patches of neighbouring cells are at least ``gap`` pixels
    apart: returns ``(cell, jitter)`` with offsets in ``[gap // 2, gap // 2 + jitter]``."""
    cell = side // grid
    jitter = cell - patch - gap
    if patch < 1 or gap < 0 or jitter < 0:
        raise ValueError(f"patches of {patch} px with a gap of {gap} px do not fit a {grid}x{grid} grid over "
                         f"{side} px (cells of {cell} px need patch + gap <= {cell})")
    return cell, jitter


def grid_patches(x: Tensor, cells: Tensor, *, grid: int = 3, patch: int, gap: int = 0,
                 generator: torch.Generator | None = None) -> Tensor:
    """Cut one ``patch`` x ``patch`` square out of each requested grid cell of each image.

    The image is divided into ``grid`` x ``grid`` cells of ``side // grid`` pixels (a remainder at
    the right and bottom is unused); each patch sits inside its cell at a uniformly random
    integer offset that keeps it at least ``gap`` pixels from the patches of neighbouring cells
    (Doersch et al. 2015: gaps and jitter, so that the network cannot match edges or lines that
    run across patches).

    Args:
        x: ``(B, C, H, W)`` images (H and W may differ).
        cells: ``(B, K)`` cell indices in ``[0, grid²)``, row-major.
        grid: cells per side.
        patch: patch side in pixels.
        gap: smallest distance between patches of neighbouring cells.
        generator: for the jitter.

    Returns:
        ``(B, K, C, patch, patch)`` patches of the same dtype as ``x``.
    """
    _check_images(x)
    if cells.ndim != 2 or cells.shape[0] != x.shape[0]:
        raise ValueError(f"cells must have shape ({x.shape[0]}, K), got {tuple(cells.shape)}")
    cell_h, jitter_h = grid_geometry(x.shape[-2], grid, patch, gap)
    cell_w, jitter_w = grid_geometry(x.shape[-1], grid, patch, gap)
    device = x.device
    cells = cells.to(device)
    shape = tuple(cells.shape)
    top = (cells // grid) * cell_h + gap // 2 + _randint(jitter_h + 1, shape, device, generator)
    left = (cells % grid) * cell_w + gap // 2 + _randint(jitter_w + 1, shape, device, generator)
    steps = torch.arange(patch, device=device)
    rows = (top[..., None] + steps)[..., :, None]                   # (B, K, p, 1)
    cols = (left[..., None] + steps)[..., None, :]                  # (B, K, 1, p)
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    return x[batch, :, rows, cols].permute(0, 1, 4, 2, 3)          # (B, K, p, p, C) -> (B, K, C, p, p)


def relative_patches(x: Tensor, *, patch: int, gap: int = 0,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Doersch et al. 2015's pairs: the centre patch of a 3x3 grid and one of its 8 neighbours,
    chosen uniformly per image; the label says which (an index into :data:`NEIGHBOURS`).

    Returns the centre patches ``(B, C, p, p)``, the neighbour patches and the ``(B,)`` labels.
    """
    labels = _randint(8, (x.shape[0],), x.device, generator)
    neighbour = torch.tensor(NEIGHBOURS, device=x.device)[labels]
    cells = torch.stack([torch.full_like(neighbour, 4), neighbour], dim=1)
    patches = grid_patches(x, cells, patch=patch, gap=gap, generator=generator)
    return patches[:, 0], patches[:, 1], labels


def hamming_permutations(count: int, n: int = 9) -> Tensor:
    """``count`` permutations of ``n`` tiles, far apart in Hamming distance (Noroozi & Favaro 2016,
    Algorithm 1, with the minimum distance as the criterion): starting from the identity, each
    step adds the permutation whose smallest distance to the chosen ones is largest, ties going
    to the largest mean distance and then to the first in lexicographic order.

    The result depends only on ``(count, n)``. On small cases (n <= 4) its smallest pairwise
    distance equals the best of all subsets (tested by brute force); relabelling the tiles
    (``sigma[perms]``) changes the set but none of its distances.

    Returns:
        ``(count, n)`` int64, row 0 the identity.

    Examples:
        >>> perms = hamming_permutations(4, 4)
        >>> int((perms[:, None] != perms[None]).sum(-1).fill_diagonal_(4).min())
        4
    """
    if n < 2 or n > 10:
        raise ValueError(f"n must be between 2 and 10 tiles (n! candidates), got {n}")
    return torch.from_numpy(_hamming_permutations(count, n).copy())


@functools.lru_cache(maxsize=8)
def _hamming_permutations(count: int, n: int) -> np.ndarray:
    """:func:`hamming_permutations`, computed once per process (about 2 s for 100 of 9! on one core)."""
    # Every permutation in lexicographic order, one row per tile position (columns compare fast).
    every = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(n))), dtype=np.int8)
    columns = np.ascontiguousarray(every.reshape(-1, n).T)
    if not 1 <= count <= columns.shape[1]:
        raise ValueError(f"count must be between 1 and {n}! = {columns.shape[1]}, got {count}")

    def distances(pick: int) -> np.ndarray:
        out = np.zeros(columns.shape[1], dtype=np.int64)
        for position in columns:
            out += position != position[pick]
        return out

    chosen = [0]
    nearest = distances(0)
    total = nearest.copy()
    for _ in range(count - 1):
        key = nearest * (n * count + 1) + total
        key[chosen] = -1
        pick = int(key.argmax())  # argmax returns the first of equal maxima
        chosen.append(pick)
        distance = distances(pick)
        nearest, total = np.minimum(nearest, distance), total + distance
    out = columns[:, chosen].T.astype(np.int64)
    out.flags.writeable = False  # the cached copy; callers get their own
    return out


def jigsaw(x: Tensor, permutations: Tensor, *, patch: int, gap: int = 0,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Noroozi & Favaro 2016's puzzles: the 9 tiles of a 3x3 grid (with gaps and jitter) shuffled
    by one of ``permutations`` per image; the label is that permutation's index.

    Position j of the returned puzzle holds tile ``permutations[label][j]`` (so the tiles come
    back in place with ``tiles[perm] = puzzle``).

    Returns ``(B, 9, C, p, p)`` shuffled tiles and ``(B,)`` labels.
    """
    if permutations.ndim != 2 or permutations.shape[1] != 9:
        raise ValueError(f"permutations must have shape (P, 9), got {tuple(permutations.shape)}")
    labels = _randint(permutations.shape[0], (x.shape[0],), x.device, generator)
    order = permutations.to(x.device)[labels]                       # (B, 9): the tile shown at each position
    return grid_patches(x, order, patch=patch, gap=gap, generator=generator), labels


def replace_with_foreign_tiles(puzzles: Tensor, most: int, *,
                                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Jigsaw++ (Noroozi, Vinjimoor, Favaro & Pirsiavash 2018, "Boosting Self-Supervised Learning via
    Knowledge Transfer", section 4): in each puzzle ``(B, 9, C, p, p)`` a random number of tiles, 0 to
    ``most`` (uniform), at random positions, replaced by tiles of another image of the batch, so the
    puzzle can only be solved by telling which tiles belong together. The other image is one batch
    shift away (one shift per call, from 1 to B - 1, so never the image itself); a replaced position
    takes whatever tile that image shows there, itself shuffled. The permutation labels are unchanged.

    Returns the puzzles and the ``(B, 9)`` bool mask of replaced positions.

    Examples:
        >>> tiles = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 9, 1, 2, 2)
        >>> out, mask = replace_with_foreign_tiles(tiles, 2, generator=torch.Generator().manual_seed(0))
        >>> bool((mask.sum(1) <= 2).all()), bool((out[mask] != tiles[mask]).all())
        (True, True)
    """
    if puzzles.ndim != 5 or puzzles.shape[1] != 9:
        raise ValueError(f"puzzles must have shape (B, 9, C, p, p), got {tuple(puzzles.shape)}")
    if not 0 <= most <= 9:
        raise ValueError(f"most must be between 0 and 9 tiles, got {most}")
    batch = puzzles.shape[0]
    if most == 0 or batch < 2:
        return puzzles, torch.zeros(batch, 9, dtype=torch.bool, device=puzzles.device)
    count = _randint(most + 1, (batch,), puzzles.device, generator)            # tiles to replace, 0..most
    rank = _rand((batch, 9), puzzles.device, generator).argsort(dim=1).argsort(dim=1)
    mask = rank < count[:, None]                                               # ``count`` random positions
    shift = 1 + int(_randint(batch - 1, (1,), puzzles.device, generator))
    other = puzzles.roll(shift, dims=0)
    return torch.where(mask[:, :, None, None, None], other, puzzles), mask


def resize_patches(patches: Tensor, size: int) -> Tensor:
    """``(..., C, p, p)`` patches resized to ``size`` (bilinear, antialiased when shrinking), as
    float; the identity when they already have that size."""
    if patches.shape[-1] == size and patches.shape[-2] == size:
        return patches
    lead = patches.shape[:-3]
    flat = at_least_float32(patches.reshape(-1, *patches.shape[-3:]))
    resized = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=size < patches.shape[-1])
    return resized.reshape(*lead, *resized.shape[-3:])


def standardise_tiles(tiles: Tensor) -> Tensor:
    """Each tile ``(..., C, s, s)`` normalised by its own per-channel mean and (unbiased) standard
    deviation, a standard deviation of 0 taken as 1: the jigsaw reference loader's defence against
    solving puzzles by low-level statistics (bbrattoli/JigsawPuzzlePytorch ``JigsawImageLoader.py``:
    "Normalize the patches independently to avoid low level features shortcut").

    Examples:
        >>> t = standardise_tiles(torch.rand(2, 9, 3, 8, 8))
        >>> bool(t.mean(dim=(-2, -1)).abs().max() < 1e-5)
        True
    """
    flat = at_least_float32(tiles).flatten(-2)
    mean, std = flat.mean(dim=-1, keepdim=True), flat.std(dim=-1, keepdim=True)
    std = torch.where(std == 0, torch.ones_like(std), std)
    return ((flat - mean) / std).view(tiles.shape)


def standardise_patches(patches: Tensor) -> Tensor:
    """Each patch ``(..., C, s, s)`` with each channel's mean removed, then divided by its root mean
    square over channels and pixels (0 taken as 1): the relative-location reference's per-patch
    normalisation (cdoersch/deepcontext ``train.py``, ``prep_image``: "Normalize the mean and variance
    so that gradients are a less useful cue"). One scale per patch, not per channel, so the channels'
    relative contrast is kept; for one channel it is the patch standardised by its population standard
    deviation.

    Examples:
        >>> p = standardise_patches(torch.rand(4, 3, 8, 8))
        >>> bool(p.pow(2).mean(dim=(-3, -2, -1)).sub(1).abs().max() < 1e-5)
        True
    """
    flat = at_least_float32(patches).flatten(-2)
    centred = flat - flat.mean(dim=-1, keepdim=True)
    rms = centred.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    rms = torch.where(rms == 0, torch.ones_like(rms), rms)
    return (centred / rms).view(patches.shape)


def jitter_tile_colours(tiles: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Each channel of each tile ``(..., C, s, s)`` (values in [0, 1]) shifted by ``k / 255``, ``k``
    uniform in {-2, -1, 0, 1}, then clipped to [0, 1]: the reference loader's ``rgb_jittering``
    against chromatic aberration (per tile and channel, in 8-bit levels)."""
    shifts = _randint(4, (*tiles.shape[:-2], 1, 1), tiles.device, generator).to(tiles.dtype) - 2
    return (tiles + shifts / 255).clamp(0, 1)


__all__ = ["NEIGHBOURS", "grid_geometry", "grid_patches", "hamming_permutations", "jigsaw", "jitter_tile_colours",
           "relative_patches", "replace_with_foreign_tiles", "resize_patches", "rotations", "standardise_patches",
           "standardise_tiles"]
