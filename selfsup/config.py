"""Typed run configuration, filled from a YAML recipe plus ``key=value`` overrides.

OmegaConf checks every key and type against these dataclasses, so a misspelt key or a bad value
is rejected when the recipe is read, with a one-line message (:class:`ConfigError`), not an
hour into the run. Method hyperparameters (``method_args``) are checked against the method's
constructor signature.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup.errors import ConfigError

__all__ = ["AugmentConfig", "BackboneConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "OptimConfig",
           "Optimizer", "TrainConfig", "ViewConfig", "check_resume", "from_dict", "load_config", "to_dict"]


# "auto" and the Lightning Fabric precisions selfsup trains with.
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


class Optimizer(str, Enum):
    sgd = "sgd"
    adamw = "adamw"
    adam = "adam"
    """Adam with weight decay as an L2 term added to the gradient before Adam's scaling (``torch.optim.Adam``),
    where ``adamw`` decouples it (Loshchilov and Hutter 2019): the optimiser of official code written with
    ``torch.optim.Adam(..., weight_decay=...)``, such as Dense Object Nets'."""
    lars = "lars"


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    """A name from ``selfsup.data.DATASETS`` ("folder" for your own images)."""
    root: str | None = None
    """Folder holding the files (for "folder": your images). None: the cache, downloading if allowed."""
    size: int | None = None
    """Resize images to this side; None keeps the dataset's size (required for "folder")."""
    channels: int | None = None
    """Convert to 1 or 3 channels; None keeps the dataset's."""
    download: bool = True
    max_samples: int | None = None
    """Pretrain on a random subset of this many training images (None: all of them), drawn with
    ``train.seed``: runs of one seed share it, and a sweep's spread over seeds includes the spread over
    subsets. The test split is always read whole."""
    sample_rate: int = 16000
    """Sequences ("wav"): the rate windows are read at, in Hz."""
    window: int = 20480
    """Sequences: samples per training window (CPC: 20480, 1.28 s at 16 kHz)."""
    resample: bool = True
    """Sequences: resample files at another rate (false: refuse them, naming the file)."""
    eval_windows: int = 4
    """Sequences: evenly spaced windows per file that evaluation encodes."""
    subset: str | None = None
    """Graphs ("planetoid"): which one, cora, citeseer or pubmed (default cora)."""
    captions: str | None = None
    """Pair the images with captions (image-text methods, CLIP): ``templates`` (prompts filled with
    the class names of a labelled dataset) or a ``.csv`` / ``.jsonl`` file of (image, caption[,
    label]) rows for ``name: captions`` (see ``selfsup.data.captions``). None: images only."""
    test_captions: str | None = None
    """``name: captions``: the test split's captions file (None: no test split)."""
    held_out_classes: list[str] = field(default_factory=list)
    """Classes whose images and captions pretraining never sees (zero-shot on them afterwards)."""
    stream: bool = False
    """``folder``: decode each batch in DataLoader workers instead of the whole folder up front (for
    folders larger than memory; ``packed`` always streams). See ``selfsup.data.stream``. ``video``:
    decode each batch's clips in DataLoader workers (``selfsup.data.video_stream``)."""
    workers: int = 2
    """Streamed data: DataLoader worker processes decoding batches (0: in the training process)."""
    store_ratio: float = 1.15
    """Streamed folders: images are read at side ``round(size * store_ratio)``, the room random
    crops cut from; evaluation takes the centred ``size`` square (ImageNet's resize-then-crop)."""
    correspondences: str | None = None
    """``pairs``: the JSON-lines file of image pairs and their matches (see ``selfsup.data.pairs``)."""
    test_correspondences: str | None = None
    """``pairs``: the held-out pairs' file (None: no test split)."""
    clips_per_video: int = 8
    """``video``: how many clips an epoch takes from each video (which frames: the method's choice)."""
    max_frames: int | None = None
    """``video``: decode at most this many frames of each video (None: all of them)."""
    verify: bool = False
    """``packed``: check every shard's sha256 against its index before training (headers and
    lengths are always checked)."""


