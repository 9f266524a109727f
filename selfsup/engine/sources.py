"""The data of a run: :func:`load_data` gives the training source and the labelled test split for
each kind of data (images in memory or streamed, WAV windows, videos, image pairs with given
matches, captioned images, a graph), each loader usable alone (the benchmarks rebuild data with
them). Every problem with the data is a :class:`~selfsup.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric import Fabric

from selfsup import data
from selfsup.config import Config
from selfsup.engine.setup import say
from selfsup.errors import ConfigError, DataError


def load_datasets(cfg: Config, progress: bool) -> tuple[data.ImageDataset, data.ImageDataset | None]:
    """Train split (a seeded subset of ``data.max_samples`` if set), and the labelled test split
    used for monitoring and evaluation (None if absent)."""
    if data.is_streamed(cfg.data):  # nothing decoded here: the files are scanned, the pack's index read
        def read(split: str):
            return data.streamed_split(cfg.data, split, progress=progress)
    else:
        def read(split: str):
            return data.load(cfg.data.name, split, root=cfg.data.root, size=cfg.data.size,
                             channels=cfg.data.channels, download=cfg.data.download, progress=progress)
    train = read("train")
    if cfg.data.max_samples is not None and cfg.data.max_samples < len(train):
        generator = torch.Generator().manual_seed(cfg.train.seed)
        train = train.subset(torch.randperm(len(train), generator=generator)[: cfg.data.max_samples].sort().values)
    try:
        test = read("test")
    except FileNotFoundError:
        if cfg.data.name not in ("folder", "packed", "webdataset"):
            raise
        test = None  # a plain folder of unlabelled images, or training shards alone, has no test split
    if test is not None and (test.labels is None or train.labels is None):
        test = None
    return train, test


def load_sequences(cfg: Config, fabric: Fabric, progress: bool) -> tuple[data.WavFolder, data.SignalSet | None]:
    """A WAV folder's training windows (streamed) and its test split's evaluation windows."""
    d, t = cfg.data, cfg.train
    if d.root is None:
        raise ConfigError(f"data.root: dataset {d.name!r} needs the folder of <label>/*.wav files")
    try:
        train = data.WavFolder.from_config(d, "train", batch_size=t.batch_size, world_size=fabric.world_size,
                                           device=fabric.device, seed=t.seed, progress=progress)
        try:
            test = data.WavFolder.from_config(d, "test", seed=t.seed, progress=progress).dataset
        except FileNotFoundError:
            test = None
    except DataError as error:
        raise ConfigError(f"data: {error}") from None
    if train.skipped and fabric.global_rank == 0:
        shown = "; ".join(f"{path} ({why})" for path, why in list(train.skipped.items())[:5])
        say(f"skipped {len(train.skipped)} unreadable WAV file(s) of the training split: {shown}"
             + (" ..." if len(train.skipped) > 5 else ""))
    if len(train) < t.batch_size:
        raise ConfigError(f"train.batch_size: {d.root} gives {len(train)} training windows of {d.window} samples, "
                          f"fewer than train.batch_size={t.batch_size}; lower the batch size or data.window")
    return train, test


def load_video(cfg: Config, fabric: Fabric, progress: bool) -> tuple[data.VideoClips, data.VideoSet | None]:
    """A video folder's training clips (every frame decoded onto the device, or with ``data.stream``
    decoded batch by batch in workers) and its test videos (in memory)."""
    d, t = cfg.data, cfg.train
    if d.root is None:
        raise ConfigError("data.root: dataset 'video' needs a folder of videos, of frame folders, or a DAVIS root")

    size, channels = d.size or data.folder.DEFAULT_SIZE, d.channels or 3

    def read(split: str) -> data.VideoSet:
        return data.load_video_split(d.root, split, size=size, channels=channels, max_frames=d.max_frames,
                                     progress=progress)
    try:
        if d.stream:  # counted now, decoded clip by clip in workers
            train = data.streamed_video_split(d.root, "train", size=size, channels=channels, max_frames=d.max_frames,
                                              workers=d.workers)
        else:
            train = read("train")
        try:
            test = read("test")
        except DataError:
            test = None  # a folder with too few videos for a test split
        if d.stream:
            source = data.StreamedVideoClips(train, t.batch_size, fabric.world_size, t.seed, fabric.device,
                                             clips_per_video=d.clips_per_video, workers=d.workers,
                                             rank=fabric.global_rank)
        else:
            source = data.VideoClips(train, t.batch_size, fabric.world_size, t.seed, fabric.device,
                                     clips_per_video=d.clips_per_video)
    except (DataError, ValueError) as error:
        raise ConfigError(f"data: {error}") from None
    if train.skipped and fabric.global_rank == 0:
        shown = "; ".join(f"{path} ({why})" for path, why in list(train.skipped.items())[:5])
        say(f"skipped {len(train.skipped)} unreadable video(s) of the training split: {shown}"
            + (" ..." if len(train.skipped) > 5 else ""))
    if source.steps_per_epoch() < 1:
        raise ConfigError(f"train.batch_size: {d.root} gives {len(source)} clips per epoch ({len(train.names)} videos "
                          f"x data.clips_per_video={d.clips_per_video}), fewer than train.batch_size={t.batch_size}")
    return source, test


def load_pairs(cfg: Config, fabric: Fabric) -> tuple[data.PairSource, data.ImagePairs | None]:
    """Image pairs with given correspondences: the training file's and the held-out file's."""
    d, t = cfg.data, cfg.train
    if not d.correspondences:
        raise ConfigError("data.correspondences: data.name=pairs needs the JSON-lines file of image pairs and their "
                          "matches (see selfsup.data.pairs)")
    try:
        def read(file: str) -> data.ImagePairs:
            return data.read_pairs(file, root=d.root, size=d.size or data.folder.DEFAULT_SIZE, channels=d.channels or 3)
        train = read(d.correspondences)
        test = read(d.test_correspondences) if d.test_correspondences else None
    except DataError as error:
        raise ConfigError(f"data: {error}") from None
    if train.skipped and fabric.global_rank == 0:
        shown = "; ".join(f"{where} ({why})" for where, why in list(train.skipped.items())[:5])
        say(f"skipped {len(train.skipped)} pair(s) of {d.correspondences}: {shown}" + (" ..." if len(train.skipped) > 5 else ""))
    if len(train) < t.batch_size:
        raise ConfigError(f"train.batch_size: {d.correspondences} gives {len(train)} pairs, fewer than "
                          f"train.batch_size={t.batch_size}; lower the batch size")
    return data.PairSource(train, t.batch_size, fabric.world_size, t.seed, fabric.device), test


def load_image_text(cfg: Config, progress: bool) -> tuple[data.CaptionedImages, data.CaptionedImages | None]:
    """Captioned train and test splits: a captions file's (``data.name: captions``) or a labelled
    dataset's with template captions (``data.captions: templates``)."""
    d = cfg.data
    try:
        if d.name == "captions":
            if not d.captions or d.captions == "templates":
                raise ConfigError("data.captions: data.name=captions needs the captions file (.csv or .jsonl) of "
                                  "your images; data.captions=templates fills prompts with class names of a "
                                  "labelled dataset instead (e.g. data.name=fashion_mnist)")
            return data.read_captions_splits(d.captions, d.test_captions, root=d.root,
                                             size=d.size or data.folder.DEFAULT_SIZE, channels=d.channels or 3,
                                             held_out=d.held_out_classes, progress=progress)
        if d.captions != "templates":
            raise ConfigError(f"data.captions: {d.captions!r} with data.name={d.name}: a captions file goes with "
                              f"data.name=captions (and data.root, the folder of its images); for {d.name} use "
                              f"data.captions=templates")
        images, labelled_test = load_datasets(cfg, progress)
        train = data.from_templates(images, "train", held_out=d.held_out_classes)
        test = None if labelled_test is None else data.from_templates(labelled_test, "test", held_out=d.held_out_classes)
        return train, test
    except DataError as error:
        raise ConfigError(f"data: {error}") from None


