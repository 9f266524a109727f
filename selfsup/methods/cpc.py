"""CPC (van den Oord, Li, Vinyals 2018, "Representation Learning with Contrastive Predictive Coding"):
images (a grid of patches, rows predicted from the rows above) and raw 1-D signals (speech)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, SignalEncoder, WrappedEncoder


def patch_grid(images: Tensor, patch: int, stride: int) -> Tensor:
    """Overlapping square patches ``(B, R, C', C, patch, patch)`` of images ``(B, C, H, W)``: row ``r``,
    column ``c`` starts at pixel ``(r * stride, c * stride)``; a remainder past the last patch is dropped."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if min(images.shape[-2:]) < patch:
        raise ValueError(f"CPC patches of {patch} pixels do not fit images of {tuple(images.shape[-2:])}; "
                         f"lower method_args.patch")
    tiles = images.unfold(2, patch, stride).unfold(3, patch, stride)     # (B, C, R, C', p, p)
    return tiles.permute(0, 2, 3, 1, 4, 5)


def step_pairs(predictor: nn.Module, context: Tensor, codes: Tensor, k: int, group: int) -> tuple[Tensor, Tensor]:
    """The predictions and true codes of prediction step ``k``, grouped for :func:`selfsup.losses.cpc`.

    ``context`` ``(B, T, H)`` and ``codes`` ``(B, T, D)`` are sequences in time order. The
    predictions ``W_k c_t`` of the positions ``t < T - k`` face the codes ``z_{t+k}``: prediction
    ``(b, t)`` is row ``n = (b mod group) · (T - k) + t`` of group ``b // group``, its positive is
    row ``n`` of the codes (``z_{b, t+k}``) and its negatives the other ``group · (T - k) - 1``
    codes ``z_{b', t'+k}`` of its group of ``group`` sequences (other times and other sequences).

    Returns:
        ``(predictions, targets)``, each ``(B / group, group · (T - k), D)``.
    """
    b, t, _ = codes.shape
    if not 0 < k < t:
        raise ValueError(f"prediction step k={k} needs sequences longer than {k}, got length {t}")
    if b % group:
        raise ValueError(f"the batch of {b} sequences does not split into groups of {group}")
    shape = (b // group, group * (t - k), -1)
    return predictor(context[:, :t - k]).reshape(shape), codes[:, k:].reshape(shape)


class RowContext(nn.Module):
    """The image context network: a 1x3 convolution along each row (codes of the same row only),
    then a GRU down each column, so ``c_{r, x}`` sees the codes of rows ``<= r`` and nothing below."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.row = nn.Conv1d(dim, hidden, kernel_size=3, padding=1)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, codes: Tensor) -> Tensor:
        """``(B, R, C', D)`` codes to ``(B · C', R, hidden)`` contexts, one sequence per column."""
        b, rows, cols, dim = codes.shape
        mixed = F.relu(self.row(codes.reshape(b * rows, cols, dim).transpose(1, 2)))     # (B R, hidden, C')
        columns = mixed.reshape(b, rows, -1, cols).permute(0, 3, 1, 2).reshape(b * cols, rows, -1)
        return self.gru(columns)[0]


def columns(codes: Tensor) -> Tensor:
    """``(B, R, C', D)`` codes as ``(B · C', R, D)`` sequences down each column (RowContext's order)."""
    b, rows, cols, dim = codes.shape
    return codes.permute(0, 2, 1, 3).reshape(b * cols, rows, dim)


class PatchGridEncoder(WrappedEncoder):
    """The CPC image representation: the patch encoder over the grid, averaged over the patches
    (CPC's linear-probe input: the mean-pooled patch codes)."""

    def __init__(self, backbone: Backbone, patch: int, stride: int) -> None:
        super().__init__()
        self.backbone, self.patch, self.stride = backbone, patch, stride
        self.out_dim = backbone.out_dim

    def codes(self, images: Tensor) -> Tensor:
        """``(B, R, C', out_dim)`` codes of the patch grid."""
        tiles = patch_grid(images, self.patch, self.stride)
        b, rows, cols = tiles.shape[:3]
        return self.backbone(tiles.reshape(b * rows * cols, *tiles.shape[3:])).reshape(b, rows, cols, -1)

    def forward(self, images: Tensor) -> Tensor:
        return self.codes(images).mean(dim=(1, 2))


def _check_steps(steps: Sequence[int]) -> tuple[int, ...]:
    steps = tuple(int(k) for k in steps)
    if not steps or min(steps) < 1 or len(set(steps)) != len(steps):
        raise ValueError(f"prediction_steps must be distinct positive integers, got {list(steps)}")
    return steps


class _CPC(MethodBase):
    """What both CPC data paths share: one linear predictor per step and the per-step InfoNCE."""

    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    curves: ClassVar[tuple[str, ...]] = ("accuracy",)

    def _predictors(self, hidden: int, dim: int, steps: Sequence[int], group: int | None) -> None:
        self.prediction_steps = _check_steps(steps)
        if group is not None and group < 1:
            raise ValueError(f"group must be >= 1 (or null: the whole batch), got {group}")
        self.group = group
        self.predictors = nn.ModuleList(nn.Linear(hidden, dim, bias=False) for _ in self.prediction_steps)

    def cpc_loss(self, context: Tensor, codes: Tensor, per_item: int = 1) -> dict[str, Tensor]:
        """Mean over the steps k of InfoNCE (eq. 4), and the fraction of predictions whose own
        code scores highest (``accuracy``, logged). ``group`` counts items of ``per_item``
        consecutive sequences each (an image is its C' columns), so a group is whole items."""
        group = (self.group or codes.shape[0] // per_item) * per_item
        step_losses, hits, total = [], 0, 0
        for k, predictor in zip(self.prediction_steps, self.predictors):
            predictions, targets = step_pairs(predictor, context, codes, k, group)
            step_losses.append(losses.cpc(predictions, targets))
            with torch.no_grad():
                best = (predictions.float() @ targets.float().transpose(1, 2)).argmax(dim=2)
                hits = hits + (best == torch.arange(best.shape[1], device=best.device)).sum()
                total += best.numel()
        return {"loss": torch.stack(step_losses).mean(), "accuracy": hits / total}


class CPCImage(_CPC):
    """CPC on images: rows of a patch grid predicted from the rows above.

    Per batch (section 3.2 of the paper; CPC v2's shared patch encoder)::

        x -> grid of R x C' overlapping patches (side ``patch``, step ``stride``)
        z_{r,x} = f(patch_{r,x})                   # the backbone, shared by every patch
        c_{r,x} = GRU over rows <= r of conv1x3(z_{r, ·})   # RowContext: nothing below row r
        loss = mean_k InfoNCE(W_k c_{r,x}, z_{r+k,x})     # negatives: the other codes at step k

    Each column is a sequence down the rows, so the image path is the sequence path with the
    columns as sequences. The negatives of a prediction are the other ``z_{r'+k, x'}`` of its
    ``group`` images, ``group · (R - k) · C' - 1`` of them (all positions: other rows, other
    columns, other images, as CPC v2 draws them from the image and the other images of the batch).
    Rows one apart overlap by half a patch at stride ``patch / 2``, which a network can match pixel
    by pixel, so the recipe predicts from two rows on. The representation is the mean of the patch
    codes over the grid (:class:`PatchGridEncoder`).

    Args:
        backbone: the patch encoder (it must take ``patch`` x ``patch`` inputs).
        patch: patch side (28-pixel images: 8).
        stride: step between patches (4: half-overlapping, as the paper).
        hidden: the context network's width.
        prediction_steps: the k predicted (rows below).
        group: images whose codes are each other's negatives (None: the whole local batch); the
            local batch must be a multiple of it.
    """

    augment_recipe: ClassVar[str] = "flip"

    def __init__(self, backbone: Backbone, *, patch: int = 8, stride: int = 4, hidden: int = 256,
                 prediction_steps: Sequence[int] = (2, 3), group: int | None = 16) -> None:
        super().__init__()
        if not 0 < stride <= patch:
            raise ValueError(f"stride must be in [1, patch={patch}], got {stride}")
        self.backbone = backbone
        self.grid = PatchGridEncoder(backbone, patch, stride)
        self.context = RowContext(backbone.out_dim, hidden)
        self._predictors(hidden, backbone.out_dim, prediction_steps, group)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        codes = self.grid.codes(batch.views[0])                             # (B, R, C', D)
        if max(self.prediction_steps) >= codes.shape[1]:
            raise ValueError(f"the patch grid has {codes.shape[1]} rows: prediction step "
                             f"{max(self.prediction_steps)} has no target; lower method_args.prediction_steps")
        if self.group and codes.shape[0] % self.group:
            raise ValueError(f"the batch of {codes.shape[0]} images does not split into groups of "
                             f"method_args.group={self.group}; make the batch a multiple of it")
        return self.cpc_loss(self.context(codes), columns(codes), per_item=codes.shape[2])

    def eval_encoder(self) -> nn.Module:
        """The mean-pooled patch codes."""
        return self.grid


class SequenceContextEncoder(WrappedEncoder):
    """The representation of a signal for probes: the context vectors ``c_t`` averaged over time
    (the paper's speaker probe reads ``c_t``)."""

    wrapped = "encoder"

    def __init__(self, encoder: SignalEncoder, gru: nn.GRU) -> None:
        super().__init__()
        self.encoder, self.gru = encoder, gru
        self.out_dim = gru.hidden_size

    def forward(self, signals: Tensor) -> Tensor:
        return self.gru(self.encoder(signals))[0].mean(dim=1)


class CPCSequence(_CPC):
    """CPC on raw 1-D signals (speech): a strided convolutional encoder, a GRU, InfoNCE per step.

    Per batch of B windows of T samples (section 3.1 of the paper)::

        z_t = g_enc(x)                      # SignalEncoder: one code per 160 samples
        c_t = GRU(z_{<=t})                  # causal: c_t never sees z_{t+1..}
        loss = mean_k InfoNCE(W_k c_t, z_{t+k}),  k = 1..12     # negatives: the other codes of step k

    The negatives of a prediction are the codes of step k at every other time of every window of
    its group (the whole local batch by default; the paper draws them from the batch too). The
    representation is :class:`SequenceContextEncoder`: ``c_t`` averaged over the window.

    Args:
        backbone: a :class:`SignalEncoder` (``backbone.name: cpc_audio``).
        hidden: GRU width (paper: 256).
        prediction_steps: the k predicted (paper: 1..12).
        group: windows whose codes are each other's negatives (None: the local batch).
    """

    data_kind: ClassVar[str] = "sequences"

    def __init__(self, backbone: SignalEncoder, *, hidden: int = 256,
                 prediction_steps: Sequence[int] = tuple(range(1, 13)), group: int | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, SignalEncoder):
            raise ValueError(f"CPC on sequences needs the signal encoder (backbone.name: cpc_audio), got "
                             f"{type(backbone).__name__}")
        self.backbone = backbone
        self.gru = nn.GRU(backbone.out_dim, hidden, batch_first=True)
        self._predictors(hidden, backbone.out_dim, prediction_steps, group)

    def augmentation(self, image_size: int) -> None:
        """No augmentation: the windows as they are."""
        return None

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        codes = self.backbone(batch.views[0])                               # (B, T', D)
        if max(self.prediction_steps) >= codes.shape[1]:
            raise ValueError(f"a window gives {codes.shape[1]} codes: prediction step {max(self.prediction_steps)} "
                             f"has no target; use longer windows (data.window) or fewer steps")
        return self.cpc_loss(self.gru(codes)[0], codes)

    def eval_encoder(self) -> nn.Module:
        """The context vectors averaged over time."""
        return SequenceContextEncoder(self.backbone, self.gru)


__all__ = ["CPCImage", "CPCSequence", "PatchGridEncoder", "RowContext", "SequenceContextEncoder",
           "columns", "patch_grid", "step_pairs"]