@dataclass
class BackboneConfig:
    name: str = "convnet"
    width: int = 32
    """Base width of the small ConvNet, whose features are 8 x width (ignored by ResNets and ViTs); the
    sequence encoder cpc_audio has 8 x width channels too (the paper's 512: width 64)."""
    pretrained: bool = False
    """``torchvision/<model>`` / ``timm/<model>``: start from the registry's weights (downloaded where the
    network allows) and normalise with their ImageNet statistics. The floor beside each result is then
    still the same backbone with random weights (normalised the same way), not the downloaded network;
    reading the checkpoint back downloads nothing."""
    small_stem: bool | None = None
    """ResNets: a 3x3 stride-1 first convolution and no max-pool; None: for images of side <= 64
    (registry models: only when not pretrained)."""
    patch_size: int | None = None
    """vit_*: the patch side (None: 4 for images of side <= 64, else 16)."""
    norm: str | None = None
    """cpc_audio: the normalisation after each convolution, ``batch`` (None: the default; what
    CPC_audio runs to reproduce the paper), ``channel`` (per sample) or ``none`` (the paper's text).
    convnet: ``batch`` (None: the default), ``group_ws`` (GroupNorm after weight-standardised
    convolutions: no batch statistics anywhere) or ``none``."""


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.sgd
    lr: float = 0.3
    """Base learning rate for a batch of 256; the run uses lr * batch_size / 256."""
    weight_decay: float = 1e-4
    weight_decay_end: float | None = None
    """Weight decay at the last step, reached by a cosine from ``weight_decay`` (DINO: 0.04 -> 0.4); None: constant."""
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    """The cosine schedule ends at lr * min_lr_ratio."""
    exclude_bias_norm: bool | None = None
    """No weight decay (and so no LARS adaptation) for biases and normalisation parameters (1-D tensors).
    None: what the method's official code does (``Method.exclude_bias_norm``: SimCLR, BYOL, DINO, CLIP and
    MoCo v3's LARS leave them out; MoCo v1/v2, SimSiam, SupCon, InstDisc, CMC, InvaSpread, rotation,
    jigsaw, Viewmaker's encoder, DenseCL and Dense Object Nets decay every parameter)."""
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    epochs: float = 10.0
    batch_size: int = 256
    """Global batch: split evenly over devices x nodes."""
    stop_on_sigterm: bool = True
    """On SIGTERM (a scheduler's notice before preemption) every rank finishes its step, a checkpoint is
    written and the run stops (exit status 75 from the command line); ``--resume`` continues exactly.
    The handler is set only while fitting, in the main thread, and the previous one put back."""
    micro_batch_size: int | None = None
    """Gradient caching (selfsup.engine.grad_cache): each rank computes its share of the batch this
    many images at a time, and the step still gets the exact gradient of the whole batch's
    contrastive loss, with the activations of one micro-batch in memory (simclr, moco, mocov3,
    supcon, invaspread, clip). BatchNorm then normalises each micro-batch with its own statistics,
    as gradient accumulation does; networks without BatchNorm (ViTs) get the very same gradient."""
    seed: int = 0
    precision: str = "auto"
    """"auto" (bf16-mixed where the device runs it natively, else 32-true) or a Lightning Fabric precision.
    ``bf16-true`` / ``16-true`` keep every weight in 16 bits: refused by the methods with a momentum encoder
    (MoCo, MoCo v3, BYOL, DINO, DenseCL), whose update would round away, at their first step."""
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: bool | None = None
    """Global BatchNorm across devices; None: as the method's paper (SimCLR, BYOL yes; MoCo no)."""
    channels_last: bool = True
    compile: bool | None = None
    """``torch.compile`` the backbone's network and the augmentation's arithmetic (its crop, jitter,
    grayscale, blur and solarize fused into a few kernels, the parameters drawn as without it;
    ``selfsup.augment.augment_view``; RGB views on a CPU keep the faster C kernel). Compilation costs
    tens of seconds at the start. Unset (null, the default): on a CUDA GPU, compiled when the run is
    long enough to repay it (a few eager steps timed and undone; ``selfsup.engine.monitor.plan_compile``,
    the decision in results.json's ``compile_plan``), on a CPU never; ``true`` or ``false`` decide."""
    fused_views: bool = False
    """On a CUDA GPU, make each view's pixels in one Triton kernel (crop, jitter, grayscale, blur and
    solarize; ``selfsup.augment._triton``) for images and views up to 64 pixels a side, instead of
    the eager path's many small kernels; the same views to float rounding. Needs Triton (torch's
    CUDA wheels bring it); refused on a CPU, where the C kernel already fuses RGB views."""
    fused_draws: bool = False
    """With ``fused_views``, the kernel also draws each view's parameters (Philox, seeded from the run's
    RNG, so a resume draws the same): one launch per view. The same distributions as the other paths
    (tested), not the same draws; without it the parameters are drawn by the other paths' dozens of
    small kernels."""
    matmul_precision: str = "high"
    """float32 matrix products on a CUDA GPU with tensor cores (``torch.set_float32_matmul_precision``):
    ``high`` (TF32, Lightning's advice on such GPUs; the default), ``medium`` or ``highest`` (full
    float32). Nothing changes on CPUs or GPUs without tensor cores. The augmentation's crop products and the
    Lab conversion run in full float32 whatever it says (``selfsup.augment._common.full_float32_products``)."""
    time_limit: str | None = None
    """Train for about this long instead of ``epochs``: ``"10m"``, ``"90s"``, ``"1h30m"`` (pretraining
    steps; the final evaluation comes after). The number of steps is fixed before the first step
    from the step time of a few calibration steps (whose effects are undone), recorded in the
    checkpoint, and kept by a resume. Only the steps are budgeted: the kNN monitor (``knn_every``) and the
    checkpoints run on top of the limit (about 15% more on a 15 s run of digits; less the longer the steps)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (also written at the end of every epoch and of the run)."""
    keep_last: int = 0
    """Besides checkpoints/last.ckpt, keep the last k checkpoints as checkpoints/step-<N>.ckpt (0: none)."""
    save_best: str | None = None
    """Keep checkpoints/best.ckpt, the checkpoint of the best ``knn`` monitor accuracy (needs
    train.knn_every) or the lowest logged ``loss`` seen at a checkpoint; None: no best copy."""
    knn_every: int = 1
    """Epochs between online kNN accuracy checks (0: never)."""
    knn_train_samples: int = 10000
    """Labelled training images the online kNN monitor compares against (the final evaluation uses all)."""
    knn_val_fraction: float = 0.1
    """Share of the training split (stratified) whose images are the kNN monitor's queries and are kept
    out of its bank, so the curve never looks at the test split; 0 monitors on the test split instead."""
    loggers: list[str] = field(default_factory=lambda: ["tensorboard", "csv"])
    """Where metrics go: any of tensorboard, csv (logs/metrics.csv, which the report draws), wandb and
    mlflow (the extras of the same names; offline: WANDB_MODE=offline, MLflow's local file store)."""
    log_every: int = 10
    log_grad_norm: bool = False
    """Log the gradient norm of every logged step (before any clipping) and count its spikes in
    results.json's ``training`` (with ``log_every=1``, every step's)."""
    progress: bool = True
    out_dir: str = "runs/${name}"


