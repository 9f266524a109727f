"""Image pairs with given correspondences (Dense Object Nets' data when matches come from elsewhere:
3-D reconstruction, tracking, annotation), read from a JSON-lines file.

One line per pair::

    {"a": "scene1/000.png", "b": "scene1/007.png", "matches": [[xa, ya, xb, yb], ...]}

Paths are relative to ``data.root`` (or the file's folder). A match is a pixel of image a and the
same point in image b, as (column x, row y) positions in the original images as displayed (their EXIF
orientation applied), pixel (0, 0) the top-left one (fractions allowed). Images are read as a folder's
are — upright, the centred square resized to ``data.size`` — and the matches moved with them; a match
outside the square is dropped, and a pair left without matches is reported and skipped, as is a line
that cannot be read: bad JSON, matches that are not rows of four numbers, an image that cannot be
decoded (file and line named).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from selfsup.data.dataset import ImageDataset
from selfsup.data.folder import _to_8bit, open_image, square
from selfsup.data.sources import ImageBatch, InMemoryImages
from selfsup.errors import DataError


@dataclass
class ImagePairs(ImageDataset):
    """Pairs of images with their correspondences; ``images`` are the a images (what the global
    evaluations read), ``images_b`` their partners.

    Attributes (besides ``images``, ``name``):
        images_b: uint8 ``(N, C, S, S)``.
        matches: float ``(N, M, 4)`` ``(xa, ya, xb, yb)`` in continuous pixel coordinates of the
            resized images (the top-left pixel's centre at (0.5, 0.5), as :mod:`selfsup.augment.warps`),
            zero-padded to the pair with most matches.
        counts: ``(N,)`` int64 matches of each pair.
        skipped: lines or pairs left out and why.
    """

    images_b: Tensor = None  # type: ignore[assignment]  (required: dataclass fields after defaults)
    matches: Tensor = None  # type: ignore[assignment]
    counts: Tensor = None  # type: ignore[assignment]
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.images.shape[0]
        if self.images_b is None or self.images_b.shape != self.images.shape:
            raise DataError(f"ImagePairs {self.name!r}: images_b must have the a images' shape {tuple(self.images.shape)}")
        if self.matches is None or self.matches.ndim != 3 or self.matches.shape[::2] != (n, 4) or \
                self.counts is None or self.counts.shape != (n,):
            raise DataError(f"ImagePairs {self.name!r}: matches must be (N, M, 4) and counts (N,) for N = {n}")


def _read(path: Path, size: int, channels: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The resized square and how it maps points: (offset x, offset y, scale)."""
    with open_image(path) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # the pixels a viewer shows, where the matches were placed
        image = _to_8bit(image)
    width, height = image.size
    side = min(width, height)
    return square(image, size, channels), ((width - side) / 2, (height - side) / 2, size / side)


def read_pairs(file: str | Path, *, root: str | Path | None = None, size: int = 64,
               channels: int = 3) -> ImagePairs:
    """The pairs of a correspondences file (format in the module docstring)."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise DataError(f"correspondences file {file} does not exist")
    base = Path(root).expanduser() if root is not None else file.parent
    images_a, images_b, matches, skipped = [], [], [], {}
    # "\n" only: str.splitlines() also breaks at U+2028, U+0085 ..., which JSON strings may hold raw.
    for number, line in enumerate(file.read_text().split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{file}, line {number}"
        try:
            row = json.loads(line)
            points = np.asarray(row["matches"], dtype=np.float64)
            if points.ndim != 2 or points.shape[1] != 4:  # reshaping would regroup other widths into made-up matches
                raise ValueError(f"matches must be rows of 4 numbers [xa, ya, xb, yb], got shape {points.shape}")
            a, (ax, ay, a_scale) = _read(base / row["a"], size, channels)
            b, (bx, by, b_scale) = _read(base / row["b"], size, channels)
        # Bad JSON, keys, numbers or images (PIL raises SyntaxError for some corrupt files, and
        # DecompressionBombError for one over Image.MAX_IMAGE_PIXELS).
        except (ValueError, KeyError, TypeError, OSError, SyntaxError, Image.DecompressionBombError) as error:
            skipped[where] = f"{type(error).__name__}: {error}"
            continue
        moved = np.stack([(points[:, 0] + 0.5 - ax) * a_scale, (points[:, 1] + 0.5 - ay) * a_scale,
                          (points[:, 2] + 0.5 - bx) * b_scale, (points[:, 3] + 0.5 - by) * b_scale], axis=1)
        inside = ((moved >= 0.5) & (moved <= size - 0.5)).all(axis=1)
        if not inside.any():
            skipped[where] = "no match inside both images' centred squares"
            continue
        images_a.append(a)
        images_b.append(b)
        matches.append(moved[inside])
    if not images_a:
        raise DataError(f"{file}: no readable pair with matches"
                        + (f" ({len(skipped)} skipped, e.g. {next(iter(skipped.items()))})" if skipped else ""))
    most = max(len(m) for m in matches)
    padded = np.zeros((len(matches), most, 4), np.float32)
    for i, m in enumerate(matches):
        padded[i, :len(m)] = m
    return ImagePairs(torch.from_numpy(np.stack(images_a)), None, None, f"pairs_{file.stem}",
                      images_b=torch.from_numpy(np.stack(images_b)), matches=torch.from_numpy(padded),
                      counts=torch.tensor([len(m) for m in matches]), skipped=skipped)


class PairSource(InMemoryImages):
    """:class:`ImagePairs` as a data source: batch ``(epoch, position, rank)`` is this rank's a images
    (in the order of :class:`selfsup.data.InMemoryImages`) with ``extra`` ``b``, ``matches`` and
    ``counts`` (kind ``image_pairs``)."""

    kind = "image_pairs"

    def __init__(self, pairs: ImagePairs, batch_size: int, world_size: int = 1, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(pairs, batch_size, world_size, seed, device)
        self.skipped = pairs.skipped
        self.images_b = pairs.images_b.to(self.device)
        self.matches, self.counts = pairs.matches.to(self.device), pairs.counts.to(self.device)

    def batch(self, epoch: int, position: int, rank: int) -> ImageBatch:
        found = super().batch(epoch, position, rank)
        index = found.index
        found.extra = {"b": self.images_b[index], "matches": self.matches[index], "counts": self.counts[index]}
        return found

    def close(self) -> None:
        """Nothing to release (the streamed sources' interface)."""


__all__ = ["ImagePairs", "PairSource", "read_pairs"]
