"""Setting up a run, in the order :class:`~selfsup.engine.trainer.Trainer` does it.

:func:`start_fabric` (devices, precision, DDP), :func:`load_data` (the data source and the
labelled split for monitoring and evaluation), :func:`build_method`, :func:`prepare_method`
(global BN, memory format), :func:`build_augmentation` (the method's views with the recipe's
overrides) and :func:`check_view_sizes`. Each is usable alone (the benchmarks and the command
line rebuild methods and data with them).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from lightning_fabric.strategies import DDPStrategy
from torch import nn

from selfsup import augment, data
from selfsup.config import AugmentConfig, Config, TrainConfig
from selfsup.engine.logs import build_loggers
from selfsup.errors import ConfigError, DataError
from selfsup.methods import METHODS
from selfsup.methods.base import view_count_problem
from selfsup.nn import build_backbone, convert_sync_batchnorm, eval_mode


def say(message: str) -> None:
    """Print a ``selfsup:`` line on standard error."""
    print(f"selfsup: {message}", file=sys.stderr, flush=True)


def resolve_precision(precision: str, accelerator: str) -> tuple[str, str]:
    """The Fabric precision for ``train.precision`` and why.

    ``"auto"`` is bf16 autocast where the hardware runs it natively (a CUDA GPU with bf16; a
    CPU with AVX512-BF16 or AMX, where convnets train 1.5-2.7x faster than in float32), and
    full float32 elsewhere: on CPUs with only AVX2 or plain AVX512, bf16 is emulated and many
    times slower.
    """
    if precision != "auto":
        return precision, "set by train.precision"
    if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{torch.cuda.get_device_name()} runs bf16 natively"
        return "16-mixed", f"{torch.cuda.get_device_name()} has no bf16; fp16 with a gradient scaler"
    capability = torch.backends.cpu.get_cpu_capability()
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False)()
    if native and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16-mixed", f"this CPU runs bf16 natively (AVX512-BF16/AMX; torch kernels: {capability})"
    return "32-true", (f"this CPU has no native bf16 (torch kernels: {capability}), where bf16 is emulated and "
                       "slower; set train.precision=bf16-mixed to override")


# Fabric's DDP strategy names, as DDPStrategy arguments, so that each keeps buffers per rank.
_DDP_STRATEGIES = {"auto": {}, "ddp": {}, "ddp_spawn": {"start_method": "spawn"},
                   "ddp_find_unused_parameters_true": {"find_unused_parameters": True}}


def start_fabric(t: TrainConfig, out_dir: Path, run_name: str = "selfsup", config: dict | None = None,
                 run_ids: dict[str, str] | None = None) -> tuple[Fabric, str, str]:
    """Fabric on the configured devices, launched, with the loggers of ``train.loggers`` (``run_ids``:
    the W&B / MLflow runs a resumed run continues). DDP does not broadcast buffers: queues, banks,
    centres and global-BN statistics stay equal by construction, and per-device BN statistics
    (MoCo) are each rank's own, rank 0's being the ones saved."""
    precision, why = resolve_precision(t.precision, t.accelerator)
    strategy: Any = t.strategy
    if t.devices * t.num_nodes > 1 and strategy in _DDP_STRATEGIES:
        strategy = DDPStrategy(broadcast_buffers=False, **_DDP_STRATEGIES[strategy])
    loggers = build_loggers(t.loggers, out_dir, run_name, config or {}, run_ids)
    try:
        fabric = Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
                        precision=precision, loggers=loggers)
    except ValueError as error:  # Fabric checks accelerator, devices, strategy and precision names
        raise ConfigError(f"train: {error}") from None
    if t.devices * t.num_nodes > 1:
        join_restarted_torchrun(t.accelerator)
    fabric.launch()
    use_tensor_cores(fabric.device, t.matmul_precision)
    return fabric, precision, why


def use_tensor_cores(device: torch.device, precision: str) -> bool:
    """On a CUDA GPU with tensor cores (compute capability 7.0 or more), float32 matrix products at
    ``precision`` (``train.matmul_precision``; Lightning warns that "highest" leaves them unused).
    True when set; CPUs and older GPUs are left as they are."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 7:
        return False
    torch.set_float32_matmul_precision(precision)
    return True


