"""Images paired with captions, for CLIP: the data kind ``"image_text"``.

Where the captions come from (``data.captions``):

- ``templates``: a labelled image dataset (``fashion_mnist``, ``cifar10``, ``digits``, ``photos``,
  a ``folder`` with class subfolders) whose captions are prompt templates filled with the class
  name (:data:`TEMPLATES`, names through :func:`prompt_name`: ``"T-shirt/top"`` -> ``"t-shirt or
  top"``). A training image has every template as a caption and draws one per epoch; a test image
  has ``TEMPLATES[0]`` only, so that its caption names its class in one fixed way.
- a captions file, ``.csv`` (header row, columns ``image`` and ``caption``, optional ``label``)
  or ``.jsonl`` (one object per line with the same keys), read for the split ``train`` from
  ``data.captions`` and for ``test`` from ``data.test_captions`` (optional). Image paths are
  relative to ``data.root`` (default: the captions file's folder). Several rows may name one
  image: they are all its captions and it draws one per epoch. Images are decoded once like a
  ``folder`` (``selfsup.data.folder``); unreadable images are reported and skipped with their
  captions; a missing image or an empty caption is an error naming the file and line.

``data.held_out_classes`` names classes kept out of pretraining (their images and captions),
for zero-shot classification of classes never seen in a caption.

Every source answers the batch of ``(epoch, position, rank)`` from its seed alone (resume is
exact), and the caption drawn for each image of a global batch does not depend on the number of
processes. The batch carries ``extra["caption_ids"]``: positions in :attr:`CaptionedImages.captions`
(the table of distinct caption strings a method tokenizes once).
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from selfsup.errors import DataError

from .dataset import ImageDataset
from .folder import SkippedImageWarning, _try_decode
from .sources import ImageBatch, InMemoryImages

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of the {}.",
    "a photo of one {}.",
    "an image of a {}.",
    "a cropped photo of a {}.",
)
"""Prompt templates (a subset of CLIP's ImageNet prompt set, in its wording)."""


def prompt_name(class_name: str) -> str:
    """A class name as words in a prompt: lower case, ``/`` read as "or", ``_`` as a space."""
    return " ".join(class_name.replace("/", " or ").replace("_", " ").lower().split())


def class_prompts(classes: Sequence[str], templates: Sequence[str] = TEMPLATES) -> list[list[str]]:
    """``prompts[c][t]``: template ``t`` filled with the name of class ``c``."""
    return [[template.format(prompt_name(name)) for template in templates] for name in classes]


@dataclass
class CaptionedImages:
    """An image dataset whose images each have one or more captions.

    Attributes:
        dataset: the images (and labels and classes, when known).
        captions: the distinct caption strings.
        offsets: int64 ``(N + 1,)``: image ``i``'s captions are
            ``captions[ids[offsets[i]:offsets[i + 1]]]``.
        ids: int64 positions in ``captions``.
        held_out: class indices kept out of pretraining (their images are not in :attr:`train_index`).
        train_index: positions of the images pretraining draws from (all of them but held-out classes).
    """

    dataset: ImageDataset
    captions: list[str]
    offsets: Tensor
    ids: Tensor
    held_out: list[int] = field(default_factory=list)
    train_index: Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.dataset)
        if self.offsets.shape != (n + 1,) or int(self.offsets[0]) != 0 or int(self.offsets[-1]) != len(self.ids):
            raise DataError(f"CaptionedImages {self.dataset.name!r}: offsets must be ({n + 1},) from 0 to "
                            f"len(ids)={len(self.ids)}, got shape {tuple(self.offsets.shape)}")
        counts = self.offsets.diff()
        if n and int(counts.min()) < 1:
            raise DataError(f"CaptionedImages {self.dataset.name!r}: image {int(counts.argmin())} has no caption")
        if len(self.ids) and not 0 <= int(self.ids.min()) <= int(self.ids.max()) < len(self.captions):
            raise DataError(f"CaptionedImages {self.dataset.name!r}: caption ids outside 0..{len(self.captions) - 1}")
        if self.train_index is None:
            self.train_index = torch.arange(n)
            if self.held_out and self.dataset.labels is not None:
                self.train_index = (~torch.isin(self.dataset.labels, torch.tensor(self.held_out))).nonzero().squeeze(1)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def images(self) -> Tensor:
        return self.dataset.images

    @property
    def inputs(self) -> Tensor:
        """What the image tower reads: the images."""
        return self.dataset.images

    @property
    def labels(self) -> Tensor | None:
        return self.dataset.labels

    @property
    def classes(self) -> list[str] | None:
        return self.dataset.classes

    @property
    def name(self) -> str:
        return self.dataset.name

    def captions_of(self, i: int) -> list[str]:
        """The captions of image ``i``."""
        return [self.captions[int(k)] for k in self.ids[self.offsets[i]:self.offsets[i + 1]]]

    def first_captions(self) -> Tensor:
        """``(N,)`` the first caption id of every image."""
        return self.ids[self.offsets[:-1]]


