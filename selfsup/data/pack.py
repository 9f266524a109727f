"""``selfsup pack``: decode a folder of images once into uint8 shards that any process can read.

Why fixed-size uint8 arrays rather than WebDataset tar shards: the engine asks for the batch of
``(epoch, position, rank)``, which needs any image on demand. A row of a ``.npy`` shard is at a
known offset (one ``pread``, no decoding, no parsing), whereas a tar is read front to back, with
shuffle buffers whose order depends on what was read before, so a resumed run could not see the
same batches. The cost is size: raw pixels take ``C x S x S`` bytes (36 KB for a 110 px RGB
image, several times a JPEG of it). Each shard is a plain ``.npy`` file, so numpy alone reads it
(``np.load(path, mmap_mode="r")``), and the kernel's page cache shares it between processes.

Layout of ``<out>`` (one per split: ``<out>/train`` and ``<out>/test`` when the folder has
``train/`` and ``test/``, else ``<out>`` itself)::

    index.json          settings, classes, and per shard: file, count, byte offset, sha256,
                        the source files (relative paths) and their labels
    shard-00000.npy     uint8 (count, C, S, S): the centred square of each image, resized to S

Packing is resumable: each shard is written whole (temporary file, then rename) and recorded in
``index.json`` before the next one starts, so a second run after an interruption checks the
recorded shards' checksums, keeps those that match, and goes on from there. Opening a pack checks
every shard's header and length against the index (and, with ``verify=True``, its sha256), and a
shard that does not match is an error naming it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from selfsup._io import atomic_write
from selfsup.errors import DataError

from .folder import SkippedImageWarning, _name_bytes, decode_files, decode_pool, scan_folder, split_folders

FORMAT, VERSION = "selfsup-pack", 1
SHARD_SIZE = 1024
INDEX = "index.json"


@dataclass
class Pack:
    """An opened packed split: where its shards are and what they hold."""

    root: Path
    shards: list[dict]
    names: list[str]
    labels: np.ndarray | None
    classes: list[str] | None
    side: int
    channels: int
    size: int

    def __len__(self) -> int:
        return len(self.names)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fingerprint(names: list[str]) -> str:
    return hashlib.sha256(_name_bytes("\n".join(names))).hexdigest()


def pack_folder(folder: str | Path, out: str | Path, *, size: int, channels: int = 3, ratio: float = 1.15,
                shard_size: int = SHARD_SIZE, progress: bool = True) -> dict[str, dict]:
    """Pack every split of ``folder`` into ``out`` (see the module docstring); returns each split's index.

    Args:
        folder: images as :mod:`selfsup.data.folder` reads them (classes from first-level folders).
        out: the pack's folder (created; an interrupted pack there is resumed).
        size: the training crop the pack is for; images are stored at ``round(size * ratio)``.
        channels: 1 (gray) or 3 (RGB).
        ratio: stored side over ``size``.
        shard_size: images per shard.
        progress: tqdm bars while scanning and decoding.

    An unreadable file is left out, named in ``index.json``'s ``skipped``; running out of memory or
    of file descriptors while decoding is raised instead (the pack resumes from its last shard),
    since it says nothing about the file.
    """
    from .stream import stored_side

    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if channels not in (1, 3):
        raise DataError(f"pack: channels must be 1 or 3, got {channels}")
    if size < 1 or shard_size < 1 or ratio < 1:
        raise DataError(f"pack: size and shard_size must be >= 1 and ratio >= 1, got {size}, {shard_size}, {ratio}")
    split_layout = split_folders(folder) is not None  # train/ beside test/ (or val/): packed as train/ and test/
    splits = {"train": out / "train", "test": out / "test"} if split_layout else {"train": out}
    return {split: _pack_split(folder, split, target, size, stored_side(size, ratio), channels, shard_size, progress)
            for split, target in splits.items()}


def _pack_split(folder: Path, split: str, out: Path, size: int, side: int, channels: int, shard_size: int,
                progress: bool) -> dict:
    files, labels, classes, base = scan_folder(folder, split, progress)
    names = [str(path.relative_to(base)) for path in files]
    settings = {"format": FORMAT, "version": VERSION, "size": size, "side": side, "channels": channels,
                "shard_size": shard_size, "files": len(names), "files_sha256": _fingerprint(names)}
    out.mkdir(parents=True, exist_ok=True)
    # A shard or the index that a kill interrupted mid-write leaves its temporary (selfsup._io.atomic_write's
    # name: ".<file>.<hex>.tmp"); the resumed pack writes both again.
    for leftover in [*out.glob(".shard-*.tmp"), *out.glob(f".{INDEX}.*.tmp")]:
        leftover.unlink()
    index = {**settings, "source": str(base), "classes": classes, "complete": False, "shards": [], "skipped": []}
    kept = _resumable(out, settings)
    index["shards"], index["skipped"] = kept["shards"], kept["skipped"]
    _write_index(out, index)  # before any shard: a kill during the first one leaves a pack to resume
    row = channels * side * side
    starts = range(len(index["shards"]) * shard_size, len(files), shard_size)
    bar = tqdm(total=len(files), initial=starts.start if starts else len(files), unit="img",
               desc=f"packing {base} -> {out}", disable=not progress)
    with decode_pool(len(files)) as pool:
        for start in starts:
            chunk = files[start:start + shard_size]
            pixels, shard_names, shard_labels = [], [], []
            for k, result in enumerate(decode_files(pool, chunk, side, channels)):
                if isinstance(result, str):
                    index["skipped"].append({"file": names[start + k], "position": start + k, "reason": result})
                else:
                    pixels.append(result)
                    shard_names.append(names[start + k])
                    shard_labels.append(None if labels is None else int(labels[start + k]))
                bar.update(1)
            array = np.stack(pixels) if pixels else np.empty((0, channels, side, side), dtype=np.uint8)
            name = f"shard-{len(index['shards']):05d}.npy"
            path = atomic_write(out / name, lambda file: np.save(file, array, allow_pickle=False))
            index["shards"].append({"file": name, "count": len(pixels), "offset": path.stat().st_size - len(pixels) * row,
                                    "sha256": _sha256(path), "first_file": start, "files": shard_names,
                                    "labels": None if labels is None else shard_labels})
            _write_index(out, index)
    bar.close()
    index["count"] = sum(shard["count"] for shard in index["shards"])
    if index["count"] == 0:
        raise DataError(f"pack: none of the {len(files)} image files under {base} could be read; see the warnings")
    index["complete"] = True
    _write_index(out, index)
    if index["skipped"]:
        warnings.warn(f"skipped {len(index['skipped'])} of {len(files)} image files under {base}",
                      SkippedImageWarning, stacklevel=3)
    return index


def _write_index(out: Path, index: dict) -> None:
    atomic_write(out / INDEX, lambda file: file.write((json.dumps(index, indent=1) + "\n").encode()))


def _resumable(out: Path, settings: dict) -> dict:
    """The shards (and skipped files) an earlier pack into ``out`` left that can be kept."""
    path = out / INDEX
    if not path.is_file():
        if any(out.glob("shard-*.npy")):
            raise DataError(f"pack: {out} holds shards but no {INDEX}; choose an empty folder or delete them")
        return {"shards": [], "skipped": []}
    old = _read_index(path)
    for key, value in settings.items():
        if old.get(key) != value:
            what = "the list of image files" if key in ("files", "files_sha256") else key
            raise DataError(f"pack: {out} holds a pack made with other settings ({what}: {old.get(key)!r}, now "
                            f"{value!r}); choose another output folder or delete this one")
    shards = []
    for shard in old.get("shards", []):
        file = out / shard["file"]
        if not file.is_file() or _sha256(file) != shard["sha256"]:
            break  # this one and every later one are written again
        shards.append(shard)
    covered = len(shards) * settings["shard_size"]  # files before this are in kept shards or skipped
    return {"shards": shards, "skipped": [s for s in old.get("skipped", []) if s["position"] < covered]}


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"packed: cannot read {path}: {error}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"packed: {path} is not a selfsup pack index (no \"format\": \"{FORMAT}\")")
    if index.get("version") != VERSION:
        raise DataError(f"packed: {path} is version {index.get('version')!r}; this selfsup reads version {VERSION}")
    for shard in index.get("shards") or []:
        name = shard.get("file") if isinstance(shard, dict) else None
        # A pack someone sent is read from its own folder only: a shard is a plain file name there.
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise DataError(f"packed: {path} names a shard file {name!r} outside its folder; a pack's shards are "
                            f"plain file names beside its {INDEX}, and this one is refused")
    return index


def split_root(root: str | Path, split: str) -> Path:
    """Where ``split`` of the pack at ``root`` lives (``root/<split>`` for a two-split pack)."""
    root = Path(root).expanduser()
    if (root / "train" / INDEX).is_file():
        if not (root / split / INDEX).is_file():
            raise FileNotFoundError(f"packed: {root} has no {split} split ({root / split / INDEX} is missing)")
        return root / split
    if (root / INDEX).is_file():
        if split != "train":
            raise FileNotFoundError(f"packed: {root} holds one split (train); there is no {split} split")
        return root
    raise FileNotFoundError(f"packed: no {INDEX} in {root}; make a pack with: selfsup pack <image folder> {root}")


def open_pack(root: str | Path, split: str = "train", *, verify: bool = False, progress: bool = False) -> Pack:
    """Open ``split`` of a pack, checking every shard's header and length against its index
    (``verify``: also its sha256)."""
    where = split_root(root, split)
    index = _read_index(where / INDEX)
    if not index.get("complete"):
        raise DataError(f"packed: {where} is an unfinished pack; run selfsup pack again with the same folder and "
                        f"output to finish it")
    try:
        side, channels, size, classes = int(index["side"]), int(index["channels"]), int(index["size"]), index["classes"]
        row = channels * side * side
        names: list[str] = []
        labels: list[int] = []
        shards = [s for s in index["shards"] if s["count"]]
        for shard in tqdm(shards, desc=f"checking {where}", unit="shard", disable=not (progress and verify)):
            count = shard["count"]
            if len(shard["files"]) != count or (classes is not None and len(shard["labels"]) != count):
                raise DataError(f"packed: {where / INDEX} lists {count} images for {shard['file']} but "
                                f"{len(shard['files'])} files / {len(shard['labels'] or [])} labels")
            _check_shard(where / shard["file"], shard, (channels, side, side), row, verify)
            names.extend(shard["files"])
            if classes is not None:
                labels.extend(shard["labels"])
    except DataError:  # a shard's own precise message (cut short, a sha256 mismatch): a ValueError too
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"packed: {where / INDEX} is missing or mangles a key ({type(error).__name__}: {error}); "
                        f"run selfsup pack again into a new folder") from None
    if classes is not None and not all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        raise DataError(f"packed: {where / INDEX} has labels that are not class indices (integers)")
    if classes is not None and labels and not 0 <= min(labels) <= max(labels) < len(classes):
        raise DataError(f"packed: {where / INDEX} has labels outside its {len(classes)} classes")
    return Pack(where, shards, names, None if classes is None else np.asarray(labels, dtype=np.int64),
                classes, side, channels, size)


def _check_shard(path: Path, shard: dict, shape: tuple[int, int, int], row: int, verify: bool) -> None:
    expected = f"{shard['count']} images of {'x'.join(map(str, shape))} uint8"
    if not path.is_file():
        raise DataError(f"packed: {path} is missing; index.json lists it with {expected}")
    if path.is_symlink():  # a pack is read from its own folder only: a link could point anywhere
        raise DataError(f"packed: {path} is a symbolic link; a pack's shards are plain files in its folder, and "
                        f"this one is refused")
    with open(path, "rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy version {version}")
            header = read_header(file)  # shape, fortran_order, dtype
        except ValueError as error:
            raise DataError(f"packed: {path} is not a .npy shard ({error}); index.json expects {expected}") from None
        offset = file.tell()
    found_shape, fortran, dtype = header
    if tuple(found_shape) != (shard["count"], *shape) or fortran or dtype != np.uint8:
        raise DataError(f"packed: {path} holds {dtype} {tuple(found_shape)}, which does not match index.json "
                        f"({expected}); pack the folder again into a new output folder")
    size = path.stat().st_size
    if offset != shard["offset"] or size != offset + shard["count"] * row:
        raise DataError(f"packed: {path} is {size} bytes, index.json expects {shard['offset'] + shard['count'] * row} "
                        f"({expected}); the shard was cut short or changed; run selfsup pack again")
    if verify and _sha256(path) != shard["sha256"]:
        raise DataError(f"packed: {path} does not match its sha256 in index.json (the file changed after packing); "
                        f"run selfsup pack again with the same folder and output to rewrite it")
