"""A folder of the user's own images, decoded once into a uint8 tensor.

Layout:

- Files are found at any depth; only the extensions in ``IMAGE_EXTENSIONS``
  count (case-insensitive), other files are ignored, and so are hidden files
  and folders (names starting with ``.``, e.g. macOS ``._x.jpg``). Symbolic
  links to folders are followed (as torchvision's ``ImageFolder`` does), each real folder read once, so
  a link that loops back is not walked again.
- If ``<root>/train`` exists beside ``<root>/test`` (or, without ``test``, ImageNet's ``<root>/val``
  or ``<root>/validation``), ``split`` picks one of them; otherwise ``split="train"`` is the whole of
  ``root`` and ``split="test"`` is an error (with a warning where first-level folders named like splits
  would become classes).
- If every image of the split lies inside a first-level subfolder, the
  subfolder names (sorted, and shared by train and test) are the classes;
  otherwise labels are ``None``.

Each image is decoded with PIL (first frame, EXIF orientation applied),
brought to 8 bits (16-bit gray is scaled by 255/65535; float gray, TIFF's
mode ``F``, must lie in [0, 1] and is scaled by 255; 32-bit integer gray,
which has no range to scale by, is refused; transparent pixels are
composited over black), converted to ``channels`` (RGB -> gray is ITU-R
601-2 luma), then its centred square of side ``min(width, height)`` is
resized to ``size x size`` (bilinear, antialiased): the shorter side goes to
``size`` and the longer one is center-cropped. Unreadable or refused files
are reported one warning each (path and reason), skipped, and counted at the
end. Running out of memory or file descriptors while decoding is raised, not
taken for an unreadable file.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from selfsup.errors import DataError

from .dataset import ImageDataset

IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".pnm", ".ppm", ".tga", ".tif", ".tiff", ".webp"}
)
_KINDS = ", ".join(sorted(IMAGE_EXTENSIONS))
IMAGE_FORMATS = ("BMP", "GIF", "JPEG", "MPO", "PNG", "PPM", "TGA", "TIFF", "WEBP")
"""The Pillow decoders behind ``IMAGE_EXTENSIONS`` (MPO: cameras' multi-picture JPEGs). Pillow picks a
decoder from a file's content, not its name, and some run programs (EPS hands the file to Ghostscript):
a file is only ever decoded by one of these, whatever it is called."""


def open_image(path) -> Image.Image:
    """``Image.open`` restricted to :data:`IMAGE_FORMATS`: a file of any other kind, whatever its name,
    is refused as unidentified instead of reaching another decoder."""
    Image.init()  # every plugin registered (once), so that each listed format has its decoder
    return Image.open(path, formats=[kind for kind in IMAGE_FORMATS if kind in Image.OPEN])
DEFAULT_SIZE = 64
# Decoding is I/O and C code that releases the GIL; more threads than this rarely help.
_MAX_THREADS = 8
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# Errors that say the machine, not the file, is at fault: never a reason to skip an image.
_FATAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC})


class SkippedImageWarning(UserWarning):
    """An image file in a folder could not be read and was skipped."""


def _image_files(base: Path, progress: bool = False) -> list[Path]:
    files = []
    bar = tqdm(desc=f"scanning {base}", unit=" files", disable=not progress)
    walked = {os.path.realpath(base)}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in walked:  # a link to a folder already walked (or to an ancestor: a loop) is skipped
                walked.add(real)
                kept.append(d)
        dirnames[:] = kept
        found = [Path(dirpath, name) for name in sorted(filenames)
                 if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS]
        files.extend(found)
        bar.update(len(found))
    bar.close()
    return files


def _class_of(path: Path, base: Path) -> str | None:
    parts = path.relative_to(base).parts
    return parts[0] if len(parts) > 1 else None


def _machine_fault(error: BaseException) -> bool:
    """Whether ``error`` is the machine's (out of memory, of file descriptors, of disk space), not
    the file's: such an error is raised, never taken as a reason to skip a file, since which files
    are skipped must not depend on the moment (under DDP every rank must agree on them)."""
    return isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno in _FATAL_ERRNOS)


def _name_bytes(name: str) -> bytes:
    """A file name as bytes for checksums: UTF-8, with the lone surrogates of a name that is not valid
    UTF-8 on disk (Python's surrogate escapes on Linux, unpaired UTF-16 on Windows) passed through,
    so that any name a filesystem holds encodes and a UTF-8 name encodes as ``name.encode()``."""
    return name.encode("utf-8", "surrogatepass")


def _sample_bits(image: Image.Image) -> int:
    """Bits per sample of a mode ``I`` image: a TIFF's BitsPerSample; 16 for the other formats PIL
    opens as ``I`` (16-bit PGM and PPM, whose values PIL scales to 0..65535)."""
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    return max(bits) if isinstance(bits, tuple) and bits else int(bits or 16)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Mode L or RGB, whatever the input mode.

    Integer gray of 16 bits is scaled by 255/65535. A 32-bit integer image has no range to scale by
    (its values may be counts, ids or 16-bit data), and float gray (mode ``F``) is taken as
    intensities in [0, 1], so a float image with values outside [0, 1] (or NaN) could only be
    guessed at: both raise ValueError, which skips the file with a warning naming the reason,
    rather than come out black or saturated.
    """
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not 0 <= low <= high <= 1:  # also NaN
            raise ValueError(f"float image (mode F) with values in [{low:.4g}, {high:.4g}]; float images are read "
                             f"as intensities in [0, 1]: save it as 8- or 16-bit, or scaled to [0, 1]")
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L")
    if image.mode == "I" and _sample_bits(image) > 16:
        raise ValueError(f"{_sample_bits(image)}-bit integer image (mode I) has no range to bring to 8 bits; "
                         f"save it as 8- or 16-bit, or as float in [0, 1]")
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        premultiplied = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return Image.fromarray(premultiplied.astype(np.uint8), "RGB")
    mode = "L" if image.mode in ("L", "1") else "RGB"
    return image if image.mode == mode else image.convert(mode)  # convert() copies even to its own mode


def decode(path: Path, size: int, channels: int, draft: bool = False) -> np.ndarray:
    """One image file -> uint8 ``(channels, size, size)``, as described in the module docstring.

    ``draft``: let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when that still leaves both
    sides at least ``size`` (``Image.draft``; several times faster on photos much larger than
    ``size``, and slightly different pixels from a full decode).
    """
    with open_image(path) as image:
        if draft and image.format == "JPEG":
            image.draft(image.mode, (size, size))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        image = _to_8bit(image)
    return square(image, size, channels)


def square(image: Image.Image, size: int, channels: int,
           resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """An 8-bit L or RGB image's centred square, resized to ``size`` -> uint8 ``(channels, size, size)``
    (``resample=NEAREST`` for label maps, whose values are ids)."""
    if channels == 1 and image.mode == "RGB":
        image = image.convert("L")
    width, height = image.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    image = image.resize((size, size), resample, box=box)
    if channels == 3 and image.mode == "L":
        image = image.convert("RGB")
    pixels = np.asarray(image)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _try_decode(path: Path, size: int, channels: int) -> np.ndarray | str:
    try:
        return decode(path, size, channels)
    except Exception as err:  # PIL's decoders raise many types on corrupt data; each one means "skip this file"
        if _machine_fault(err):
            raise
        return f"{type(err).__name__}: {err}"


_PROCESSES_FROM_CORES = 4
"""Cores from which processes decode faster than threads (``benchmarks/decode.py``)."""


def decode_pool(files: int, processes: bool | None = None) -> Executor:
    """Where to decode ``files`` images: processes, one per core, on machines of
    :data:`_PROCESSES_FROM_CORES` cores or more (PIL holds the GIL for parts of its work, so
    threads stop scaling at a few cores: ``benchmarks/decode.py``), forked so that they start in
    milliseconds and see the parent's modules as they are; threads on smaller machines, where fork
    is not the platform's way (macOS, Windows), or for a handful of files. ``processes`` forces
    the choice (where fork exists)."""
    cores = os.cpu_count() or 1
    fork = sys.platform.startswith("linux")
    if processes is None:
        processes = cores >= _PROCESSES_FROM_CORES and files >= 64
    if processes and fork:
        return ProcessPoolExecutor(max_workers=cores, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(max_workers=min(_MAX_THREADS, cores))


def decode_files(pool: Executor, files: list[Path], size: int, channels: int) -> Iterator[np.ndarray | str]:
    """Decode ``files`` in ``pool`` (:func:`decode_pool`), in order: each file's pixels (:func:`decode`),
    or the reason it could not be read, warned once naming the file."""
    chunk = 1 if isinstance(pool, ThreadPoolExecutor) else max(1, min(64, len(files) // (4 * (os.cpu_count() or 1))))
    decoded = pool.map(_try_decode, files, [size] * len(files), [channels] * len(files), chunksize=chunk)
    for path, result in zip(files, decoded):
        if isinstance(result, str):
            warnings.warn(f"skipping {path}: {result}", SkippedImageWarning, stacklevel=3)
        yield result


TEST_FOLDERS = ("test", "val", "validation")
"""The names a held-out split's folder may have beside ``train/``, in order of preference."""


def split_folders(root: Path) -> dict[str, Path] | None:
    """``{"train": <root>/train, "test": ...}`` where ``root`` is laid out in splits: ``train/`` beside
    ``test/``, or without it ``val/`` or ``validation/`` (ImageNet's layout; a ``val/`` beside ``test/`` is a
    validation split and left out); else None."""
    if not (root / "train").is_dir():
        return None
    held_out = next((root / name for name in TEST_FOLDERS if (root / name).is_dir()), None)
    return None if held_out is None else {"train": root / "train", "test": held_out}


def scan_folder(root: str | Path, split: str, progress: bool = False
                ) -> tuple[list[Path], torch.Tensor | None, list[str] | None, Path]:
    """The image files of ``split`` under ``root``, their labels and class names (or None), and the
    folder they were found in (layout rules in the module docstring); nothing is decoded."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder: {root} is not a folder; expected a folder of image files ({_KINDS})")
    splits = split_folders(root)
    if splits is None and split == "test":
        raise FileNotFoundError(
            f"folder: {root} has no train/ and test/ (or val/) subfolders; "
            "split='test' needs the layout <root>/train/... and <root>/test/..."
        )
    base = splits[split] if splits is not None else root
    files = _image_files(base, progress)
    if not files:
        raise FileNotFoundError(f"folder: no image files ({_KINDS}) under {base}")
    names = [_class_of(path, base) for path in files]
    classes = labels = None
    loose = [path.name for path, name in zip(files, names) if name is None]
    if loose and len(loose) < len(files):  # most images in class folders, a few beside them: say why no labels
        warnings.warn(f"folder: {len(loose)} image file(s) lie directly in {base} ({', '.join(loose[:3])}"
                      f"{' ...' if len(loose) > 3 else ''}) beside the class folders, so the images are read "
                      f"without labels (no linear probe or kNN); move them into a class folder, or out, for labels",
                      UserWarning, stacklevel=3)
    if None not in names:
        bases = list(splits.values()) if splits is not None else [base]
        classes = sorted({_class_of(path, b) for b in bases for path in _image_files(b)} - {None})
        like_splits = sorted(set(classes) & {"train", *TEST_FOLDERS})
        if splits is None and like_splits:
            warnings.warn(f"folder: {root}'s first-level folders {', '.join(like_splits)} are read as classes, "
                          f"and every image as training data: a split layout needs {root}/train beside "
                          f"{root}/test (or val)", UserWarning, stacklevel=3)
        index = {name: k for k, name in enumerate(classes)}
        labels = torch.tensor([index[name] for name in names], dtype=torch.int64)
    return files, labels, classes, base


def load_folder(root: str | Path, split: str, size: int, channels: int, progress: bool) -> ImageDataset:
    """Decode the images under ``root`` (see the module docstring for the layout and decoding rules)."""
    files, labels, classes, base = scan_folder(root, split, progress)
    images = torch.empty(len(files), channels, size, size, dtype=torch.uint8)
    # Decoded pixels are copied straight into this numpy view of ``images``: PIL's arrays are
    # read-only, and torch.from_numpy on them warns (and would cost a copy to make them writable).
    pixels = images.numpy()
    keep = torch.ones(len(files), dtype=torch.bool)
    with decode_pool(len(files)) as pool:
        bar = tqdm(decode_files(pool, files, size, channels), total=len(files), desc=f"decoding {base}",
                   unit="img", disable=not progress)
        for k, result in enumerate(bar):
            if isinstance(result, str):
                keep[k] = False
            else:
                pixels[k] = result
    skipped = len(files) - int(keep.sum())
    if skipped == len(files):
        raise DataError(f"folder: none of the {len(files)} image files under {base} could be read; see the warnings")
    names = [path.relative_to(base).as_posix() for path in files]
    if skipped:
        warnings.warn(f"skipped {skipped} of {len(files)} image files under {base}", SkippedImageWarning, stacklevel=3)
        images = images[keep]
        labels = None if labels is None else labels[keep]
        names = [name for name, kept in zip(names, keep.tolist()) if kept]
    return ImageDataset(images, labels, classes, "folder", names)
