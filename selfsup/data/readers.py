"""Readers of streamed images: what an index of a streamed source means, one image read as uint8 ``(C, S, S)``.

- :class:`FileReader`: image files, decoded with PIL as :mod:`selfsup.data.folder` decodes them
  (first frame, EXIF orientation, 8 bits, channels, centred square resized), except that JPEGs
  are decoded straight at a reduced scale where libjpeg can (``Image.draft``: 1/2, 1/4 or 1/8 of
  the full size, never below ``S``), which is most of the speed on full-size photos.
- :class:`PackedReader`: the uint8 shards ``selfsup pack`` writes (see :mod:`selfsup.data.pack`):
  no decoding, one ``pread`` per image.
- :class:`SubsetReader`: positions of another reader.

:func:`read_batch` reads a batch of them, an unreadable file's slot taking the next readable one
(:mod:`selfsup.data.stream` says why that keeps every process in agreement).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from selfsup.errors import DataError

from .folder import _machine_fault, decode

STORE_RATIO = 1.15
"""Stored short side over the training crop (FFCV's ImageNet files: 1.15 x)."""


def stored_side(size: int, ratio: float = STORE_RATIO) -> int:
    """The side images are stored / streamed at for training crops of ``size``."""
    return max(size, round(size * ratio))


class FileReader:
    """Decode image files to uint8 ``(C, side, side)`` (picklable: DataLoader workers get a copy)."""

    def __init__(self, files: Sequence[Path], side: int, channels: int) -> None:
        self.files = [str(f) for f in files]
        self.side, self.channels = side, channels

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return self.files[index]

    def read(self, index: int) -> np.ndarray:
        return decode(Path(self.files[index]), self.side, self.channels, draft=True)


class PackedReader:
    """Rows of packed uint8 shards, read with ``os.pread`` (no decoding, no memory map held).

    Reading with ``pread`` rather than through ``np.memmap`` keeps a process's resident memory
    flat over an epoch (a map's touched pages count as its own); the kernel's page cache still
    shares the bytes between all processes reading the same shards. Each read opens and closes its
    shard (microseconds against the 36 KB it reads), so a pack of thousands of shards never holds
    more descriptors than the threads reading it, and forked workers share none.
    """

    def __init__(self, pack) -> None:  # pack: selfsup.data.pack.Pack
        self.paths = [str(pack.root / shard["file"]) for shard in pack.shards]
        self.offsets = [shard["offset"] for shard in pack.shards]
        self.starts = np.cumsum([0] + [shard["count"] for shard in pack.shards])
        self.names = pack.names
        self.side, self.channels = pack.side, pack.channels
        self.row = pack.channels * pack.side * pack.side

    def __len__(self) -> int:
        return int(self.starts[-1])

    def name(self, index: int) -> str:
        return self.names[index]

    def read(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        offset = self.offsets[shard] + (index - int(self.starts[shard])) * self.row
        try:
            fd = os.open(self.paths[shard], os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                data = os.pread(fd, self.row, offset)
            finally:
                os.close(fd)
        except OSError as error:  # a pack is not a folder of files to skip: stop, naming the shard
            raise DataError(f"packed: cannot read {self.paths[shard]}: {error}") from None
        if len(data) != self.row:
            raise DataError(f"packed: {self.paths[shard]} ends before image {index} ({len(data)} of {self.row} "
                            f"bytes); the shard does not match its index.json, run selfsup pack again")
        return np.frombuffer(data, dtype=np.uint8).reshape(self.channels, self.side, self.side)


class SubsetReader:
    """Positions ``indices`` of another reader (``data.max_samples`` of a streamed folder)."""

    def __init__(self, reader, indices: Sequence[int]) -> None:
        self.reader, self.indices = reader, list(indices)
        self.side, self.channels = reader.side, reader.channels

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, index: int) -> str:
        return self.reader.name(self.indices[index])

    def read(self, index: int) -> np.ndarray:
        return self.reader.read(self.indices[index])


def read_batch(reader, indices: Sequence[int], out: np.ndarray | None = None
               ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Images ``indices`` of ``reader`` as uint8 ``(B, C, S, S)``, the index each was read from, and the
    ``(index, reason)`` of each unreadable file met; an unreadable file's slot takes the next readable
    one (wrapping around), and its read-from index is that one's (what the slot's label and name must
    describe).

    Files found unreadable are remembered in this process (``reader._bad``) and not decoded again;
    the substitute is the same either way. Out of memory or of file descriptors is raised, not
    skipped: it would make the substitutes depend on the moment.
    """
    n = len(reader)
    if out is None:
        out = np.empty((len(indices), reader.channels, reader.side, reader.side), dtype=np.uint8)
    bad: set[int] = reader.__dict__.setdefault("_bad", set())
    sources: list[int] = []
    failures: list[tuple[int, str]] = []
    for slot, index in enumerate(indices):
        for attempt in range(n):
            candidate = (int(index) + attempt) % n
            if candidate in bad:
                continue
            try:
                out[slot] = reader.read(candidate)
                sources.append(candidate)
                break
            except DataError:
                raise  # a pack that does not match its index is the user's to fix, not a file to skip
            except Exception as err:  # PIL raises many types on corrupt data; each one means "skip this file"
                if _machine_fault(err):
                    raise
                bad.add(candidate)
                failures.append((candidate, f"{type(err).__name__}: {err}"))
        else:
            raise DataError(f"none of the {n} images could be read (from {reader.name(int(index))} on); "
                            "see the warnings for why")
    return out, sources, failures
