"""Relative patch location (Doersch, Gupta, Efros 2015, "Unsupervised Visual Representation Learning by Context Prediction")."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.augment import pretext
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.methods.rotation import task_accuracy
from selfsup.nn import Backbone
from selfsup.nn.dtypes import at_least_float32


class PatchGrid:
    """Patch geometry of a 3x3 grid, resolved from the image side at the first batch.

    Args:
        patch: patch side in pixels (None: three quarters of a cell).
        gap: smallest distance between neighbouring patches (None: an eighth of a cell, at least 1).
        input_size: side the shared encoder sees, patches resized to it (None: the patch side).
    """

    def __init__(self, patch: int | None, gap: int | None, input_size: int | None) -> None:
        for name, value in (("patch", patch), ("gap", gap), ("input_size", input_size)):
            if value is not None and value < (0 if name == "gap" else 1):
                raise ValueError(f"{name} must be {'>= 0' if name == 'gap' else 'positive'}, got {value}")
        self.patch, self.gap, self.input_size = patch, gap, input_size

    def resolve(self, side: int) -> tuple[int, int, int]:
        """``(patch, gap, input_size)`` for images of ``side`` pixels, checked to fit."""
        cell = side // 3
        patch = self.patch if self.patch is not None else max(1, cell * 3 // 4)
        gap = self.gap if self.gap is not None else max(1, cell // 8)
        pretext.grid_geometry(side, 3, patch, gap)
        return patch, gap, self.input_size or patch


class RelativeLocation(MethodBase):
    """Where is the second patch relative to the first? An 8-way classifier over a pair of patches
    from a 3x3 grid, one encoder shared by both patches.

    Per batch (section 3 of the paper)::

        c, n, k = centre patch, one of its 8 neighbours, which one       # pretext.relative_patches
        loss = CE(head([fc6(f(c)), fc6(f(n))]), k)                       # f and fc6 shared

    Patches sit in their cells with a gap and a random jitter, so the network cannot solve the
    task by continuing edges across the border, and, as in the reference code (cdoersch/deepcontext
    ``train.py``, ``prep_image``), each patch is normalised by its own statistics (``patch_norm``): its
    channels' means removed and the patch divided by its root mean square, so that brightness and
    contrast are no cue. The images are not flipped (the method's views are ``none``): the reference
    samples its grids from unflipped images. Its other defences against chromatic aberration (all but
    one colour channel dropped, a third of the patches downsampled to as few as 100 pixels) are for
    96-pixel colour patches and are not implemented. The reported number is the linear probe of the
    frozen backbone on whole images; the task's accuracy is logged.

    The pair classifier (``head``): ``paper`` is the paper's Figure 3 at ``hidden_dim`` wide, fc6 on
    each patch's features (shared), then fc7 and fc8 on the pair and fc9 to the 8 positions, ReLU
    after all but fc9; ``small`` is one hidden layer on the concatenated features (no fc6), the
    shape of the other pretext heads here.

    Args:
        backbone: the shared patch encoder.
        patch, gap, input_size: patch geometry (see :class:`PatchGrid`).
        hidden_dim: width of the pair classifier's layers (512; the paper's 4096 for AlexNet).
        head: ``paper`` or ``small`` (above).
        all_neighbours: the paper (and its code) draws one pair per image; with True every image gives
            the centre with each of its 8 neighbours (8 pairs, 9 patches through the encoder, the centre
            once), so that a short run on a small set sees 8 times the pairs for 4.5 times the encoder
            work. The loss is the mean over all pairs.
        dropout: dropout after every hidden layer of the pair classifier; 0 leaves it out, as the other
            heads here.
        patch_norm: normalise each patch by its own statistics (``pretext.standardise_patches``; the
            reference's); False: patches as the encoder normalises whole images.
    """

    augment_recipe: ClassVar[str] = "none"
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    curves: ClassVar[tuple[str, ...]] = ("task_accuracy",)

    def __init__(self, backbone: Backbone, *, patch: int | None = None, gap: int | None = None,
                 input_size: int | None = None, hidden_dim: int = 512, head: str = "paper",
                 all_neighbours: bool = False, dropout: float = 0.0, patch_norm: bool = True) -> None:
        super().__init__()
        if head not in ("paper", "small"):
            raise ValueError(f"head must be 'paper' or 'small', got {head!r}")
        self.backbone = backbone
        self.grid = PatchGrid(patch, gap, input_size)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        if head == "paper":
            self.fc6 = nn.Sequential(nn.Linear(backbone.out_dim, hidden_dim), nn.ReLU(inplace=True), *drop)
            self.head = nn.Sequential(nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(inplace=True), *drop,
                                      nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True), *drop,
                                      nn.Linear(hidden_dim, 8))
        else:
            self.fc6 = nn.Identity()
            self.head = nn.Sequential(nn.Linear(2 * backbone.out_dim, hidden_dim), nn.ReLU(inplace=True), *drop,
                                      nn.Linear(hidden_dim, 8))
        self.all_neighbours = all_neighbours
        self.patch_norm = patch_norm

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        x = batch.views[0]
        patch, gap, size = self.grid.resolve(x.shape[-1])
        if self.all_neighbours:
            return self._all_pairs(x, patch, gap, size)
        centre, neighbour, labels = pretext.relative_patches(x, patch=patch, gap=gap)
        pair = self._prepare(pretext.resize_patches(torch.cat([centre, neighbour]), size))
        features = self.fc6(self.backbone(pair)).chunk(2)
        logits = self.head(torch.cat(features, dim=1))
        return {"loss": F.cross_entropy(at_least_float32(logits), labels), "task_accuracy": task_accuracy(logits, labels)}

    def _all_pairs(self, x: Tensor, patch: int, gap: int, size: int) -> dict[str, Tensor]:
        b = x.shape[0]
        cells = torch.tensor((4, *pretext.NEIGHBOURS), device=x.device).expand(b, 9)
        patches = pretext.grid_patches(x, cells, patch=patch, gap=gap)          # (B, 9, C, p, p), centre first
        flat = self._prepare(pretext.resize_patches(patches.flatten(0, 1), size))
        features = self.fc6(self.backbone(flat)).unflatten(0, (b, 9))
        pairs = torch.cat([features[:, :1].expand(-1, 8, -1), features[:, 1:]], dim=2).flatten(0, 1)
        logits = self.head(pairs)                                                # (B * 8, 8)
        labels = torch.arange(8, device=x.device).repeat(b)
        return {"loss": F.cross_entropy(at_least_float32(logits), labels), "task_accuracy": task_accuracy(logits, labels)}

    def _prepare(self, patches: Tensor) -> Tensor:
        """Patches as the encoder receives them: with ``patch_norm`` exactly the normalised patches (the
        backbone's own input normalisation undone for them), else as they are."""
        if not self.patch_norm:
            return patches
        return pretext.standardise_patches(patches) * self.backbone.std + self.backbone.mean


__all__ = ["PatchGrid", "RelativeLocation"]