@dataclass
class EvalConfig:
    linear: bool = True
    knn: bool = True
    knn_k: int = 200
    knn_temperature: float = 0.1
    plots: bool = True
    embedding_map: str = "umap"
    """"umap" (falls back to t-SNE when umap-learn is missing) or "tsne"."""
    save_embeddings: bool = True
    projection: bool = False
    """Also evaluate the projection head's output (``z``) by linear probe and kNN: ``linear_projection``,
    ``knn_projection`` and ``collapse_projection`` in results.json, each with its floor."""
    floor: bool = True
    """Beside every evaluation, its floor: the same evaluation of the evaluation encoder at the run's
    random initialisation (``random_init`` in results.json; cached, see ``selfsup.engine.floor``)."""


@dataclass
class ViewConfig:
    """Overrides of one augmented view (``selfsup.augment.View``); None keeps the method's value."""

    size: Any = None
    """Output side, or [height, width]."""
    scale: Any = None
    """Crop area range [min, max] as a fraction of the image, or ``whole``: no random crop, the
    whole image resized."""
    ratio: list[float] | None = None
    flip_p: float | None = None
    jitter: list[float] | None = None
    """Colour jitter strengths [brightness, contrast, saturation, hue]."""
    jitter_p: float | None = None
    gray_p: float | None = None
    blur_p: float | None = None
    blur_sigma: list[float] | None = None
    solarize_p: float | None = None
    pad: int | None = None
    """Shift the whole image by up to this many pixels, the border black (``scale: whole`` views only;
    torchvision's ``RandomCrop(size, padding=pad)``)."""


