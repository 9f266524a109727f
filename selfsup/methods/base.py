"""The method protocol: what every method provides, what it receives, and the defaults.

A method is a plain ``nn.Module`` (no trainer inside). Per step the engine asks the data source
for the batch of (epoch, position, rank), makes the views with ``method.augmentation(size)``
(batched, on the device), and then::

    outputs = method.training_step(batch, progress)     # {"loss": ..., metrics...}
    backward(outputs["loss"])
    method.after_backward(progress)                     # e.g. DINO freezes its last layer
    optimizer.step()                                    # groups from method.param_groups()
    method.on_step_end(progress)                        # EMA, queue, bank, schedules

``eval_encoder()`` is what evaluation, ``selfsup embed`` and export use.

Gradient caching (``train.micro_batch_size``, :mod:`selfsup.engine.grad_cache`) needs the step in
two halves, which the contrastive methods provide (:func:`splits_into_embeddings`)::

    embeddings = method.embed(batch, progress)           # {name: (B, ...)} per image, rows as the batch's
    outputs = method.loss_from(embeddings, batch, progress)   # the batch loss; its side effects (queues)

with ``training_step(batch) == loss_from(embed(batch), batch)``; ``embed`` has no side effects and
its rows depend only on their own images (and BatchNorm statistics), so the engine can compute it
micro-batch by micro-batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from selfsup import augment


@dataclass
class Progress:
    """Where training stands, so that schedules can be written in steps or in epochs.

    (Not a frozen dataclass: Fabric maps the inputs of a module's forward through
    ``apply_to_collection``, which refuses frozen dataclasses.)

    Attributes:
        step: optimiser steps done before this one (0-based index of the current step).
        max_steps: steps of the whole run.
        steps_per_epoch: steps in one pass over the training set.
    """

    step: int
    max_steps: int
    steps_per_epoch: int

    @property
    def epoch(self) -> float:
        """Epochs done, as a float (2.5 is half-way through the third epoch)."""
        return self.step / self.steps_per_epoch


@dataclass
class Batch:
    """One training batch of images.

    Attributes:
        views: augmented views, each float ``(B, C, H, W)`` in [0, 1]; their number and sizes
            are those of the method's augmentation (2 for SimCLR, 2 + n_local for DINO).
        index: ``(B,)`` positions of the images in the dataset (for memory banks).
        labels: ``(B,)`` class labels when the dataset has them, else None; methods with
            ``needs_labels`` (SupCon, triplet, N-pair) learn from them, the others never look.
        extra: what else the data source gives (a graph's ``edge_index``) and, for a method with
            ``view_geometry``, where the views came from (``view_boxes``, ``view_flips``).
    """

    views: list[Tensor]
    index: Tensor
    labels: Tensor | None = None
    extra: dict[str, Tensor] | None = None


@runtime_checkable
class Method(Protocol):
    """The method protocol (see the module docstring for when the engine calls what).

    Attributes:
        data_kind: the data it learns from: "images", "image_text", "sequences", "video" or "graph"; a
            method that learns from several kinds lists them in ``data_kinds`` (Dense Object Nets:
            images, and image pairs with given matches), the first its ``data_kind``.
        views_needed: (fewest, most) views a batch must have (most None: no limit), checked when
            a run is configured.
        sync_batchnorm: whether the paper uses BatchNorm statistics of the global batch under DDP.
        sync_batchnorm_exclude: names of submodules kept out of SyncBN (MoCo's key encoder).
        exclude_bias_norm: whether the official code keeps biases and normalisation parameters out of
            weight decay (``optim.exclude_bias_norm`` overrides).
    """

    data_kind: str
    views_needed: tuple[int, int | None]
    sync_batchnorm: bool
    sync_batchnorm_exclude: tuple[str, ...]

    def augmentation(self, image_size: int) -> augment.Augmentation | None:
        """The views the method wants for images of side ``image_size``; None: no augmentation."""
        ...

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        """Return a dict with the scalar ``loss`` to minimise and any metrics to log."""
        ...

    def param_groups(self) -> list[dict]:
        """Parameter groups: ``{"params": [...], "lr_scale": 1.0, "fixed_lr": False,
        "weight_decay_scale": 1.0}``; the engine splits off biases and norms and applies the schedules."""
        ...

    def after_backward(self, progress: Progress) -> None:
        """Change the gradients after backward, before the optimiser step."""
        ...

    def on_step_end(self, progress: Progress) -> None:
        """Update state after the optimiser step (momentum encoders, queues, schedules)."""
        ...

    def eval_encoder(self) -> nn.Module:
        """The encoder that evaluation, embedding and export use."""
        ...

    def memory_bank(self) -> tuple[Tensor, nn.Module, float] | None:
        """(bank, encoder into it, kNN temperature) for a memory-bank method, else None."""
        ...


class MethodBase(nn.Module):
    """Defaults of the protocol for image methods; a method overrides what its paper changes.

    Subclasses set ``backbone`` and ``augment_recipe`` (a name in ``selfsup.augment.RECIPES``) and
    write ``training_step``.
    """

    data_kind: ClassVar[str] = "images"
    augment_recipe: ClassVar[str] = "simclr"
    views_needed: ClassVar[tuple[int, int | None]] = (2, 2)
    sync_batchnorm: ClassVar[bool] = False
    sync_batchnorm_exclude: ClassVar[tuple[str, ...]] = ()
    legacy_args: ClassVar[dict[str, Any]] = {}
    """Arguments added after checkpoints were written, with the value that built those checkpoints: a
    checkpoint whose config lacks one and whose weights do not fit the default is read with it."""
    exclude_bias_norm: ClassVar[bool] = True
    """No weight decay for biases and norms unless ``optim.exclude_bias_norm`` says otherwise. A method
    whose official code decays every parameter (``SGD(model.parameters(), weight_decay=...)``) says False."""
    curves: ClassVar[tuple[str, ...]] = ()
    """Outputs of ``training_step`` besides the loss that ``curves.png`` draws (all are logged)."""
    needs_labels: ClassVar[bool] = False
    """Learns from class labels (SupCon, triplet, N-pair): the engine refuses data without them."""
    needs_num_samples: ClassVar[bool] = False
    """Takes ``num_samples=`` (the training set's size, for a memory bank); the engine passes it."""
    view_geometry: bool = False
    """Wants where each view came from: the engine then puts ``view_boxes`` ``(B, V, 4)`` (each
    view's ``(top, left, height, width)`` in its image) and ``view_flips`` ``(B, V)`` in the batch's
    ``extra`` (:meth:`selfsup.augment.Augmentation.views_and_geometry`)."""
    needs_graph: ClassVar[bool] = False
    """Takes ``graph=`` (the :class:`selfsup.data.graphs.Graph` it learns on, which its evaluation
    encoder holds); the engine passes it."""
    backbone: nn.Module

    def augmentation(self, image_size: int) -> augment.Augmentation | None:
        """The paper's views: the ``augment_recipe`` recipe at this image size."""
        return augment.recipe(self.augment_recipe, image_size)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        """The method's loss on one batch; every method writes its own."""
        raise NotImplementedError

    def forward(self, batch: Batch, progress: Progress, embed: bool = False) -> dict[str, Tensor]:
        # DDP wraps forward, so the engine calls the method through it (gradient caching: embed only).
        return self.embed(batch, progress) if embed else self.training_step(batch, progress)

    def embed(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        """Per-image representations the loss couples (see the module docstring); a method that
        splits this way also writes :meth:`loss_from`."""
        raise NotImplementedError(f"{type(self).__name__} does not split into embeddings and a batch loss")

    def loss_from(self, embeddings: dict[str, Tensor], batch: Batch, progress: Progress) -> dict[str, Tensor]:
        """The batch loss (and metrics) from :meth:`embed`'s output for the whole batch."""
        raise NotImplementedError(f"{type(self).__name__} does not split into embeddings and a batch loss")

    def param_groups(self) -> list[dict]:
        """One group of every parameter (the engine keeps only those that require gradients)."""
        return [{"params": list(self.parameters())}]

    def after_backward(self, progress: Progress) -> None:
        """Nothing to change by default."""

    def on_step_end(self, progress: Progress) -> None:
        """No state to update by default."""

    def eval_encoder(self) -> nn.Module:
        """The backbone."""
        return self.backbone

    def projection_encoder(self) -> nn.Module | None:
        """The backbone followed by the projection head whose output the loss sees (``z``), for
        ``eval.projection`` (SimCLR section 4.2: features before the head are better than after it);
        None (the default) for a method without one."""
        projector = getattr(self, "projector", None)
        if not isinstance(projector, nn.Module):
            return None
        return nn.Sequential(self.eval_encoder(), projector)

    def memory_bank(self) -> tuple[Tensor, nn.Module, float] | None:
        """A bank of one feature per training image (rows in dataset order), the module that maps
        images into its space and the temperature of its weighted kNN, for the paper's bank kNN
        (InstDisc); None (the default) when the method keeps no bank."""
        return None


def splits_into_embeddings(method: type | nn.Module) -> bool:
    """Whether ``method`` writes :meth:`MethodBase.embed`, callable as ``embed(batch, progress)``, and
    :meth:`MethodBase.loss_from`: the two halves gradient caching calls. An ``embed`` of its own
    signature (InstDisc's and CMC's map images to features) is a helper, not this split."""
    cls = method if isinstance(method, type) else type(method)
    embed = getattr(cls, "embed", MethodBase.embed)
    if embed is MethodBase.embed or getattr(cls, "loss_from", MethodBase.loss_from) is MethodBase.loss_from:
        return False
    try:
        inspect.signature(embed).bind(None, None, None)  # (self, batch, progress), as forward calls it
    except TypeError:
        return False
    return True


def view_count_problem(method: type | nn.Module, count: int) -> str | None:
    """What is wrong with giving ``method`` batches of ``count`` views (None: nothing)."""
    fewest, most = method.views_needed
    if fewest <= count and (most is None or count <= most):
        return None
    need = f"at least {fewest}" if most is None else str(fewest) if fewest == most else f"{fewest} to {most}"
    name = method.__name__ if isinstance(method, type) else type(method).__name__
    return f"{name} expects {need} views per batch, got {count}"


def check_views(batch: Batch, method: nn.Module) -> None:
    """Raise a clear error when a batch has the wrong number of views for ``method``."""
    problem = view_count_problem(method, len(batch.views))
    if problem:
        raise ValueError(f"{problem}; use an augmentation that returns the views the method needs")


class VideoMethodBase(MethodBase):
    """Defaults of the protocol for video methods (TCN, R3M, video colorization).

    A video batch's single view is uint8 clips ``(B, k, C, H, W)`` (``batch.extra["times"]``: the
    frames' times ``(B, k)``, ``["video"]``: ``(B,)``), whose ``k`` frames are those
    :meth:`clip_times` chose; the method makes its own views of them (consistently across a clip,
    :func:`selfsup.augment.clip_views`). Held-out videos get the time-contrastive measures and, when
    they have instance masks, mask propagation with :meth:`dense_encoder`'s features
    (:mod:`selfsup.evaluate.video`).
    """

    data_kind: ClassVar[str] = "video"
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)

    def augmentation(self, image_size: int) -> augment.Augmentation | None:
        """None: the method augments whole clips itself."""
        return None

    def clip_times(self, lengths: Tensor, generator) -> Tensor:
        """``(B, k)`` frame times for videos of ``lengths`` frames (every video method chooses)."""
        raise NotImplementedError

    def dense_encoder(self) -> nn.Module:
        """Images ``(N, C, H, W)`` in [0, 1] -> per-pixel features ``(N, D, h, w)`` for propagation: a
        hypercolumn of the backbone's stages on a grid of a quarter of the input's side
        (:class:`FeatureGrid`)."""
        return FeatureGrid(self.eval_encoder())

    def extra_evaluations(self, test, *, data: str, device=None) -> dict[str, dict]:
        """The ``temporal`` entry on the held-out videos, and ``propagation`` when they have masks or
        keypoints, with the copy-first-frame and raw-Lab baselines beside it."""
        from selfsup import evaluate
        from selfsup.evaluate import video

        features = evaluate.extract_features(self.eval_encoder(), test.images, device=device)
        entries = {"temporal": video.temporal_entry(features, test.video, test.time, data=data,
                                                    scenes=getattr(test, "scenes", None),
                                                    tasks=getattr(test, "tasks", None))}
        if getattr(test, "masks", None) is not None or getattr(test, "keypoints", None):
            dense = self.dense_encoder()
            entry = video.propagation_entry(test, lambda frames: video.dense_features(dense, frames, device=device),
                                            data=data)
            grid = video.dense_features(dense, test.images[:1], device=device).shape[-1]
            entry["baselines"] = video.propagation_baselines(test, data=data,
                                                             lab_stride=max(1, test.images.shape[-1] // grid))
            entries["propagation"] = entry
        return entries


class FeatureGrid(nn.Module):
    """A parameter-free hypercolumn: each of the backbone's stages (:func:`selfsup.nn.dense.stage_features`)
    average-pooled or bilinearly resized onto a grid of side ``H / stride``, L2-normalised per position,
    and concatenated, so that fine and coarse stages weigh the same in a cosine similarity. A backbone
    whose stages cannot be read gives its last feature map."""

    def __init__(self, backbone: nn.Module, stride: int = 4) -> None:
        super().__init__()
        self.backbone, self.stride = backbone, stride

    def forward(self, images: Tensor) -> Tensor:
        import torch.nn.functional as F

        from selfsup.nn.backbones import feature_map
        from selfsup.nn.dense import stage_features

        grid = tuple(max(1, side // self.stride) for side in images.shape[-2:])
        try:
            stages = stage_features(self.backbone, images)
        except ValueError:
            stages = [feature_map(self.backbone, images)]
        parts = [F.adaptive_avg_pool2d(s, grid) if s.shape[-1] >= grid[-1]
                 else F.interpolate(s, size=grid, mode="bilinear", align_corners=False) for s in stages]
        return torch.cat([F.normalize(p.float(), dim=1) for p in parts], dim=1)