def join_restarted_torchrun(accelerator: str) -> None:
    """Under ``torchrun --max-restarts``, start the process group on keys of this attempt alone.

    The workers of every attempt meet in the elastic agent's one store, where the previous
    attempt's process-group keys (each rank's gloo address) are still written: a restarted rank that
    reads its peer's key before the peer has written it again connects to a process that is gone,
    and the restart fails. (Plain ``init_process_group`` is lucky when the ranks start in step;
    Fabric's slower start is not.) So the group is started here, on a store prefixed by
    ``TORCHELASTIC_RESTART_COUNT``; Fabric then finds it started. Nothing is done outside torchrun.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or torch.distributed.is_initialized():
        return
    world = int(os.environ["WORLD_SIZE"])
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                       is_master=False, timeout=timedelta(minutes=10))
    attempt = torch.distributed.PrefixStore(f"selfsup/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}",
                                            store)
    backend = "nccl" if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend, store=attempt, rank=int(os.environ["RANK"]), world_size=world)


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
        shown = "; ".join(f"{path} ({why})" for path, why in train.skipped[:5])
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


def build_method(cfg: Config, *, in_channels: int, image_size: int, mean, std,
                 num_samples: int | None = None, graph=None, captions=None) -> nn.Module:
    """The method of ``cfg`` around a fresh backbone (used for training and to rebuild checkpoints);
    ``num_samples`` (the training set's size) goes to the methods that keep a memory bank, ``graph``
    to the graph methods."""
    try:
        backbone = build_backbone(cfg.backbone.name, in_channels=in_channels, image_size=image_size,
                                  mean=mean, std=std, width=cfg.backbone.width, pretrained=cfg.backbone.pretrained,
                                  small_stem=cfg.backbone.small_stem, norm=cfg.backbone.norm,
                                  patch_size=cfg.backbone.patch_size)
    except ConfigError:
        raise  # names its key already
    except ValueError as error:
        raise ConfigError(f"backbone: {error}") from None
    cls = METHODS[cfg.method]
    extra = {"num_samples": num_samples} if getattr(cls, "needs_num_samples", False) else {}
    if extra and num_samples is None:
        raise ValueError(f"{cfg.method} keeps a memory bank: build_method needs num_samples")
    if getattr(cls, "needs_graph", False):
        if graph is None:
            raise ValueError(f"{cfg.method} learns on a graph: build_method needs graph")
        extra["graph"] = graph
    if getattr(cls, "needs_captions", False):
        extra["captions"] = captions  # None: a tower rebuilt for evaluation, which cannot train
    try:
        return cls(backbone, **cfg.method_args, **extra)
    except ValueError as error:
        raise ConfigError(f"method_args: {cfg.method}: {error}") from None


def prepare_method(method: nn.Module, t: TrainConfig, fabric: Fabric) -> nn.Module:
    """Global BatchNorm under DDP where the method's paper uses it (``train.sync_batchnorm``
    overrides), channels-last memory for convnets."""
    sync = method.sync_batchnorm if t.sync_batchnorm is None else t.sync_batchnorm
    if sync and fabric.world_size > 1:
        convert_sync_batchnorm(method, fabric.device.type, exclude=method.sync_batchnorm_exclude)
    if t.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method


def _overrides(view) -> dict[str, Any]:
    # None keeps the method's value, so the YAML spells "no random crop" as scale: whole.
    changes = {key: value for key, value in asdict(view).items() if value is not None}
    if changes.get("scale") == "whole":
        changes["scale"] = None
    return changes


def build_augmentation(method: nn.Module, cfg: AugmentConfig, image_size: int) -> augment.Augmentation | None:
    """The method's augmentation (or the named ``augment.recipe``) with the recipe's overrides,
    checked against the views the method needs: how many, and global views of one size."""
    if cfg.recipe:
        try:
            views = augment.recipe(cfg.recipe, image_size)
        except ValueError as error:
            raise ConfigError(f"augment.recipe: {error}") from None
    else:
        views = method.augmentation(image_size)
    changes = dict(view=_overrides(cfg.view), views=[_overrides(v) for v in cfg.views], n_local=cfg.n_local,
                   local=_overrides(cfg.local))
    if views is None:
        if any(changes.values()):
            raise ConfigError("augment: this method takes no image views, so it has nothing to override")
        return None
    try:
        views = augment.override(views, **changes)
    except ValueError as error:
        raise ConfigError(f"augment.{error}") from None
    problem = view_count_problem(method, len(views.output_views))
    if problem:
        raise ConfigError(f"augment: {problem}; choose a recipe (augment.recipe) or augment.n_local that gives them")
    sizes = {view.size for view in views.views}
    if len(sizes) > 1:
        raise ConfigError(f"augment.views: the global views must share one size, got {sorted(sizes)}")
    return views


@torch.no_grad()
def check_view_sizes(backbone: nn.Module, views: augment.Augmentation | None, channels: int) -> None:
    """Refuse, before training, a view size the backbone cannot take (a 7x7 local crop through the
    ConvNet's three poolings, say), with the key to change."""
    if views is None:
        return
    sizes = dict.fromkeys(view.size for view in views.output_views)
    device = next(backbone.parameters()).device
    with eval_mode(backbone):
        for size in sizes:
            try:
                backbone(torch.zeros(1, channels, *size, device=device))
            except RuntimeError as error:
                raise ConfigError(f"augment: the backbone cannot take {size[0]}x{size[1]} views "
                                  f"({str(error).splitlines()[0]}); make the views larger (augment.local.size for "
                                  f"local crops)") from None