def load_data(cfg: Config, fabric: Fabric, progress: bool) -> tuple[data.DataSource, Any]:
    """The training data source and the labelled test split (rank 0 downloads first)."""
    t = cfg.train
    if t.batch_size % fabric.world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by devices x nodes = "
                          f"{fabric.world_size}")
    kind = data.kind_of(cfg.data)
    if kind == "sequences":
        return load_sequences(cfg, fabric, progress)
    if kind == "video":
        with fabric.rank_zero_first():
            return load_video(cfg, fabric, progress)
    if kind == "image_pairs":
        return load_pairs(cfg, fabric)
    if kind == "image_text":
        with fabric.rank_zero_first():
            train, test = load_image_text(cfg, progress)
        source = data.ImageTextPairs(train, t.batch_size, fabric.world_size, t.seed, fabric.device)
        if len(source) < t.batch_size:
            raise ConfigError(f"train.batch_size: {len(source)} captioned training images (held-out classes left "
                              f"out), fewer than train.batch_size={t.batch_size}; lower the batch size")
        return source, test
    if kind == "graph":
        with fabric.rank_zero_first():
            try:
                graph = data.graph_from_config(cfg.data)
            except DataError as error:
                raise ConfigError(f"data: {error}") from None
        source = data.GraphSource(graph, fabric.device)
        return source, data.NodeSet(graph, graph.test_mask, graph.name)
    with fabric.rank_zero_first():
        train, test = load_datasets(cfg, progress)
    if len(train) < t.batch_size:
        raise ConfigError(f"train.batch_size: dataset {cfg.data.name!r} has {len(train)} training images, fewer "
                          f"than train.batch_size={t.batch_size}; lower the batch size")
    if data.is_streamed(cfg.data):
        return data.StreamedImages(train, t.batch_size, fabric.world_size, t.seed, fabric.device,
                                   workers=cfg.data.workers, rank=fabric.global_rank), test
    return data.InMemoryImages(train, t.batch_size, fabric.world_size, t.seed, fabric.device), test
