"""Datasets as uint8 image tensors plus labels when known.

``load(name, split)`` returns an :class:`ImageDataset`: uint8 images
``(N, C, H, W)``, int64 labels ``(N,)`` or ``None``, and class names. Small
datasets are meant to live whole on the training device (``ds.to("cuda")``).

Names (``DATASETS``):

- ``fashion_mnist``, ``mnist``: IDX files, 1x28x28 (see ``selfsup.data.idx``
  for where they are looked for and how downloads are checked).
- ``cifar10``, ``cifar100`` (100 fine classes), ``cifar100_coarse`` (the
  same images with the 20 superclasses): the python-pickle release, 3x32x32
  (see ``selfsup.data.cifar``).
- ``digits``: scikit-learn's 1797 8x8 digits, values 0..16 scaled to 0..255
  (``round(v * 255 / 16)``), 1x8x8. Split: stratified by class, 20% test,
  ``sklearn.model_selection.train_test_split(random_state=0)``: 1437 train,
  360 test.
- ``photos``: crops of the real colour photos that ship with scikit-learn and scikit-image
  (needs scikit-image, ``pip install 'selfsup[photos]'``), 3x32x32, labelled by photo, 4500
  train and 900 test crops from disjoint parts of each photo (see ``selfsup.data.photos``).
- ``folder``: the user's images under ``root`` (see ``selfsup.data.folder``),
  resized to ``size`` (default 64) and converted to ``channels`` (default 3).
- ``packed``: the uint8 shards ``selfsup pack`` writes from a folder (:mod:`selfsup.data.pack`);
- ``webdataset``: tar shards in the webdataset layout, local or any fsspec URL
  (:mod:`selfsup.data.webdataset`), streamed;
  training streams them (``data.stream`` is implied), ``load`` reads a split whole, center-cropped
  to ``size`` (default: the crop the pack was made for).
- With ``data.stream: true`` a ``folder`` is not decoded up front: DataLoader workers decode each
  batch (:mod:`selfsup.data.stream`), so it may be larger than memory.
- ``karate``, ``sbm``, ``planetoid``: graphs (``selfsup.data.graphs``, the ``graph`` extra).
- ``captions``: the user's images named in a captions file (``data.captions``), paired with their
  captions (an image-text source, :mod:`selfsup.data.captions`); ``data.captions=templates`` pairs
  any labelled dataset above with prompts of its class names instead.
- ``video``: a folder of videos or frame folders, or a DAVIS root (:mod:`selfsup.data.video`),
  decoded into frames and sampled as clips (a video source, :class:`selfsup.data.video.VideoClips`; with
  ``stream: true`` decoded clip by clip in DataLoader workers, :mod:`selfsup.data.video_stream`).
- ``pairs``: image pairs with given correspondences, from a JSON-lines file (``data.correspondences``;
  :mod:`selfsup.data.pairs`), for Dense Object Nets.
- ``wav``: a folder of WAV files, ``root/<label>/*.wav``, streamed as windows of raw signal (a
  sequence source, not an image dataset: :class:`selfsup.data.sequences.WavFolder`).

Examples:
    >>> train = load("digits", "train", size=32, channels=3)  # scikit-learn's digits: offline
    >>> train.images.shape, train.images.dtype
    (torch.Size([1437, 3, 32, 32]), torch.uint8)
    >>> train = train.to("cuda")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selfsup.errors import DataError

from .cifar import CIFAR10, CIFAR100, CIFAR100_COARSE, load_cifar
from .dataset import ImageDataset, check_channels, check_size
from .download import ChecksumError, DownloadError
from .folder import DEFAULT_SIZE, SkippedImageWarning, load_folder
from .graphs import GRAPH_DATASETS, Graph, GraphSource, NodeSet, graph_from_config, load_graph
from .idx import FASHION_MNIST, MNIST, load_idx
from .photos import load_photos
from .captions import CaptionedImages, ImageTextPairs, from_templates, read_captions_file, read_captions_splits
from .sequences import SignalSet, WavFolder
from .sources import DataSource, ImageBatch, InMemoryImages
from .pairs import ImagePairs, PairSource, read_pairs
from .video import VideoClips, VideoSet, load_video_split
from .video_stream import StreamedVideoClips, StreamedVideoSet, streamed_video_split
from .stream import ImageStream, StreamedDataset, StreamedImages, center_crop, folder_split, packed_split
from .webdataset import webdataset_split

__all__ = ["CaptionedImages", "ImageTextPairs", "from_templates", "read_captions_file", "read_captions_splits", "DATASETS", "GRAPH_DATASETS", "SEQUENCE_DATASETS", "ChecksumError", "DataSource", "DownloadError", "Graph",
           "GraphSource", "ImageBatch", "ImageDataset", "ImageStream", "InMemoryImages", "StreamedDataset",
           "StreamedImages", "center_crop", "folder_split", "is_streamed", "packed_split", "streamed_split", "NodeSet", "SignalSet", "SkippedImageWarning",
           "ImagePairs", "PairSource", "read_pairs", "VideoClips", "VideoSet", "StreamedVideoClips", "StreamedVideoSet", "streamed_video_split", "WavFolder", "graph_from_config", "load_video_split", "kind_of", "load", "load_graph"]

DATASETS: tuple[str, ...] = (
    "fashion_mnist", "mnist", "cifar10", "cifar100", "cifar100_coarse", "digits", "photos", "folder", "packed",
    "webdataset", "wav", "video", "pairs", "karate",
    "sbm", "planetoid", "captions")
SEQUENCE_DATASETS: tuple[str, ...] = ("wav",)
"""Names that give sequences (windows of signal), not images."""


def kind_of(data) -> str:
    """The kind of data a dataset gives: "images", "image_text", "sequences", "video", "image_pairs" or
    "graph".

    ``data``: a dataset name, or a :class:`selfsup.config.DataConfig` (with ``captions`` set, a
    labelled image dataset gives image-text pairs)."""
    name = data if isinstance(data, str) else data.name
    if name == "captions" or (not isinstance(data, str) and getattr(data, "captions", None)):
        return "image_text"
    if name in GRAPH_DATASETS:
        return "graph"
    if name == "video":
        return "video"
    if name == "pairs":
        return "image_pairs"
    return "sequences" if name in SEQUENCE_DATASETS else "images"
SPLITS = ("train", "test")


def is_streamed(d) -> bool:
    """Whether a :class:`selfsup.config.DataConfig` names streamed images (a pack, or a folder with
    ``stream: true``)."""
    return d.name in ("packed", "webdataset") or (d.name == "folder" and bool(getattr(d, "stream", False)))


def streamed_split(d, split: str, *, progress: bool = False) -> StreamedDataset:
    """``split`` of the streamed images a :class:`selfsup.config.DataConfig` names."""
    if d.root is None:
        raise DataError(f"data.root: dataset {d.name!r} needs "
                        + {"packed": "the output folder of selfsup pack",
                           "webdataset": "its shards, e.g. shards/{split}-{000..099}.tar (local or an fsspec URL)"}
                        .get(d.name, "the folder of your images"))
    if d.name == "packed":
        streamed = packed_split(d.root, split, d.size, workers=d.workers, verify=d.verify, progress=progress)
        if d.channels not in (None, streamed.channels):
            raise DataError(f"data.channels={d.channels}: the pack at {d.root} holds {streamed.channels}-channel "
                            f"images; pack the folder again with --channels {d.channels}")
        return streamed
    if d.name == "webdataset":
        return webdataset_split(d.root, split, d.size or DEFAULT_SIZE, d.channels or 3, ratio=d.store_ratio,
                                workers=d.workers, progress=progress)
    return folder_split(d.root, split, d.size or DEFAULT_SIZE, d.channels or 3, ratio=d.store_ratio,
                        workers=d.workers, progress=progress)

_IDX = {"fashion_mnist": FASHION_MNIST, "mnist": MNIST}
_CIFAR = {"cifar10": CIFAR10, "cifar100": CIFAR100, "cifar100_coarse": CIFAR100_COARSE}
DIGITS_TEST_FRACTION = 0.2
DIGITS_SEED = 0


def _digits(split: str) -> ImageDataset:
    # Imported here: scikit-learn takes a while to import and only this loader needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    train, test = train_test_split(
        np.arange(len(images)), test_size=DIGITS_TEST_FRACTION, stratify=bunch.target, random_state=DIGITS_SEED
    )
    index = np.sort(train if split == "train" else test)
    return ImageDataset(
        torch.from_numpy(images[index]),
        torch.from_numpy(bunch.target[index].astype(np.int64)),
        [str(digit) for digit in bunch.target_names],
        "digits",
    )


def load(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    *,
    size: int | None = None,
    channels: int | None = None,
    download: bool = True,
    progress: bool = True,
) -> ImageDataset:
    """Load dataset ``name`` (one of ``DATASETS``) as an :class:`ImageDataset`.

    Args:
        name: dataset name, see ``DATASETS`` and the module docstring.
        split: ``"train"`` or ``"test"``.
        root: a folder holding the dataset's files (required for ``"folder"``);
            ``None`` uses the cache ``$SELFSUP_DATA/<name>`` (default
            ``~/.cache/selfsup``), downloading into it if ``download``.
        size: resize to ``size x size`` (shorter side, then center crop);
            ``None`` keeps the native size (``"folder"``: 64).
        channels: 1 or 3 to convert gray <-> RGB for a backbone's input;
            ``None`` keeps the native channels (``"folder"``: 3).
        download: fetch missing files (checksummed) into the cache.
        progress: show tqdm bars for downloads and folder decoding.

    Raises:
        ValueError: unknown name, split, size or channels; a corrupt file.
        FileNotFoundError: ``root`` or a required file is missing.

    Examples:
        >>> ds = load("digits", "test", channels=1)
        >>> ds.images.shape, ds.classes[ds.labels[0]]
        (torch.Size([360, 1, 8, 8]), '1')
        >>> load("cifar10", "test", channels=1).images.shape  # downloaded once into the cache  # doctest: +SKIP
        torch.Size([10000, 1, 32, 32])
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if name in GRAPH_DATASETS:
        raise DataError(f"dataset {name!r} is a graph, not images: read it with selfsup.data.load_graph({name!r}), "
                        f"and train a graph method on it (dgi)")
    if name == "captions":
        raise DataError("dataset 'captions' is images with captions: read it with "
                        "selfsup.data.read_captions_file(data.captions), and train an image-text method on it (clip)")
    if name == "pairs":
        raise DataError("dataset 'pairs' is image pairs with correspondences: read it with "
                        "selfsup.data.read_pairs(data.correspondences), and train dense_object_net on it")
    if name == "video":
        raise DataError("dataset 'video' is videos, not images: read it with selfsup.data.load_video_split(root, "
                        "split), and train a video method on it (tcn, r3m, video_colorization)")
    if name in SEQUENCE_DATASETS:
        raise DataError(f"dataset {name!r} is a folder of signals, not images: read it with "
                        f"selfsup.data.WavFolder(root, split), and train a sequence method on it (cpc_sequence)")
    check_size(size)
    check_channels(channels)
    if name == "folder":
        if root is None:
            raise DataError("dataset 'folder' needs root=<folder of images>")
        return load_folder(root, split, size or DEFAULT_SIZE, channels or 3, progress)
    if name == "packed":
        if root is None:
            raise DataError("dataset 'packed' needs root=<the output folder of selfsup pack>")
        return packed_split(root, split, size, workers=0).in_memory().convert(channels=channels)
    if name == "webdataset":
        if root is None:
            raise DataError("dataset 'webdataset' needs root=<its shards, e.g. shards/{split}-{000..099}.tar>")
        return webdataset_split(str(root), split, size or DEFAULT_SIZE, channels or 3, ratio=1.0,
                                workers=0).in_memory()
    if name in _IDX:
        dataset = load_idx(_IDX[name], split, root, download, progress)
    elif name in _CIFAR:
        dataset = load_cifar(_CIFAR[name], split, root, download, progress)
    else:
        if root is not None:
            raise DataError(f"dataset {name!r} ships with scikit-learn / scikit-image and takes no root, got "
                            f"root={root!r}")
        dataset = _digits(split) if name == "digits" else load_photos(split)
    return dataset.convert(size=size, channels=channels)
