"""The pretraining loop, written out plainly on Lightning Fabric.

A :class:`Trainer` is put together in small named steps, read top to bottom:
:func:`start_fabric` (devices, precision, DDP), :func:`load_data` (the data source and the
labelled split for monitoring), :func:`build_method`, :func:`prepare_method` (global BN,
memory format), :func:`build_augmentation` (the method's views with the recipe's overrides),
the optimiser and its :class:`~selfsup.engine.optim.Schedule`, then :meth:`Trainer.restore`.

One step of :meth:`Trainer.fit`: the data source's batch of (epoch, position, rank), the views
from one batched augmentation call, ``training_step`` under autocast, a NaN/Inf check that
every rank takes together, backward, ``after_backward``, optional clipping, the optimiser
step, ``on_step_end``. Around it: atomic checkpoints, exact resume, an online kNN monitor,
CSV/TensorBoard logs, a progress bar, and pictures at the end.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from lightning_fabric.loggers import TensorBoardLogger
from lightning_fabric.strategies import DDPStrategy
from omegaconf import OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from selfsup import augment, data, distributed, evaluate, losses
from selfsup.config import AugmentConfig, Config, TrainConfig, check_resume, from_dict, parse_duration, to_dict
from selfsup.engine import checkpoint
from selfsup.engine.logs import MetricsCSV
from selfsup.engine.optim import Schedule, build_optimizer
from selfsup.errors import ConfigError, DataError, NonFiniteLossError
from selfsup.evaluate._common import stratified_sample
from selfsup.methods import METHODS, Batch, Progress
from selfsup.methods.base import view_count_problem
from selfsup.nn import build_backbone, convert_sync_batchnorm, eval_mode


@dataclass
class RunResult:
    """What a finished run leaves behind."""

    out_dir: Path
    checkpoint: Path
    history: dict[str, list[tuple[int, float]]]
    metrics: dict[str, float] = field(default_factory=dict)


def _say(message: str) -> None:
    print(f"selfsup: {message}", file=sys.stderr, flush=True)


# -- the steps that build a trainer ------------------------------------------------------------


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


def start_fabric(t: TrainConfig, out_dir: Path) -> tuple[Fabric, str, str]:
    """Fabric on the configured devices, launched. DDP does not broadcast buffers: queues, banks,
    centres and global-BN statistics stay equal by construction, and per-device BN statistics
    (MoCo) are each rank's own, rank 0's being the ones saved."""
    precision, why = resolve_precision(t.precision, t.accelerator)
    strategy: Any = t.strategy
    if t.devices * t.num_nodes > 1 and strategy in _DDP_STRATEGIES:
        strategy = DDPStrategy(broadcast_buffers=False, **_DDP_STRATEGIES[strategy])
    logger = TensorBoardLogger(out_dir, name="", version="tensorboard", default_hp_metric=False)
    try:
        fabric = Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
                        precision=precision, loggers=[logger])
    except ValueError as error:  # Fabric checks accelerator, devices, strategy and precision names
        raise ConfigError(f"train: {error}") from None
    fabric.launch()
    return fabric, precision, why


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
        if cfg.data.name not in ("folder", "packed"):
            raise
        test = None  # a plain folder of unlabelled images has no test split
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
        _say(f"skipped {len(train.skipped)} unreadable WAV file(s) of the training split: {shown}"
             + (" ..." if len(train.skipped) > 5 else ""))
    if len(train) < t.batch_size:
        raise ConfigError(f"train.batch_size: {d.root} gives {len(train)} training windows of {d.window} samples, "
                          f"fewer than train.batch_size={t.batch_size}; lower the batch size or data.window")
    return train, test


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
                                  small_stem=cfg.backbone.small_stem)
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


def _rng_state(device: torch.device) -> Tensor:
    state = torch.get_rng_state()
    if device.type == "cuda":
        state = torch.cat([state, torch.cuda.get_rng_state(device)])
    return state


def _set_rng_state(state: Tensor, device: torch.device) -> None:
    cpu_size = torch.get_rng_state().numel()
    torch.set_rng_state(state[:cpu_size].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[cpu_size:].clone(), device)


def _finite_state(module: nn.Module) -> bool:
    # Buffers too: BatchNorm's running variance overflows before any weight does.
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


CALIBRATION_STEPS, CALIBRATION_WARMUP = 12, 3
"""``train.time_limit``: steps timed before the run (undone), of which the first few warm up."""

class Trainer:
    """Runs one pretraining job described by a :class:`Config`. Use :func:`pretrain`."""

    def __init__(self, cfg: Config, resume_state: dict[str, Any] | None = None, command: str | None = None) -> None:
        self.started = time.perf_counter()
        self.cfg, self.command = cfg, command
        self.train_seconds = 0.0
        self.fit_started = self.started
        t = cfg.train
        self.out_dir = Path(t.out_dir)
        self.ckpt_path = self.out_dir / "checkpoints" / "last.ckpt"
        self.fabric, self.precision, precision_reason = start_fabric(t, self.out_dir)
        fabric = self.fabric
        self.is_main = fabric.global_rank == 0
        self.say(f"precision {self.precision}: {precision_reason}")

        fabric.seed_everything(t.seed, verbose=False)  # identical initial weights on every rank
        self.source, self.test_set = load_data(cfg, fabric, progress=t.progress and self.is_main)
        self.train_set = self.source.dataset
        self.steps_per_epoch = self.source.steps_per_epoch()
        # What images/s counts: images, signal windows, or a graph's nodes (its batch is the whole graph).
        self.items_per_step = len(self.source) if self.source.kind == "graph" else t.batch_size
        self.max_steps = max(1, math.ceil(t.epochs * self.steps_per_epoch))
        if t.time_limit is not None and resume_state is not None:  # the plan of the first start, not a new one
            self.max_steps = int(resume_state.get("run", {}).get("max_steps", self.max_steps))

        kind = METHODS[cfg.method].data_kind if cfg.method in METHODS else self.source.kind
        if kind != self.source.kind:
            hint = ("; pair images with captions: data.captions=templates (class-name prompts) or "
                    "data.name=captions with data.captions=<file>") if kind == "image_text" else ""
            raise ConfigError(f"method {cfg.method} learns from {kind}, but data.name={cfg.data.name} "
                              f"gives {self.source.kind}{hint}")
        method = build_method(cfg, in_channels=self.train_set.channels, image_size=self.train_set.size,
                              mean=self.train_set.mean().tolist(), std=self.train_set.std().tolist(),
                              num_samples=len(self.train_set), graph=getattr(self.source, "graph", None),
                                   captions=getattr(self.source, "captions", None))
        if getattr(method, "needs_labels", False) and self.train_set.labels is None:
            raise ConfigError(f"method {cfg.method} learns from class labels, but data.name={cfg.data.name} has "
                              f"none; give it labelled data (a folder with one subfolder per class) or choose a "
                              f"self-supervised method")
        self.method = prepare_method(method, t, fabric)
        self.augment = build_augmentation(self.method, cfg.augment, self.train_set.size)
        # No augmentation, or views without a random crop (pretext tasks' "flip", "none"), take a streamed
        # batch's centre, the square evaluation sees, rather than the whole stored image with its 15% margin.
        self.center_first = isinstance(self.source, data.StreamedImages) and (
            self.augment is None or all(view.scale is None for view in self.augment.output_views))
        check_view_sizes(self.method.backbone, self.augment, self.train_set.channels)
        if t.compile:  # after the size check, which would otherwise compile for each view size
            self.method.backbone.net.compile()

        base_lr = cfg.optim.lr * t.batch_size / 256
        optimizer = build_optimizer(self.method, cfg.optim, base_lr)
        self.schedule = Schedule.build(cfg.optim, base_lr, self.max_steps, self.steps_per_epoch)
        self.model, self.optimizer = fabric.setup(self.method, optimizer)

        self.start_step = 0
        self.history: dict[str, list[tuple[int, float]]] = {"loss": [], "knn": [], "lr": [], "images_per_s": []}
        # The loss summed since the last logged step (a tensor, read only when logged or saved, so
        # that no step waits for the device) and how many steps that is: checkpointed, so a resumed
        # run logs the same means as an uninterrupted one.
        self.window_loss, self.window_steps = torch.zeros((), device=fabric.device), 0
        self.time_plan: dict[str, float] = {}
        if resume_state is not None:
            self.restore(resume_state)
        else:
            torch.manual_seed(t.seed + 7919 * fabric.global_rank)  # different views on every rank
            if t.time_limit is not None:
                self.plan_time_limit(parse_duration(t.time_limit))
        if self.is_main:
            log_path = self.out_dir / "logs" / "metrics.csv"
            self.metrics_log = MetricsCSV(log_path, self.start_step if resume_state is not None else None)

    def say(self, message: str) -> None:
        """Print a ``selfsup:`` line on rank 0 (standard error)."""
        if self.is_main:
            _say(message)

    def on_rank_zero(self, what: str, work: Callable[[], Any]) -> Any:
        """``work()`` on rank 0; if it raises there, every rank raises, so no rank waits forever
        in a collective the failed rank never reaches."""
        result, error = None, None
        if self.is_main:
            try:
                result = work()
            except Exception as caught:  # re-raised below, on every rank
                error = caught
        if not distributed.all_true(error is None, self.fabric.device):
            if error is not None:
                raise error
            raise RuntimeError(f"rank 0 failed while {what}; its error is in its output")
        return result

    # -- state -----------------------------------------------------------------------------
    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimiser, scaler, history and every rank's RNG."""
        step = int(state["step"])
        if step > self.max_steps:
            raise ConfigError(f"train.epochs={self.cfg.train.epochs} ends at step {self.max_steps}, before the "
                              f"checkpoint's step {step}")
        rng = state["rng"]
        if len(rng) != self.fabric.world_size:
            raise ConfigError(f"the checkpoint was written by {len(rng)} processes, this run has "
                              f"{self.fabric.world_size}; resume with the same devices x nodes")
        saved = state.get("run", {})
        for key, now in (("precision", self.precision), ("device", self.fabric.device.type)):
            if key in saved and saved[key] != now:
                raise ConfigError(f"train.{'precision' if key == 'precision' else 'accelerator'}: the checkpoint "
                                  f"was trained with {key} {saved[key]!r}, this run resolves to {now!r}; an exact "
                                  f"resume needs the same (set train.precision / train.accelerator explicitly)")
        self._check_same_data(state.get("data", {}))
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("precision"):  # the fp16 gradient scaler's state; empty for other precisions
            self.fabric.strategy.precision.load_state_dict(state["precision"])
        self.start_step = step
        self.time_plan = dict(saved.get("time_plan", {}))
        self.history = {"images_per_s": [], **state["history"]}
        self.train_seconds = float(saved.get("train_seconds", 0.0))
        window_loss, self.window_steps = saved.get("loss_window", (0.0, 0))
        self.window_loss.fill_(window_loss)
        _set_rng_state(rng[self.fabric.global_rank], self.fabric.device)
        old_steps = int(saved.get("max_steps", self.max_steps))
        self.say(f"resuming at step {step} of {self.max_steps} (epoch {step / self.steps_per_epoch:g})")
        if old_steps != self.max_steps and step < self.max_steps:
            self.say(f"the run now has {self.max_steps} steps instead of {old_steps}: the warmup + cosine LR "
                     f"schedule and the method's schedules are recomputed over the new length (as timm does), "
                     f"so the LR at step {step} is {self.schedule.lr[step]:.4g} where the old schedule ended at "
                     f"{self.schedule.base_lr * self.cfg.optim.min_lr_ratio:.4g}")

    def save(self, step: int) -> None:
        """Atomically write the state after ``step`` steps (all ranks take part, rank 0 writes)."""
        if not distributed.all_true(_finite_state(self.method), self.fabric.device):
            raise NonFiniteLossError(f"{self.cfg.method}: the weights or statistics hold NaN/Inf at step {step}; "
                                     f"{self._kept()}. {self._hint()}")
        rng = self.fabric.all_gather(_rng_state(self.fabric.device))
        rng = [rng] if self.fabric.world_size == 1 else list(rng)

        def write() -> None:
            run = {"max_steps": self.max_steps, "precision": self.precision, "device": self.fabric.device.type,
                   "train_seconds": self.train_seconds + time.perf_counter() - self.fit_started,
                   "loss_window": [float(self.window_loss), self.window_steps], "time_plan": self.time_plan}
            state = {"model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "precision": self.fabric.strategy.precision.state_dict(), "step": step,
                     "epoch": step / self.steps_per_epoch, "config": to_dict(self.cfg), "run": run,
                     "rng": [r.cpu() for r in rng], "history": self.history,
                     "data": {"channels": self.train_set.channels, "size": self.train_set.size,
                              "num_train": len(self.train_set), **self._data_fingerprint()}}
            checkpoint.save_atomic(state, self.ckpt_path)

        self.on_rank_zero(f"writing {self.ckpt_path}", write)

    def _gather_skipped(self) -> None:
        """Every rank's unreadable files into rank 0's report (each rank met those of its shares)."""
        skipped = getattr(self.source, "skipped", None)
        if skipped is None or self.fabric.world_size == 1 or not torch.distributed.is_initialized():
            return
        everyone: list[dict[str, str] | None] = [None] * self.fabric.world_size
        torch.distributed.all_gather_object(everyone, dict(skipped))
        for found in everyone:
            for path, reason in (found or {}).items():
                skipped.setdefault(path, reason)

    def _data_fingerprint(self) -> dict[str, str]:
        """A streamed split's sha256 of its file names: a resume must read the same files."""
        fingerprint = getattr(self.train_set, "fingerprint", None)
        return {"files_sha256": fingerprint()} if fingerprint is not None else {}

    def _check_same_data(self, saved: dict[str, Any]) -> None:
        count = saved.get("num_train")
        if count is not None and count != len(self.train_set):
            raise ConfigError(f"data: the checkpoint was trained on {count:,} samples, {self.cfg.data.name} now gives "
                              f"{len(self.train_set):,}; an exact resume needs the same data (files added or "
                              f"removed change every epoch's order)")
        if "files_sha256" in saved and saved["files_sha256"] != self._data_fingerprint().get("files_sha256"):
            raise ConfigError(f"data.root: the files under {self.cfg.data.root} are not the ones the checkpoint "
                              f"was trained on (same count, other names); an exact resume needs the same files")

    def _kept(self) -> str:
        if self.ckpt_path.exists():
            return f"the last good checkpoint is {self.ckpt_path}"
        return "no checkpoint was written yet"

    def _hint(self) -> str:
        hint = (f"Try a lower optim.lr (now {self.cfg.optim.lr}), optim.grad_clip=1.0 or a longer "
                f"optim.warmup_epochs (now {self.cfg.optim.warmup_epochs})")
        return hint + ("" if self.precision == "32-true" else ", or train.precision=32-true")

    # -- one step --------------------------------------------------------------------------
    def make_batch(self, epoch: int, position: int) -> Batch:
        """The views of this rank's share of global batch ``position`` of ``epoch``."""
        raw = self.source.batch(epoch, position, self.fabric.global_rank)
        if self.source.kind not in ("images", "image_text"):  # signals, node features: float already
            return Batch([raw.images], raw.index, raw.labels, raw.extra)
        images = _eval_view(raw.images, self.train_set) if self.center_first else raw.images
        if self.augment is None:  # the images as they are, one float view
            return Batch([augment.to_float(images)], raw.index, raw.labels, raw.extra)
        with torch.no_grad():
            views = self.augment(images)
        if self.cfg.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return Batch(views, raw.index, raw.labels, raw.extra)

    def forward(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        """``training_step`` through the Fabric/DDP wrapper; every rank stops together on NaN/Inf.

        The losses' own NaN checks are off here: a loss that raised on one rank would skip the
        collectives (gathered negatives, centres, queues) the other ranks wait in. A NaN input
        gives a NaN loss, and the ranks agree on the loss with one all-reduce.
        """
        with losses.finite_checks(False):
            outputs = self.model(batch, progress)
        loss = outputs["loss"].detach()
        finite = bool(torch.isfinite(loss))
        if not distributed.all_true(finite, self.fabric.device):
            where = f"the loss is {loss.item()}" if not finite else "another rank's loss is NaN/Inf"
            raise NonFiniteLossError(f"{self.cfg.method}: {where} at step {progress.step} (epoch "
                                     f"{progress.epoch:.2f}); {self._kept()}. {self._hint()}")
        return outputs

    def draw_views(self, count: int = 8) -> None:
        """``views.png``: a few training images and the views the method gets from them."""
        if not (self.cfg.eval.plots and self.augment is not None):
            return

        def draw() -> None:
            images = self.source.images[:count].to(self.fabric.device)
            generator = torch.Generator(images.device).manual_seed(self.cfg.train.seed)
            views = self.augment(images, generator=generator)  # its own generator: training RNG untouched
            n_global = len(self.augment.views)
            names = [f"view {i + 1}" if i < n_global else f"local {i - n_global + 1}" for i in range(len(views))]
            evaluate.plot_views(images, views, self.out_dir / "views.png", names=names,
                                title=f"{self.cfg.method} views of {self.cfg.data.name}")

        self.on_rank_zero("drawing views.png", draw)

    def fit(self) -> None:
        """Train from ``start_step`` to ``max_steps``: log, monitor and checkpoint along the way."""
        cfg, t, fabric = self.cfg, self.cfg.train, self.fabric
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_dict(cfg)))
        if self.start_step == 0:
            self.draw_views()
        self.fit_started = time.perf_counter()
        bar = tqdm(total=self.max_steps, initial=self.start_step, desc=f"{cfg.method} {cfg.name}",
                   unit="step", disable=not (t.progress and self.is_main), dynamic_ncols=True)
        window_start = time.perf_counter()
        status = "failed"
        try:
            for step in range(self.start_step, self.max_steps):
                outputs, lr = self.train_step(step)
                self.window_loss += outputs["loss"].detach()
                self.window_steps += 1
                done = step + 1
                if done % t.log_every == 0 or done == self.max_steps:
                    mean_loss = float(fabric.all_reduce(self.window_loss / self.window_steps, reduce_op="mean"))
                    images_per_s = self.window_steps * self.items_per_step / (time.perf_counter() - window_start)
                    metrics = {"loss": mean_loss, "lr": lr, "images_per_s": images_per_s,
                               "epoch": done / self.steps_per_epoch}
                    metrics.update({k: float(v) for k, v in outputs.items() if k != "loss"})
                    self.log(metrics, done)
                    self.history["loss"].append((done, mean_loss))
                    self.history["lr"].append((done, lr))
                    self.history["images_per_s"].append((done, images_per_s))
                    for key in getattr(self.method, "curves", ()):
                        if key in metrics:
                            self.history.setdefault(key, []).append((done, metrics[key]))
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:,.0f}", lr=f"{lr:.3g}",
                                    refresh=False)
                    bar.update(done - bar.n)
                    window_start = time.perf_counter()
                    self.window_loss.zero_()
                    self.window_steps = 0
                epoch_end = done % self.steps_per_epoch == 0
                if epoch_end and t.knn_every and (done // self.steps_per_epoch) % t.knn_every == 0:
                    accuracy = self.knn_monitor()
                    if accuracy is not None:
                        self.log({"knn_accuracy": accuracy}, done)
                        self.history["knn"].append((done, accuracy))
                        if t.progress:
                            self.say(f"epoch {done // self.steps_per_epoch}: kNN accuracy {accuracy:.4f}")
                if done % t.checkpoint_every == 0 or epoch_end or done == self.max_steps:
                    self.save(done)
            self._gather_skipped()
            status = "success"
        finally:
            self.train_seconds += time.perf_counter() - self.fit_started
            bar.close()
            close = getattr(self.source, "close", None)
            if close is not None:  # a streamed source's workers stop before evaluation needs the cores
                close()
            for logger in fabric.loggers:
                logger.finalize(status)

    def train_step(self, step: int) -> tuple[dict[str, Tensor], float]:
        """One optimisation step (the method's outputs and the learning rate it used)."""
        progress = Progress(step, self.max_steps, self.steps_per_epoch)
        batch = self.make_batch(*divmod(step, self.steps_per_epoch))
        lr = self.schedule.apply(self.optimizer, step)
        outputs = self.forward(batch, progress)
        self.fabric.backward(outputs["loss"])
        self.fabric.strategy.precision.unscale_gradients(self.optimizer.optimizer)  # a no-op without fp16
        self.method.after_backward(progress)
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_step_end(progress)
        return outputs, lr

    def plan_time_limit(self, limit_s: float) -> None:
        """Fix ``max_steps`` from ``train.time_limit``: time a few steps, undo them, and keep as many
        steps as fit in what is left of the limit. Every rank takes rank 0's measurement."""
        started = time.perf_counter()
        weights = {k: v.clone() for k, v in self.method.state_dict().items()}
        optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        rng = _rng_state(self.fabric.device)
        calibration = min(CALIBRATION_STEPS, self.max_steps)
        marks = []
        for step in range(calibration):
            outputs, _ = self.train_step(step)
            float(outputs["loss"].detach())  # wait for the device
            marks.append(time.perf_counter())
        timed = marks[CALIBRATION_WARMUP:] if calibration > CALIBRATION_WARMUP + 1 else marks
        per_step = (timed[-1] - (timed[0] if len(timed) > 1 else started)) / max(1, len(timed) - 1)
        per_step = float(self.fabric.broadcast(torch.tensor(per_step, device=self.fabric.device), src=0))
        self.method.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer_state)
        _set_rng_state(rng, self.fabric.device)
        left = limit_s - (time.perf_counter() - started)
        self.max_steps = max(1, int(left // per_step))
        self.schedule = Schedule.build(self.cfg.optim, self.schedule.base_lr, self.max_steps, self.steps_per_epoch)
        self.time_plan = {"time_limit_s": limit_s, "step_s": per_step, "calibration_steps": calibration}
        self.say(f"train.time_limit={self.cfg.train.time_limit}: {1000 * per_step:.1f} ms per step over "
                 f"{calibration} calibration steps (undone) -> {self.max_steps:,} steps "
                 f"({self.max_steps / self.steps_per_epoch:.2f} epochs)")

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Write metrics to TensorBoard and (rank 0) ``logs/metrics.csv``."""
        self.fabric.log_dict(metrics, step=step)
        if self.is_main:
            self.metrics_log.log(metrics, step)

    def monitor_split(self) -> tuple[Tensor, Tensor] | None:
        """The kNN monitor's (bank, queries) rows of the training split, both seeded.

        Queries are a stratified ``train.knn_val_fraction`` of the training images, kept out of
        the bank, so the curve is measured on images whose labels it never compares against and
        the test split is left for the final evaluation. Every image, queries included, is still
        unlabelled pretraining data, as in any self-supervised run. With ``knn_val_fraction=0``
        the bank is the training split and the queries are the test split (None).
        """
        labels = self.train_set.labels
        n, t = len(self.train_set), self.cfg.train
        generator = torch.Generator().manual_seed(t.seed)
        if t.knn_val_fraction == 0:
            return torch.randperm(n, generator=generator)[: min(n, t.knn_train_samples)], None
        count = min(n - 1, max(1, round(t.knn_val_fraction * n)))
        queries = torch.from_numpy(stratified_sample(labels.cpu().numpy(), count, np.random.default_rng(t.seed)))
        rest = torch.ones(n, dtype=torch.bool)
        rest[queries] = False
        rest = rest.nonzero().squeeze(1)
        return rest[torch.randperm(len(rest), generator=generator)[: t.knn_train_samples]], queries

    def knn_monitor(self) -> float | None:
        """Weighted kNN accuracy of the current eval encoder on held-out training images (rank 0 computes)."""
        if self.train_set.labels is None or (self.cfg.train.knn_val_fraction == 0 and self.test_set is None):
            return None

        def measure() -> float:
            bank, queries = self.monitor_split()
            encoder = self.method.eval_encoder()
            autocast = self.fabric.device.type == "cuda" or "bf16" in self.precision
            kwargs = dict(device=self.fabric.device, autocast=autocast, kind=self.source.kind)
            images, labels = self.source.inputs, self.train_set.labels
            if queries is None:
                query_images, query_labels = self.test_set.inputs, self.test_set.labels
            else:
                query_images, query_labels = _rows(images, queries), labels[queries]
            bank_x = evaluate.extract_features(encoder, _rows(images, bank), **kwargs)
            query_x = evaluate.extract_features(encoder, query_images, **kwargs)
            return evaluate.knn_accuracy(bank_x, labels[bank], query_x, query_labels, k=self.cfg.eval.knn_k,
                                         temperature=self.cfg.eval.knn_temperature)

        accuracy = self.on_rank_zero("measuring the kNN monitor", measure)
        return float(self.fabric.broadcast(torch.tensor(accuracy or 0.0, device=self.fabric.device), src=0))


def _eval_view(images: Tensor, dataset) -> Tensor:
    """A streamed batch's evaluation view: the centred square evaluation sees, at the training size."""
    return data.stream.eval_view(images, dataset.view, dataset.size)


def _rows(images, index: Tensor):
    """Rows ``index`` of a tensor, or of a streamed split (still unread)."""
    if isinstance(images, data.ImageStream):
        return images.subset(index)
    return images[index.to(images.device)]


def _commit() -> str | None:
    """The git commit of the selfsup source tree, when it is a checkout (for results.json)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


BANK_KNN_PROTOCOL = ("weighted k-nearest neighbours against the method's memory bank, as InstDisc evaluates (Wu et "
                     "al. 2018, sec. 3.4): the k={k} bank entries (one per training image, as training left them) "
                     "of highest cosine similarity s to the test image's feature vote for their class with weight "
                     "exp(s / {temperature}); top-1 accuracy on the test split")


def bank_knn_entry(bank: tuple[Tensor, nn.Module, float], train_labels: Tensor, test: data.ImageDataset, *,
                   data: str, k: int, device: torch.device) -> dict[str, Any]:
    """The ``bank_knn`` results entry: the paper's kNN over a method's memory bank."""
    features, embedder, temperature = bank
    if len(features) != len(train_labels):
        raise ValueError(f"the memory bank has {len(features)} rows but the training set {len(train_labels)} images")
    test_x = evaluate.extract_features(embedder, test.images, device=device)
    accuracy = evaluate.knn_accuracy(features.float().cpu(), train_labels.cpu(), test_x, test.labels, k=k,
                                     temperature=temperature)
    return {"accuracy": accuracy, "k": k, "temperature": temperature, "data": data,
            "protocol": BANK_KNN_PROTOCOL.format(k=k, temperature=temperature)}


def finish(trainer: Trainer) -> dict[str, float]:
    """Final evaluation and pictures on rank 0, on the test split (read here only): linear probe,
    kNN, few-shot episodes, retrieval (``evaluate.frozen_evaluations``); curves, embedding map,
    retrieval grid, embeddings, ``results.json`` (schema in ``selfsup.evaluate.report``) and the
    run's page ``report.html``."""
    cfg, out = trainer.cfg, trainer.out_dir
    metrics: dict[str, float] = {}
    if not trainer.is_main:
        return metrics
    if cfg.eval.plots:
        curves = {k: v for k, v in trainer.history.items() if v and k not in ("lr", "images_per_s")}
        evaluate.plot_curves(curves, out / "curves.png", title=f"{cfg.method} on {cfg.data.name}")
    evaluations: dict[str, dict[str, Any]] = {}
    test = trainer.test_set
    labelled = test is not None and test.labels is not None and trainer.train_set.labels is not None
    if labelled:
        device = trainer.fabric.device
        encoder = trainer.method.eval_encoder()
        train_images, train_y = trainer.source.inputs, trainer.train_set.labels
        kind = trainer.source.kind
        train_x = evaluate.extract_features(encoder, train_images, device=device, progress=cfg.train.progress,
                                            kind=kind)
        test_x = evaluate.extract_features(encoder, test.inputs, device=device, kind=kind)
        evaluations = evaluate.frozen_evaluations(train_x, train_y, test_x, test.labels, data=cfg.data.name,
                                                  linear=cfg.eval.linear, knn=cfg.eval.knn, knn_k=cfg.eval.knn_k,
                                                  knn_temperature=cfg.eval.knn_temperature)
        bank = trainer.method.memory_bank() if cfg.eval.knn else None
        if bank is not None and train_y is not None:
            evaluations["bank_knn"] = bank_knn_entry(bank, train_y, test, data=cfg.data.name, k=cfg.eval.knn_k,
                                                     device=device)
        metrics.update({f"{key}_accuracy": evaluations[key]["accuracy"] for key in ("linear", "knn", "bank_knn")
                        if key in evaluations})
        if cfg.eval.save_embeddings:
            evaluate.save_embeddings(out, test_x, test.labels, prefix="test_embeddings")
        if cfg.eval.plots:
            evaluate.plot_embedding(test_x, test.labels, out / f"{cfg.eval.embedding_map}.png",
                                    method=cfg.eval.embedding_map, classes=test.classes)
            if trainer.source.kind in ("images", "image_text"):
                evaluate.retrieval_picture(train_images, train_x, train_y, test.images, test_x, test.labels,
                                           out / "retrieval.png", classes=test.classes)
    own = getattr(trainer.method, "extra_evaluations", None)  # what only this method can measure (CLIP: zero-shot)
    if test is not None and own is not None:
        entries = own(test, data=cfg.data.name, device=trainer.fabric.device)
        evaluations.update(entries)
        metrics.update({f"{key}_accuracy": entry["accuracy"] for key, entry in entries.items() if "accuracy" in entry})
    skipped = dict(getattr(trainer.source, "skipped", {}) or {})
    if test is not None:
        skipped.update(getattr(test, "skipped", {}) or {})
    if skipped:
        shown = "; ".join(f"{path} ({why})" for path, why in list(skipped.items())[:5])
        _say(f"skipped {len(skipped)} unreadable image file(s), each slot filled by the next readable file: {shown}"
             + (" ..." if len(skipped) > 5 else ""))
    rates = [rate for _, rate in trainer.history.get("images_per_s", [])[1:]]  # the first window warms up
    results = {"name": cfg.name, "method": cfg.method, "data": cfg.data.name, "backbone": cfg.backbone.name,
               "epochs": round(trainer.max_steps / trainer.steps_per_epoch, 4) if trainer.time_plan else cfg.train.epochs,
               "batch_size": cfg.train.batch_size, "steps": trainer.max_steps,
               **({"time_plan": trainer.time_plan} if trainer.time_plan else {}),
               "precision": trainer.precision, "device": trainer.fabric.device.type,
               "devices": trainer.fabric.world_size, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "command": trainer.command, "commit": _commit(),
               "wall_time_s": round(time.perf_counter() - trainer.started, 1),
               "pretrain_time_s": round(trainer.train_seconds, 1),
               "images_per_s": round(float(np.median(rates)), 1) if rates else None,
               **({"skipped_files": [{"path": p, "reason": r} for p, r in skipped.items()]} if skipped else {}),
               **metrics, "evaluations": evaluations}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if cfg.eval.plots:
        evaluate.write_report(out)  # report.html; `selfsup report` redraws it after more evaluations
    return metrics


def pretrain(cfg: Config, *, resume: str | Path | bool = False, command: str | None = None) -> RunResult:
    """Pretrain ``cfg.method`` on ``cfg.data``, evaluate, and return where everything went.

    Args:
        cfg: the run configuration (see :mod:`selfsup.config`).
        resume: ``True`` to continue from ``<out_dir>/checkpoints/last.ckpt``, or a checkpoint
            path. The run continues exactly as if it had never stopped (same data order, same
            random views, same weights). ``cfg`` must equal the checkpoint's configuration except
            for the keys in ``selfsup.config.RESUMABLE`` (``train.epochs`` extends or shortens the
            run; the schedules are then recomputed over the new length).
        command: the command line that started the run, recorded in ``results.json``.

    Raises:
        ConfigError: ``cfg`` changes a setting a resumed run cannot change.
        NonFiniteLossError: the loss or the weights became NaN/Inf (all ranks stop together).
    """
    state = None
    if resume:
        path = Path(cfg.train.out_dir) / "checkpoints" / "last.ckpt" if resume is True else Path(resume)
        state = checkpoint.load(path)
        for key, before, after in check_resume(from_dict(state["config"]), cfg):
            if distributed.rank() == 0:
                _say(f"resume changes {key}: {before!r} -> {after!r}")
    trainer = Trainer(cfg, state, command)
    trainer.fit()
    metrics = finish(trainer)
    return RunResult(trainer.out_dir, trainer.ckpt_path, trainer.history, metrics)