@dataclass
class AugmentConfig:
    """The method's augmentation, overridden key by key.

    Example (BYOL's asymmetric views, DINO's local crops)::

        augment:
          view: {jitter: [0.4, 0.4, 0.2, 0.1]}         # every (global) view
          views: [{blur_p: 1.0}, {blur_p: 0.1, solarize_p: 0.2}]
          n_local: 6
          local: {size: 12, scale: [0.05, 0.4]}
    """

    recipe: str | None = None
    """A named recipe (``selfsup list``) instead of the method's own; None: the method's."""
    view: ViewConfig = field(default_factory=ViewConfig)
    """Applied to every global view."""
    views: list[ViewConfig] = field(default_factory=list)
    """Applied to the global views one by one, after ``view``."""
    n_local: int | None = None
    """Number of local crops (multi-crop recipes such as DINO's)."""
    local: ViewConfig = field(default_factory=ViewConfig)
    """Applied to the local crops."""


@dataclass
class Config:
    name: str = "run"
    method: str = "simclr"
    method_args: dict[str, Any] = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _one_line(error: OmegaConfBaseException) -> str:
    message = str(error).splitlines()[0]
    key = getattr(error, "full_key", None)
    return f"{key}: {message}" if key and key not in message else message


def load_config(recipe: str | Path | None = None, overrides: typing.Sequence[str] = (),
                base: dict[str, Any] | None = None) -> Config:
    """Read a YAML recipe, apply ``key=value`` overrides, validate, and return a :class:`Config`.

    ``base`` (e.g. the configuration stored in a checkpoint) is applied first, under the recipe.

    Raises:
        FileNotFoundError: the recipe does not exist.
        ConfigError: an unknown key, a value of the wrong type, or a bad method argument.

    Examples:
        >>> cfg = load_config(None, ["train.epochs=2", "method_args.temperature=0.2"])
        >>> cfg.train.epochs
        2.0
    """
    schema = OmegaConf.structured(Config)
    if base is not None:
        _refuse_interpolations(base, "the checkpoint's configuration", references=False)
    layers: list[DictConfig] = [] if base is None else [OmegaConf.create(base)]
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {path} does not exist (recipes ship in the recipes/ folder)")
        try:
            layer = OmegaConf.load(path)
        except Exception as error:  # YAML syntax errors come in several types
            raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(layer, DictConfig):
            raise ConfigError(f"{path}: a recipe is a mapping of sections (method:, data:, train:, ...), "
                              f"this file holds a {type(layer).__name__.removesuffix('Config').lower()}")
        try:
            OmegaConf.merge(schema, layer)
        except OmegaConfBaseException as error:
            raise ConfigError(f"{path}: {_one_line(error)}") from None
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{path}: {str(error).splitlines()[0]}") from None
        _refuse_interpolations(OmegaConf.to_container(layer, resolve=False), str(path))
        layers.append(layer)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _refuse_interpolations(item, f"override {item!r}")
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(schema, *layers)
        OmegaConf.resolve(merged)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None
    except (TypeError, ValueError) as error:  # a section given a list (train=[1]), which OmegaConf does not wrap
        raise ConfigError(f"{' '.join(overrides) or 'the configuration'}: {str(error).splitlines()[0]}") from None
    validate(cfg)
    return cfg


_RESOLVER = re.compile(r"\$\{\s*[\w.\-]+\s*:")


def _refuse_interpolations(value: Any, where: str, *, references: bool = True, key: str = "") -> None:
    """A recipe, an override or a study may refer to another key (``${train.batch_size}``) but not call an
    OmegaConf resolver (``${oc.env:TOKEN}`` reads this machine's environment into the run's files, which
    are shared; a recipe someone sent must not). A checkpoint's configuration, saved resolved, holds no
    ``${`` at all. Either is one line naming the key."""
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_interpolations(item, where, references=references, key=f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _refuse_interpolations(item, where, references=references, key=f"{key}[{i}]")
    elif isinstance(value, str) and "${" in value and (not references or _RESOLVER.search(value)):
        what = "an interpolation" if not references else "a resolver call"
        raise ConfigError(f"{where}: {key + ' ' if key else ''}holds {what} ({value[:80]!r}), which selfsup does not "
                          f"evaluate in {'a saved configuration' if not references else 'recipes and settings'}; "
                          f"write the value itself (on a command line the shell's $VARIABLE expands before selfsup "
                          f"reads it)")


def parse_duration(text: str | float | int, key: str = "train.time_limit") -> float:
    """Seconds in ``"1h30m"``, ``"10m"``, ``"90s"``, ``"2.5m"`` or a plain number of seconds."""

    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*",
                             str(text))
        if not parts or not any(parts.groups()):
            raise ConfigError(f"{key}: expected a duration like 10m, 90s or 1h30m, got {text!r}")
        hours, minutes, secs = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    if not seconds > 0:
        raise ConfigError(f"{key}: must be > 0, got {text!r}")
    return seconds


