"""CIFAR-10 and CIFAR-100 in their python-pickle release, extracted or still in the tar.gz.

Where the files are looked for, in order: ``root`` when given, else the cache
``$SELFSUP_DATA/cifar10`` (or ``cifar100``), else, with ``download=True``,
https://www.cs.toronto.edu/~kriz/ (MD5-checked, kept as the tar.gz, read
without extracting). In each folder any of these layouts is accepted:
``<folder>/cifar-10-batches-py/``, ``<folder>/cifar-10-python.tar.gz``, or
the batch files directly in ``<folder>`` (likewise ``cifar-100-python``).

Each batch is a pickled dict whose ``data`` is uint8 ``(N, 3072)``: per row
the 1024 red values, then green, then blue, each plane 32x32 row-major.
Pickles are read with an unpickler that only admits numpy arrays, so a
tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import DataError

from . import download as remote
from .dataset import ImageDataset

_MIRROR = "https://www.cs.toronto.edu/~kriz/"
# numpy pickles an array as a call to its reconstruct function, wherever that lives in this numpy version.
_RECONSTRUCT = np.ndarray(0).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): codecs.encode,
}


@dataclass(frozen=True)
class CifarSource:
    """One CIFAR release: its names, files, label key and how its classes are found."""

    name: str
    cache: str
    folder: str
    archive: str
    md5: str
    batches: dict[str, tuple[str, ...]]
    label_key: str
    classes: tuple[str, ...] | None  # None: read from the ``meta`` file under ``label_key``'s names


CIFAR10 = CifarSource(
    name="cifar10",
    cache="cifar10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    batches={"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)},
    label_key="labels",
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
)
CIFAR100 = CifarSource(
    name="cifar100",
    cache="cifar100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    batches={"train": ("train",), "test": ("test",)},
    label_key="fine_labels",
    classes=None,
)
# The 20 superclasses of CIFAR-100 as labels instead of the 100 fine classes.
CIFAR100_COARSE = CifarSource(**{**CIFAR100.__dict__, "name": "cifar100_coarse", "label_key": "coarse_labels"})


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR batch never does") from None


def _unpickle(data: bytes, where: str) -> dict[str, object]:
    try:
        content = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # a corrupt pickle can raise nearly anything
        raise DataError(f"{where}: not a CIFAR python batch ({type(err).__name__}: {err})") from err
    if not isinstance(content, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(content).__name__}")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()}


Reader = Callable[[list[str]], dict[str, bytes]]


def _reader(folder: Path, source: CifarSource) -> tuple[Reader, str] | None:
    """A function reading the named members, and where they are, for the first layout ``folder`` has."""
    for candidate in (folder / source.folder, folder):
        if (candidate / source.batches["test"][0]).is_file():
            return (lambda members, base=candidate: {m: _read_file(base / m) for m in members}), str(candidate)
    archive = folder / source.archive
    if archive.is_file():
        return (lambda members: _read_archive(archive, source.folder, members)), str(archive)
    return None


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the CIFAR folder is incomplete")
    return path.read_bytes()


def _read_archive(archive: Path, folder: str, members: list[str]) -> dict[str, bytes]:
    # One pass: a gzip stream cannot seek, so member-by-member reads would decompress it again each time.
    wanted = {f"{folder}/{member}": member for member in members}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                if info.name in wanted and (stream := tar.extractfile(info)) is not None:
                    found[wanted[info.name]] = stream.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: corrupt or truncated archive ({err}); delete it and fetch it again") from err
    missing = [name for name, member in wanted.items() if member not in found]
    if missing:
        raise FileNotFoundError(f"{archive} lacks {', '.join(missing)}; is it the right archive?")
    return found


def _locate(source: CifarSource, root: str | Path | None, download: bool, progress: bool) -> tuple[Reader, str]:
    expected = f"{source.folder}/, {source.archive}, or the batch files themselves"
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{source.name}: root {folder} is not a folder; expected one holding {expected}")
        found = _reader(folder, source)
        if found is None:
            raise FileNotFoundError(f"{source.name}: {folder} holds none of {expected}")
        return found
    cache = remote.cache_dir(source.cache)
    found = _reader(cache, source)
    if found is None and download:
        remote.download(_MIRROR + source.archive, cache / source.archive, ("md5", source.md5, False), progress=progress)
        found = _reader(cache, source)
    if found is None:
        raise FileNotFoundError(
            f"{source.name}: {cache} holds none of {expected}; pass download=True or root=<folder with them>"
        )
    return found


def load_cifar(
    source: CifarSource, split: str, root: str | Path | None, download: bool, progress: bool
) -> ImageDataset:
    """Images ``(N, 3, 32, 32)`` and labels of a CIFAR release (see the module docstring for where from)."""
    read, where = _locate(source, root, download, progress)
    members = list(source.batches[split])
    files = read(members if source.classes is not None else [*members, "meta"])
    images, labels = [], []
    for member in members:
        batch = _unpickle(files[member], f"{where}: {member}")
        data, targets = batch.get("data"), batch.get(source.label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(
                f"{where}: {member}: 'data' must be uint8 (N, 3072), got "
                f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
            )
        if targets is None or len(targets) != len(data):
            count = "no" if targets is None else len(targets)
            raise DataError(f"{where}: {member}: {count} '{source.label_key}' for {len(data)} images")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(targets, dtype=np.int64))
    classes = source.classes
    if classes is None:
        meta = _unpickle(files["meta"], f"{where}: meta")
        names_key = source.label_key.replace("labels", "label_names")
        if names_key not in meta:
            raise DataError(f"{where}: meta has no {names_key!r}")
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])
    return ImageDataset(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        list(classes),
        source.name,
    )
