"""Setting up a run, in the order :class:`~selfsup.engine.trainer.Trainer` does it.

:func:`start_fabric` (devices, precision, DDP), :func:`selfsup.engine.sources.load_data` (the data
source and the labelled split for monitoring and evaluation), :func:`build_method`, :func:`prepare_method`
(global BN, memory format), :func:`build_augmentation` (the method's views with the recipe's
overrides) and :func:`check_view_sizes`. Each is usable alone (the benchmarks and the command
line rebuild methods and data with them).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from lightning_fabric.strategies import DDPStrategy
from torch import nn

from selfsup import augment
from selfsup.augment import _triton
from selfsup.config import AugmentConfig, Config, TrainConfig
from selfsup.engine.logs import build_loggers
from selfsup.errors import ConfigError
from selfsup.methods import METHODS
from selfsup.methods.base import splits_into_embeddings, view_count_problem
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
        if torch.cuda.is_bf16_supported(including_emulation=False):  # emulated (sm 7.x) is no use: fp16 there
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
_DDP_STRATEGIES = {"auto": {}, "ddp": {}, "ddp_find_unused_parameters_true": {"find_unused_parameters": True}}
# Not offered: ddp_spawn / ddp_notebook (Fabric would start the processes from a function, where selfsup's
# launcher or torchrun starts whole commands) and fsdp / deepspeed (sharded parameters, which the
# checkpoint and the gradient-caching all-reduce do not gather).


def start_fabric(t: TrainConfig, out_dir: Path, run_name: str = "selfsup", config: dict | None = None,
                 run_ids: dict[str, str] | None = None) -> tuple[Fabric, str, str]:
    """Fabric on the configured devices, launched, with the loggers of ``train.loggers`` (``run_ids``:
    the W&B / MLflow runs a resumed run continues). DDP does not broadcast buffers: queues, banks,
    centres and global-BN statistics stay equal by construction, and per-device BN statistics
    (MoCo) are each rank's own, rank 0's being the ones saved."""
    if t.strategy not in _DDP_STRATEGIES:
        raise ConfigError(f"train.strategy: {t.strategy!r} is not supported; choose one of {', '.join(_DDP_STRATEGIES)} "
                          "(several devices run DDP, launched by selfsup or torchrun)")
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
    except RuntimeError as error:  # an accelerator this machine lacks ("No supported gpu backend found!")
        raise ConfigError(f"train.accelerator={t.accelerator}: {str(error).splitlines()[0]}") from None
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


def with_random_weights(cfg: Config) -> Config:
    """``cfg`` with ``backbone.pretrained`` off and the architecture kept: the floor's network (the same
    backbone with random weights, not the downloaded ones) and the frame a checkpoint's weights are loaded
    into (which needs no download). The automatic small stem follows ``pretrained`` (a pretrained network
    keeps its ImageNet stem), so it is pinned to what the pretrained build chose."""
    if not cfg.backbone.pretrained:
        return cfg
    stem = False if cfg.backbone.small_stem is None else cfg.backbone.small_stem
    return replace(cfg, backbone=replace(cfg.backbone, pretrained=False, small_stem=stem))


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


def check_data_kind(cfg: Config, source) -> None:
    """Refuse a method whose kind of data (images, sequences, a graph, ...) the data source does not give."""
    cls = METHODS.get(cfg.method)
    kinds = getattr(cls, "data_kinds", (cls.data_kind,)) if cls is not None else (source.kind,)
    kind = kinds[0]
    if source.kind not in kinds:
        hint = ("; pair images with captions: data.captions=templates (class-name prompts) or "
                "data.name=captions with data.captions=<file>") if kind == "image_text" else ""
        raise ConfigError(f"method {cfg.method} learns from {kind}, but data.name={cfg.data.name} "
                          f"gives {source.kind}{hint}")


def check_method(cfg: Config, method: nn.Module, train_set) -> None:
    """Refuse a built method the run cannot train: one that needs labels the data lacks, or gradient
    caching (``train.micro_batch_size``) for a method whose loss does not split that way."""
    if getattr(method, "needs_labels", False) and train_set.labels is None:
        raise ConfigError(f"method {cfg.method} learns from class labels, but data.name={cfg.data.name} has "
                          f"none; give it labelled data (a folder with one subfolder per class) or choose a "
                          f"self-supervised method")
    if cfg.train.micro_batch_size and not splits_into_embeddings(method):
        raise ConfigError(f"train.micro_batch_size: {cfg.method} does not split into per-image embeddings and a "
                          f"batch loss, which gradient caching needs; methods that do: "
                          f"{', '.join(name for name, cls in METHODS.items() if splits_into_embeddings(cls))}")


def configure_speed(t: TrainConfig, fabric: Fabric, method: nn.Module, views: augment.Augmentation | None,
                    side: int) -> None:
    """``train.fused_views`` / ``fused_draws`` (the Triton view kernel, CUDA only) and ``train.compile=true``
    (:func:`compile_for_speed`; unset, :func:`selfsup.engine.monitor.plan_compile` decides), after :func:`check_view_sizes`, which would
    otherwise compile for each view size."""
    if t.fused_views and views is not None:
        if not _triton.available() or not (fabric.device.type == "cuda" or _triton.interpreted()):
            raise ConfigError("train.fused_views: needs a CUDA GPU and Triton (torch's CUDA wheels bring it); "
                              f"this run is on {fabric.device.type} with Triton "
                              f"{'available' if _triton.available() else 'missing'}")
        views.fused = True
        views.fused_draws = t.fused_draws
        large = sorted({view.size for view in views.output_views if not _triton.fits(side, side, view.size)})
        if large and fabric.global_rank == 0:
            say(f"train.fused_views: images of {side}x{side} or views of {', '.join(f'{h}x{w}' for h, w in large)} "
                f"exceed the kernel's {_triton.MAX_SIDE} pixels a side; those views take the unfused path")
    elif t.fused_draws:
        raise ConfigError("train.fused_draws: draws in the fused kernel, which needs train.fused_views=true")
    if t.compile:
        compile_for_speed(method, views)


def compile_for_speed(method: nn.Module, views: augment.Augmentation | None) -> nn.Module:
    """``torch.compile`` the backbone's network (a wrapped image network's ``net``; the backbone itself
    for the others: the graph and signal encoders) and the views' arithmetic, compiled at their first
    call. Returns the module compiled."""
    target = getattr(method.backbone, "net", None) or method.backbone
    target.compile()
    if views is not None:  # RGB views on a CPU keep the C kernel, the faster there
        views.compiled = True
    return target