def validate(cfg: Config) -> None:
    """Check values the schema's types cannot: ranges, known names, method arguments."""
    from selfsup.methods import METHODS  # the config layer is read by the engine and the CLI only

    if cfg.method not in METHODS:
        raise ConfigError(f"method: unknown method {cfg.method!r}; choose one of {', '.join(sorted(METHODS))}")
    check_method_args(METHODS[cfg.method], cfg.method_args, cfg.method)
    positive = {"train.epochs": cfg.train.epochs, "train.batch_size": cfg.train.batch_size,
                "optim.lr": cfg.optim.lr, "train.devices": cfg.train.devices,
                "train.num_nodes": cfg.train.num_nodes, "train.checkpoint_every": cfg.train.checkpoint_every,
                "train.log_every": cfg.train.log_every, "backbone.width": cfg.backbone.width}
    for key, value in positive.items():
        if not value > 0 or value == math.inf:  # NaN fails every comparison
            raise ConfigError(f"{key}: must be > 0 and finite, got {value}")
    for key, value in {"optim.weight_decay": cfg.optim.weight_decay, "optim.warmup_epochs": cfg.optim.warmup_epochs,
                       "optim.momentum": cfg.optim.momentum, "optim.min_lr_ratio": cfg.optim.min_lr_ratio,
                       "train.knn_every": cfg.train.knn_every}.items():
        if not value >= 0 or value == math.inf:
            raise ConfigError(f"{key}: must be >= 0 and finite, got {value}")
    for key, value in {"optim.grad_clip": cfg.optim.grad_clip, "eval.knn_k": cfg.eval.knn_k,
                       "eval.knn_temperature": cfg.eval.knn_temperature,
                       "train.knn_train_samples": cfg.train.knn_train_samples,
                       "train.micro_batch_size": cfg.train.micro_batch_size}.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key}: must be > 0{' (or null for none)' if key == 'optim.grad_clip' else ''}, "
                              f"got {value}")
    if len(cfg.optim.betas) != 2 or not all(0 <= beta < 1 for beta in cfg.optim.betas):
        raise ConfigError(f"optim.betas: must be two values in [0, 1), got {cfg.optim.betas}")
    if cfg.train.precision not in PRECISIONS:
        raise ConfigError(f"train.precision: must be one of {', '.join(PRECISIONS)}, got {cfg.train.precision!r}")
    if cfg.train.matmul_precision not in ("highest", "high", "medium"):
        raise ConfigError(f"train.matmul_precision: must be one of highest, high, medium, got "
                          f"{cfg.train.matmul_precision!r}")
    if not 0 <= cfg.train.knn_val_fraction < 1:
        raise ConfigError(f"train.knn_val_fraction: must be in [0, 1), got {cfg.train.knn_val_fraction}")
    if cfg.train.keep_last < 0:
        raise ConfigError(f"train.keep_last: must be >= 0, got {cfg.train.keep_last}")
    if cfg.train.save_best not in (None, "knn", "loss"):
        raise ConfigError(f"train.save_best: must be knn or loss (or null), got {cfg.train.save_best!r}")
    if cfg.train.save_best == "knn" and cfg.train.knn_val_fraction == 0:
        # The monitor would query the test split: best.ckpt chosen on the images its evaluation then scores.
        raise ConfigError("train.save_best=knn with train.knn_val_fraction=0 would choose best.ckpt on the test split "
                          "(the monitor's queries): keep a validation share (train.knn_val_fraction > 0, 0.1 by "
                          "default) or save_best=loss")
    if cfg.train.time_limit is not None:
        parse_duration(cfg.train.time_limit)
    if cfg.data.max_samples is not None and cfg.data.max_samples <= 0:
        raise ConfigError(f"data.max_samples: must be > 0, got {cfg.data.max_samples}")
    for key in ("sample_rate", "window", "eval_windows"):
        if getattr(cfg.data, key) <= 0:
            raise ConfigError(f"data.{key}: must be > 0, got {getattr(cfg.data, key)}")
    if cfg.data.workers < 0:
        raise ConfigError(f"data.workers: must be >= 0, got {cfg.data.workers}")
    if cfg.data.store_ratio < 1:
        raise ConfigError(f"data.store_ratio: must be >= 1 (the stored side is size x store_ratio), got "
                          f"{cfg.data.store_ratio}")
    if cfg.data.stream and cfg.data.name not in ("folder", "packed", "webdataset", "video"):
        raise ConfigError(f"data.stream: streams folders, packs, webdataset shards and videos (data.name=folder, "
                          f"packed, webdataset or video); {cfg.data.name} is read into memory")
    if (cfg.data.stream or cfg.data.name in ("packed", "webdataset")) and cfg.data.captions:
        raise ConfigError("data.captions: image-text pairs are read into memory; streamed images (data.stream, "
                          "data.name=packed) carry no captions")
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels: must be 1 or 3, got {cfg.data.channels}")
    if cfg.eval.embedding_map not in ("umap", "tsne"):
        raise ConfigError(f"eval.embedding_map: must be 'umap' or 'tsne', got {cfg.eval.embedding_map!r}")
    if cfg.optim.weight_decay_end is not None and cfg.optim.weight_decay_end < 0:
        raise ConfigError(f"optim.weight_decay_end: must be >= 0, got {cfg.optim.weight_decay_end}")
    if cfg.augment.n_local is not None and cfg.augment.n_local < 0:
        raise ConfigError(f"augment.n_local: must be >= 0, got {cfg.augment.n_local}")


