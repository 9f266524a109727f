"""MNIST and Fashion-MNIST: IDX files, gzipped or not, found locally or fetched with a checksum.

Where the files are looked for, in order:

1. ``root``, when given: a folder holding the four IDX files directly
   (``train-images-idx3-ubyte[.gz]`` and so on); a missing file is an error.
2. The cache ``$SELFSUP_DATA/<name>`` (default ``~/.cache/selfsup/<name>``).
3. With ``download=True``, for Fashion-MNIST, Debian's ``dataset-fashion-mnist``
   package (``apt-get download`` + ``dpkg -x``, no root needed) where the
   archive is reachable; then the upstream mirror. Fashion-MNIST's gz files
   differ between these sources, so the SHA-256 of the decompressed contents
   is checked; MNIST's gz files are checked against torchvision's MD5s.
"""

from __future__ import annotations

import gzip
import tempfile
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import DataError

from . import download as remote
from .dataset import ImageDataset

# IDX type codes (the third byte of the magic number) and what they hold.
_IDX_TYPES = {
    0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"
}


@dataclass(frozen=True)
class IdxSource:
    """Where one IDX dataset comes from and how its files are checked."""

    name: str
    mirror: str
    # file name without .gz -> (hash algorithm, hex digest, digest of the decompressed contents?)
    checks: dict[str, tuple[str, str, bool]]
    classes: tuple[str, ...]
    apt_package: str | None = None
    apt_folder: str | None = None


FASHION_MNIST = IdxSource(
    name="fashion_mnist",
    mirror="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    checks={
        "train-images-idx3-ubyte": ("sha256", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", True),
        "train-labels-idx1-ubyte": ("sha256", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", True),
        "t10k-images-idx3-ubyte": ("sha256", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", True),
        "t10k-labels-idx1-ubyte": ("sha256", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", True),
    },
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    apt_package="dataset-fashion-mnist",
    apt_folder="usr/share/datasets/fashion-mnist",
)

MNIST = IdxSource(
    name="mnist",
    mirror="https://ossci-datasets.s3.amazonaws.com/mnist/",
    checks={
        "train-images-idx3-ubyte": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873", False),
        "train-labels-idx1-ubyte": ("md5", "d53e105ee54ea40749a09fcbcd1e9432", False),
        "t10k-images-idx3-ubyte": ("md5", "9fb629c4189551a2d022fa330f9573f3", False),
        "t10k-labels-idx1-ubyte": ("md5", "ec29112dd5afa0611ce80d1b7f02629c", False),
    },
    classes=tuple(str(digit) for digit in range(10)),
)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzipped or not) with ``ndim`` dimensions.

    The format (LeCun's MNIST page): two zero bytes, a type code (0x08 for
    unsigned bytes), the number of dimensions, each dimension as a big-endian
    int32, then the values in row-major order. A malformed file is a
    ValueError naming the file and what is wrong.

    Examples:
        >>> import gzip, struct, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte.gz"
        >>> _ = path.write_bytes(gzip.compress(struct.pack(">BBBBi", 0, 0, 8, 1, 3) + bytes([7, 2, 1])))
        >>> read_idx(path, ndim=1)
        array([7, 2, 1], dtype=uint8)
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt or truncated gzip data ({err}); delete it and fetch it again") from err
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header; the file is truncated")
    if raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: bad magic number 0x{raw[:4].hex()}; not an IDX file (expected 0x0000080{ndim})")
    if raw[2] != 0x08:
        raise DataError(f"{path}: holds {_IDX_TYPES[raw[2]]} values; images and labels are unsigned bytes (0x08)")
    if raw[3] != ndim:
        raise DataError(f"{path}: has {raw[3]} dimensions, expected {ndim} (magic 0x0000080{ndim})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: the header is truncated ({len(raw)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    payload = len(raw) - header
    if payload != prod(shape):
        problem = "truncated" if payload < prod(shape) else "followed by extra bytes"
        raise DataError(
            f"{path}: the header promises shape {shape} = {prod(shape)} bytes but {payload} follow; "
            f"the file is {problem}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _fetch(source: IdxSource, cache: Path, names: list[str], progress: bool) -> None:
    if source.apt_package is not None:
        with tempfile.TemporaryDirectory(prefix="selfsup-apt-") as tmp:
            tree = remote.apt_fetch(source.apt_package, Path(tmp))
            if tree is not None:
                for name, check in source.checks.items():
                    packaged = _find(tree / source.apt_folder, name)
                    if packaged is not None and _find(cache, name) is None:
                        remote.install(packaged, cache / packaged.name, check)
    for name in names:
        if _find(cache, name) is None:
            remote.download(f"{source.mirror}{name}.gz", cache / f"{name}.gz", source.checks[name], progress=progress)


def _files(source: IdxSource, split: str, root: str | Path | None, download: bool, progress: bool) -> list[Path]:
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{source.name}: root {folder} is not a folder; expected one holding {names[0]}[.gz] and the like"
            )
        found = [_find(folder, name) for name in names]
        for name, path in zip(names, found):
            if path is None:
                raise FileNotFoundError(
                    f"{source.name}: {folder} has neither {name}.gz nor {name}; put the IDX files there"
                )
        return found
    cache = remote.cache_dir(source.name)
    if download and any(_find(cache, name) is None for name in names):
        _fetch(source, cache, names, progress)
    found = [_find(cache, name) for name in names]
    missing = [name for name, path in zip(names, found) if path is None]
    if missing:
        raise FileNotFoundError(
            f"{source.name}: {cache} lacks {', '.join(missing)} (.gz or not); pass download=True, "
            f"or root=<folder with the files>, or set ${remote.CACHE_ENV} to a folder holding {source.name}/"
        )
    return found


def load_idx(source: IdxSource, split: str, root: str | Path | None, download: bool, progress: bool) -> ImageDataset:
    """Images ``(N, 1, 28, 28)`` and labels of MNIST-style ``source`` (see the module docstring for where from)."""
    images_path, labels_path = _files(source, split, root, download, progress)
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if labels.size and labels.max() >= len(source.classes):
        raise DataError(f"{labels_path}: label {labels.max()} is out of range for {len(source.classes)} classes")
    return ImageDataset(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels).long(),
        list(source.classes),
        source.name,
    )