def held_out_indices(classes: Sequence[str] | None, names: Sequence[str], where: str) -> list[int]:
    """Class indices of ``names`` (matched exactly or as :func:`prompt_name`), or a clear error."""
    if not names:
        return []
    if classes is None:
        raise DataError(f"data.held_out_classes: {where} has no class labels to hold out")
    lookup = {name: k for k, name in enumerate(classes)} | {prompt_name(name): k for k, name in enumerate(classes)}
    unknown = [name for name in names if name not in lookup and prompt_name(name) not in lookup]
    if unknown:
        raise DataError(f"data.held_out_classes: {', '.join(map(repr, unknown))} not among the classes of {where}: "
                        f"{', '.join(classes)}")
    held = sorted({lookup.get(name, lookup.get(prompt_name(name))) for name in names})
    if len(held) >= len(classes):
        raise DataError(f"data.held_out_classes: holding out all {len(classes)} classes of {where} leaves nothing "
                        f"to pretrain on")
    return held


def from_templates(dataset: ImageDataset, split: str, *, held_out: Sequence[str] = (),
                   templates: Sequence[str] = TEMPLATES) -> CaptionedImages:
    """Captions from class names: every template for training images, the first for test images."""
    if dataset.labels is None or dataset.classes is None:
        raise DataError(f"data.captions=templates: dataset {dataset.name!r} has no class labels to fill the "
                        f"templates with; give a captions file instead")
    if not templates:
        raise DataError("data.captions=templates: no templates")
    per_image = len(templates) if split == "train" else 1
    prompts = class_prompts(dataset.classes, templates[:per_image])
    captions = [prompt for per_class in prompts for prompt in per_class]
    labels = dataset.labels.cpu()
    ids = (labels[:, None] * per_image + torch.arange(per_image)).reshape(-1)
    offsets = torch.arange(len(dataset) + 1) * per_image
    return CaptionedImages(dataset, captions, offsets, ids,
                           held_out_indices(dataset.classes, held_out, f"dataset {dataset.name!r}"))


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a captions file."""
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8 "
                        f"(a spreadsheet's \"CSV UTF-8\")") from None
    # Lines end at "\n" only: str.splitlines() also breaks at U+2028, U+2029, U+0085 ..., which a
    # caption may hold (a quoted CSV field, a raw character in a JSON string).
    if suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as stream:  # newline="": the csv module's own quoting
            reader = csv.DictReader(stream)
            missing = {"image", "caption"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path}: the header must name the columns image and caption (and optionally "
                                f"label); missing {', '.join(sorted(missing))}, found {reader.fieldnames}")
            return [(reader.line_num, row) for row in reader]  # the line a row ends on
    if suffix in (".jsonl", ".json"):
        rows = []
        for line, raw in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {line}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line}: expected an object with keys image and caption, got {raw[:80]!r}")
            rows.append((line, row))
        return rows
    raise DataError(f"{path}: captions must be a .csv or .jsonl file")


def read_captions_file(path: str | Path, *, root: str | Path | None = None, size: int = 64, channels: int = 3,
                       classes: Sequence[str] | None = None, held_out: Sequence[str] = (),
                       progress: bool = False) -> CaptionedImages:
    """A captions file (see the module docstring) with its images decoded to ``size`` x ``size``.

    ``classes`` fixes the label order (the training split's, for the test split); None: the sorted
    labels of this file."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    path = Path(path).expanduser()
    base = Path(root).expanduser() if root is not None else path.parent
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path}: no captions")
    image_of: dict[str, int] = {}
    files: list[Path] = []
    captions_of: list[list[str]] = []
    label_of: list[str | None] = []
    for line, row in rows:
        image, caption = row.get("image"), row.get("caption")
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{path}, line {line}: no image path")
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{path}, line {line}: empty caption for {image}")
        label = row.get("label")
        label = None if label is None or str(label).strip() == "" else str(label).strip()
        if image not in image_of:
            file = base / image
            if not file.is_file():
                raise DataError(f"{path}, line {line}: image {image} not found (looked for {file})")
            image_of[image] = len(files)
            files.append(file)
            captions_of.append([])
            label_of.append(label)
        elif label != label_of[image_of[image]]:
            raise DataError(f"{path}, line {line}: image {image} has label {label!r} here and "
                            f"{label_of[image_of[image]]!r} on an earlier line")
        captions_of[image_of[image]].append(" ".join(caption.split()))

    labelled = [label is not None for label in label_of]
    if any(labelled) and not all(labelled):
        raise DataError(f"{path}: some rows have a label and some do not (image "
                        f"{files[labelled.index(False)].name} has none); label every row or none")
    keep = []
    pixels = torch.empty(len(files), channels, size, size, dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        decoded = pool.map(_try_decode, files, [size] * len(files), [channels] * len(files))
        for k, result in enumerate(tqdm(decoded, total=len(files), desc=f"decoding {path.name}", unit="img",
                                        disable=not progress)):
            if isinstance(result, str):
                warnings.warn(f"skipping {files[k]} and its captions: {result}", SkippedImageWarning, stacklevel=2)
            else:
                pixels.numpy()[k] = result
                keep.append(k)
    if not keep:
        raise DataError(f"{path}: none of the {len(files)} images could be read; see the warnings")
    labels = None
    if all(labelled):
        classes = sorted({label_of[k] for k in keep}) if classes is None else list(classes)
        index = {name: c for c, name in enumerate(classes)}
        unknown = sorted({label_of[k] for k in keep} - set(index))
        if unknown:
            raise DataError(f"{path}: labels {', '.join(unknown)} are not classes of the training split "
                            f"({', '.join(classes)})")
        labels = torch.tensor([index[label_of[k]] for k in keep], dtype=torch.int64)
    else:
        classes = None
    table: dict[str, int] = {}
    ids, offsets = [], [0]
    for k in keep:
        for caption in captions_of[k]:
            ids.append(table.setdefault(caption, len(table)))
        offsets.append(len(ids))
    dataset = ImageDataset(pixels[torch.tensor(keep)], labels, classes, "captions")
    return CaptionedImages(dataset, list(table), torch.tensor(offsets), torch.tensor(ids),
                           held_out_indices(classes, held_out, str(path)) if held_out else [])


def read_captions_splits(train_file: str | Path, test_file: str | Path | None, *, root: str | Path | None = None,
                         size: int = 64, channels: int = 3, held_out: Sequence[str] = (), progress: bool = False,
                         test: bool = True) -> tuple[CaptionedImages, CaptionedImages | None]:
    """The train split of a captions file and, when ``test_file`` is given (and ``test``), the test
    split with the train split's classes and held-out classes."""
    options = dict(root=root, size=size, channels=channels, progress=progress)
    train = read_captions_file(train_file, held_out=held_out, **options)
    if not (test and test_file):
        return train, None
    test_split = read_captions_file(test_file, classes=train.classes, **options)
    test_split.held_out = train.held_out
    return train, test_split


class ImageTextPairs(InMemoryImages):
    """The training source of ``image_text`` data: images on the device, a caption id per image.

    Epoch ``e``'s order is a permutation of :attr:`CaptionedImages.train_index` drawn from ``seed``
    and ``e``; the caption of each image of global batch ``p`` is drawn uniformly among its captions
    from ``(seed, e, p)`` over the whole global batch, and rank ``r`` takes the ``r``-th slice, so
    the pairs of a global batch do not depend on the number of processes.

    ``dataset`` and ``inputs`` are the whole split (what the probes read, held-out classes
    included); ``len()`` counts the images pretraining draws from.

    Examples:
        >>> ds = ImageDataset(torch.zeros(6, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1, 2]),
        ...                   ["a", "b", "c"], "toy")
        >>> source = ImageTextPairs(from_templates(ds, "train", held_out=["c"]), batch_size=2)
        >>> len(source), source.batch(0, 0, 0).extra["caption_ids"].shape
        (4, torch.Size([2]))
    """

    kind = "image_text"

    def __init__(self, pairs: CaptionedImages, batch_size: int, world_size: int = 1, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self._train = pairs.train_index
        super().__init__(pairs.dataset, batch_size, world_size, seed, device)
        self.pairs, self.captions = pairs, pairs.captions
        self._offsets, self._ids = pairs.offsets.to(self.device), pairs.ids.to(self.device)
        self._train_on_device = self._train.to(self.device)

    def __len__(self) -> int:
        return len(self._train)

    def order(self, epoch: int) -> Tensor:
        """Epoch ``epoch``'s order of the pretraining images (dataset positions)."""
        return self._train_on_device[super().order(epoch)]

    def batch(self, epoch: int, position: int, rank: int) -> ImageBatch:
        start = position * self.batch_size
        index = self.order(epoch)[start:start + self.batch_size]  # the whole global batch
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + position)
        draw = torch.rand(len(index), generator=generator, dtype=torch.float64).to(self.device)
        first, count = self._offsets[index], self._offsets[index + 1] - self._offsets[index]
        caption_ids = self._ids[first + (draw * count).long().clamp(max=count - 1)]
        mine = slice(rank * self.local_batch, (rank + 1) * self.local_batch)
        index = index[mine]
        return ImageBatch(self.images[index], index, None if self.labels is None else self.labels[index],
                          {"caption_ids": caption_ids[mine]})


__all__ = ["TEMPLATES", "CaptionedImages", "ImageTextPairs", "class_prompts", "from_templates", "held_out_indices",
           "prompt_name", "read_captions_file", "read_captions_splits"]