def check_method_args(cls: type, args: dict[str, Any], name: str) -> None:
    """Reject method arguments that the constructor does not take or whose type is wrong."""
    params = {p.name: p for p in list(inspect.signature(cls.__init__).parameters.values())[2:]}
    hints = typing.get_type_hints(cls.__init__)
    for key, value in args.items():
        if key not in params:
            raise ConfigError(f"method_args.{key}: {name} has no argument {key!r}; it takes {', '.join(params)}")
        expected = hints.get(key)
        if expected in (int, float, bool, str) and not _fits(value, expected):
            raise ConfigError(f"method_args.{key}: expected {expected.__name__}, got {value!r}")


def _fits(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-dict form for checkpoints and logs (enums as strings)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore[return-value]


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of :func:`to_dict` (e.g. to rebuild the model of a checkpoint). A saved configuration is
    resolved: one that holds ``${...}`` (a crafted checkpoint reading the environment) is refused."""
    _refuse_interpolations(data, "the checkpoint's configuration", references=False)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None


# Keys a resumed run may change: how long it runs, how it logs, how it is evaluated, and whether it is
# compiled (which moves float rounding, not the arithmetic; checkpoints from before train.compile's default
# became unset hold false). Anything else (data, method, optimiser, batch, seed) would make the
# continuation a different run.
RESUMABLE = ("train.epochs", "train.checkpoint_every", "train.keep_last", "train.knn_every", "train.knn_train_samples",
             "train.compile",
             "train.knn_val_fraction", "train.log_every", "train.log_grad_norm", "train.progress", "train.loggers", "train.stop_on_sigterm",
             "data.workers", "eval.", "train.out_dir", "name")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {key: value for name, item in data.items() for key, value in _flatten(item, f"{prefix}{name}.").items()}
    return {prefix[:-1]: data}


def check_resume(saved: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """The settings ``new`` changes from the checkpoint's ``saved`` config, as (key, old, new).

    Raises:
        ConfigError: a change outside :data:`RESUMABLE`, naming the key and both values.
    """
    old, now = _flatten(to_dict(saved)), _flatten(to_dict(new))
    changes = [(key, old.get(key), now.get(key)) for key in sorted(set(old) | set(now)) if old.get(key) != now.get(key)]
    for key, before, after in changes:
        if not key.startswith(RESUMABLE):
            raise ConfigError(f"{key}: the checkpoint was trained with {before!r}, this run asks for {after!r}; a "
                              f"resumed run keeps its settings except {', '.join(RESUMABLE)}*; start a new run "
                              f"(another name= or train.out_dir=) to change it")
    return changes
