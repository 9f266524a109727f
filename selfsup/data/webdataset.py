"""webdataset tar shards, read by index through the streamed-image path.

``data.name=webdataset data.root=shards/train-{000..099}.tar`` (any fsspec URL: a local path,
``https://...``, ``s3://...`` with its fsspec package). A sample is the tar members that share a
key (the member's path up to the first dot of its file name, webdataset's convention): an image
(``.jpg``, ``.jpeg``, ``.png``, ``.webp``) and, optionally, its class as ``.cls`` (an integer) or
``.json`` (``{"label": 3}``; a ``.json`` without ``"label"``, such as img2dataset's ``{"url": ..,
"caption": ..}``, leaves the sample unlabelled); every sample has a class or none does. ``{split}``
in the pattern names the split (``shards/{split}-{00..09}.tar`` gives the test split too);
otherwise the shards are the training split.

Each shard is indexed once (the tar headers: where every member's bytes are) and a sample is then
one ranged read and a decode, so the batch of ``(epoch, position, rank)`` is read directly, as
from a folder or a pack: the same exact resume, unreadable-sample reports and DDP sharding as the
other streamed sources (:mod:`selfsup.data.stream`), with no shuffle buffer. The webdataset
library's own loader streams each shard front to back, which cannot give a resumable, rank-split
permutation; its tar layout is what is read here.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from tqdm.auto import tqdm

from selfsup.errors import DataError

from .folder import decode

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def expand(pattern: str) -> list[str]:
    """Brace expansion as webdataset writes shard lists: ``{000..099}`` (zero-padded ranges) and
    ``{a,b}`` (alternatives), any number of them.

    Examples:
        >>> expand("s-{0..2}.tar")
        ['s-0.tar', 's-1.tar', 's-2.tar']
        >>> expand("{train,test}-{08..10}.tar")[:2]
        ['train-08.tar', 'train-09.tar']
    """
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    ranged = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if ranged:
        first, last = ranged.groups()
        width = len(first) if first.startswith("0") else 0
        options = [str(k).zfill(width) for k in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in expand(head + option + tail)]


def shard_urls(root: str, split: str) -> list[str]:
    """The shards of ``split``: ``{split}`` in the pattern filled in, or the pattern itself for the
    training split; a local folder means its ``<split>-*.tar`` files."""
    path = Path(root).expanduser()
    if "://" not in root and path.is_dir():
        urls = sorted(str(p) for p in path.glob(f"{split}-*.tar"))
        if not urls:
            raise FileNotFoundError(f"webdataset: no {split}-*.tar shards in {path}")
        return urls
    if "{split}" in root:
        return expand(root.replace("{split}", split))
    if split != "train":
        raise FileNotFoundError(f"webdataset: {root} names training shards only (write {{split}} in the pattern, "
                                f"e.g. shards/{{split}}-{{000..009}}.tar, for a test split)")
    return expand(root)


@dataclass(frozen=True)
class Sample:
    shard: int
    key: str
    offset: int
    size: int
    label: int | None


MAX_CLASSES = 1_000_000
"""The most classes a labelled webdataset may have (ImageNet-21k has 21,841): a larger label is refused
rather than listed as that many class names."""


def _label(data: bytes, extension: str, where: str) -> int | None:
    """The class a ``.cls`` or ``.json`` member gives; None for a ``.json`` object without ``"label"``
    (img2dataset's and LAION's metadata: ``url``, ``caption``, ... describe a sample, not its class)."""
    try:
        if extension == "cls":
            return int(data.decode().strip())
        value = json.loads(data)
        if isinstance(value, dict):
            if "label" not in value:
                return None
            value = value["label"]
        if isinstance(value, str):
            value = int(value.strip())  # "4": a number written as text, as a .cls member holds it
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ValueError("not a whole number")  # 2.7 or true is no class: int() took 2 and 1
        return int(value)
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError) as error:
        raise DataError(f"webdataset: {where}: the label must be an integer (.cls) or {{\"label\": N}} (.json), "
                        f"got {data[:40]!r} ({error})") from None


def index_shard(url: str, shard: int) -> tuple[list[Sample], list[str]]:
    """Every sample of one shard, in the shard's order, and the keys without an image."""
    try:
        with fsspec.open(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            groups: dict[str, dict[str, tuple[int, int]]] = {}
            labels: dict[str, int] = {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, dot, extension = name.partition(".")
                if not dot:
                    continue
                key = f"{folder}/{stem}" if folder else stem
                extension = extension.lower()
                groups.setdefault(key, {})[extension] = (member.offset_data, member.size)
                if extension in ("cls", "json"):
                    label = _label(tar.extractfile(member).read(), extension, f"{url}:{member.name}")
                    if label is not None:
                        labels[key] = label
    except (OSError, tarfile.TarError) as error:
        raise DataError(f"webdataset: cannot read shard {url}: {error}") from None
    samples, missing = [], []
    for key, members in groups.items():
        image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
        if image is None:
            missing.append(key)
            continue
        samples.append(Sample(shard, key, image[0], image[1], labels.get(key)))
    return samples, missing


class TarReader:
    """Images of webdataset shards by index.

    A sample is one positional read of its bytes: ``os.pread`` on a local shard, a ranged
    ``cat_file`` (one request) on any other fsspec filesystem. Neither moves a shared file position,
    so the threads of :class:`selfsup.data.stream.ImageStream` read side by side (a seek then a read
    on one shared handle let another thread's seek land in between: a good sample read as garbage
    and reported unreadable). No shard stays open between reads: a local read opens and closes its
    shard (microseconds against a decode, as :class:`selfsup.data.readers.PackedReader`), so more
    shards than the open-file limit (``ulimit -n``) read as well as a few. Picklable: each process
    finds the shards' filesystems anew.
    """

    def __init__(self, urls: list[str], samples: list[Sample], side: int, channels: int) -> None:
        self.urls, self.samples, self.side, self.channels = urls, samples, side, channels
        self._where: dict[int, tuple[fsspec.AbstractFileSystem, str]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_where": {}}  # filesystems (their sessions) stay with the process that made them

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        sample = self.samples[index]
        return f"{self.urls[sample.shard]}:{sample.key}"

    def _bytes(self, sample: Sample) -> bytes:
        where = self._where.get(sample.shard)
        if where is None:
            where = self._where[sample.shard] = fsspec.core.url_to_fs(self.urls[sample.shard])
        filesystem, path = where
        if isinstance(filesystem, LocalFileSystem):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                return os.pread(fd, sample.size, sample.offset)
            finally:
                os.close(fd)
        return filesystem.cat_file(path, start=sample.offset, end=sample.offset + sample.size)

    def read(self, index: int) -> np.ndarray:
        sample = self.samples[index]
        data = self._bytes(sample)
        if len(data) != sample.size:
            raise OSError(f"{self.name(index)}: read {len(data)} of the sample's {sample.size} bytes (the shard ends "
                          f"inside it, or its server ignores byte ranges)")
        return decode(io.BytesIO(data), self.side, self.channels, draft=True)


def webdataset_split(root: str, split: str, size: int, channels: int, *, ratio: float, workers: int = 2,
                     progress: bool = False):
    """A split of webdataset shards as a :class:`selfsup.data.stream.StreamedDataset`."""
    from .stream import StreamedDataset, stored_side

    urls = shard_urls(root, split)
    samples, missing = [], []
    for shard, url in enumerate(tqdm(urls, desc=f"indexing {split} shards", unit="shard", disable=not progress)):
        found, lost = index_shard(url, shard)
        samples += found
        missing += [f"{url}:{key}" for key in lost]
    if missing:
        import warnings

        from .folder import SkippedImageWarning

        warnings.warn(f"webdataset: {len(missing)} sample(s) without an image ({', '.join(missing[:3])}"
                      f"{' ...' if len(missing) > 3 else ''}) left out", SkippedImageWarning, stacklevel=2)
    if not samples:
        raise DataError(f"webdataset: no sample with an image ({', '.join(IMAGE_EXTENSIONS)}) in {root} ({split})")
    labelled = [s.label for s in samples if s.label is not None]
    labels = classes = None
    if labelled and len(labelled) < len(samples):
        bare = next(s for s in samples if s.label is None)
        named = next(s for s in samples if s.label is not None)
        raise DataError(f"webdataset: {urls[bare.shard]}:{bare.key} has no label (no .cls, no \"label\" in its "
                        f".json) but {urls[named.shard]}:{named.key} has one; label every sample or none "
                        f"({len(samples) - len(labelled)} of {len(samples)} in {root} ({split}) have none)")
    if labelled:
        if min(labelled) < 0:
            raise DataError(f"webdataset: {root}: labels must be >= 0, found {min(labelled)}")
        if max(labelled) >= MAX_CLASSES:  # the classes are 0 .. the largest label: one class name each
            worst = max(samples, key=lambda s: -1 if s.label is None else s.label)
            raise DataError(f"webdataset: {urls[worst.shard]}:{worst.key} has label {worst.label}; labels are class "
                            f"indices 0 .. {MAX_CLASSES - 1:,} at most")
        labels = torch.tensor(labelled, dtype=torch.int64)
        classes = [str(k) for k in range(max(labelled) + 1)]
    reader = TarReader(urls, samples, stored_side(size, ratio), channels)
    return StreamedDataset(reader, labels, classes, "webdataset", size, workers)


__all__ = ["TarReader", "expand", "index_shard", "shard_urls", "webdataset_split"]
