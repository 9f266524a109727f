"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles")."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import augment
from selfsup.augment import pretext
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.methods.relative_location import PatchGrid
from selfsup.methods.rotation import task_accuracy
from selfsup.nn import Backbone
from selfsup.nn.dtypes import at_least_float32


class Jigsaw(MethodBase):
    """Which permutation shuffled the 9 tiles? A P-way classifier over the tiles of a 3x3 grid,
    each tile through one shared encoder (the paper's context-free network).

    Per batch (section 3 of the paper)::

        tiles, k = 9 tiles shuffled by permutation k of a fixed set   # pretext.jigsaw, P of them
        loss = CE(head([fc6(f(t_1)), ..., fc6(f(t_9))]), k)           # f and fc6 shared

    The permutation set is chosen once for maximal Hamming distance (``hamming_permutations``;
    P from ``num_permutations``, default 100, the paper's best trade-off) and kept as a buffer, so
    a checkpoint carries its own set. Tiles have gaps and jitter as in the paper. As the reference
    loader (bbrattoli/JigsawPuzzlePytorch ``Dataset/JigsawImageLoader.py``), every tile is
    normalised by its own per-channel mean and standard deviation (``tile_norm``), so that puzzles
    cannot be solved from the tiles' brightness and contrast; the encoder receives exactly those
    standardised tiles (its own input normalisation is undone for them). ``colour_jitter`` adds the
    loader's defences against chromatic aberration: every channel of every tile shifted by up to two
    8-bit levels, and colour images made gray with probability 0.3 (per image). The images are not
    flipped (the method's views are ``none``), as in the reference loader. The reported
    number is the linear probe of the frozen backbone on whole images; the task's accuracy is
    logged.

    Args:
        backbone: the shared tile encoder.
        num_permutations: P.
        patch, gap, input_size: tile geometry (see :class:`~selfsup.methods.relative_location.PatchGrid`).
        hidden_dim: width of fc6 (the paper's and the reference's 1024).
        head: ``paper``: the reference network's classifier, fc6 on each tile's features (shared),
            fc7 ``4 x hidden_dim`` wide on the 9 concatenated, then the P-way layer (ReLU between);
            ``small``: one hidden layer ``hidden_dim`` wide on the concatenated features (no fc6).
        dropout: dropout after every hidden layer of the head. The reference network's fc6 and fc7
            have 0.5; the default 0 leaves it out, as the other heads here, because at the learning
            bar (benchmarks/learning_bar.py) 0.5 read +1.23 / -4.15 over the random network (linear /
            kNN) against +2.59 / -2.15 without it (small head), +1.95 / -3.47 against +2.76 / -3.01
            (paper head).
        tile_norm: normalise each tile by its own statistics (the reference loader's; False: as the
            encoder normalises whole images).
        colour_jitter: the reference loader's per-tile channel shifts and per-image grayscale (p 0.3).
        foreign_tiles: Jigsaw++ (Noroozi et al. 2018, section 4): up to this many tiles of each puzzle
            (0 to ``foreign_tiles``, uniform, at random positions) replaced by tiles of another image of the
            batch, the label still the permutation, so the head must tell which tiles belong together. The
            paper replaces up to 2 (its occluding tiles may also be rotated, which is left out here). 0 (the
            default) is the 2016 puzzle.
        layout: ``tiles`` (the default): the paper's context-free network, each tile through the encoder on
            its own. ``image``: JiGen (Carlucci et al. 2019, "Domain Generalization by Solving Jigsaw
            Puzzles"; fmcarlucci/JigenDG ``data/JigsawLoader.py``): the 3x3 cells of the image (no gap, no
            jitter) shuffled and put back together into one image of nearly the same size, the encoder run
            on that whole image and one linear layer on its pooled features naming the order (its
            ``jigsaw_classifier``; ``head: small`` puts one hidden layer ``hidden_dim`` wide before it;
            ``foreign_tiles`` is for ``tiles``). ``patch`` and ``gap`` unset, each cell is a tile (JiGen's);
            set, each tile sits in the middle of its cell, black around it. Class 0 is the unshuffled image, classes 1 to P the permutations (P + 1 in all, as
            JiGen's ``order``). The encoder so learns at the scale it is evaluated at, which the tiles
            layout cannot give on 28-pixel images (see the Fashion-MNIST recipe).
        whole_image: ``image`` layout: the probability that an image is shown unshuffled (class 0; JiGen's
            ``bias_whole_image``); None (the default) draws class 0 as often as each permutation.
    """

    exclude_bias_norm = False  # bbrattoli/JigsawPuzzlePytorch JigsawTrain.py: SGD(model.parameters(), weight_decay=...) decays every parameter

    augment_recipe: ClassVar[str] = "none"  # the reference loader centre-crops and never flips
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    curves: ClassVar[tuple[str, ...]] = ("task_accuracy",)

    def __init__(self, backbone: Backbone, *, num_permutations: int = 100, patch: int | None = None,
                 gap: int | None = None, input_size: int | None = None, hidden_dim: int = 1024,
                 tile_norm: bool = True, colour_jitter: bool = False, head: str = "paper",
                 dropout: float = 0.0, foreign_tiles: int = 0, layout: str = "tiles",
                 whole_image: float | None = None) -> None:
        super().__init__()
        if layout not in ("tiles", "image"):
            raise ValueError(f"layout must be 'tiles' or 'image', got {layout!r}")
        if whole_image is not None and (layout != "image" or not 0 <= whole_image <= 1):
            raise ValueError(f"whole_image is a probability for layout 'image', got {whole_image} with layout {layout!r}")
        if num_permutations < 2:
            raise ValueError(f"num_permutations must be >= 2, got {num_permutations}")
        if not 0 <= foreign_tiles <= 8:
            raise ValueError(f"foreign_tiles must be between 0 and 8, got {foreign_tiles}")
        if head not in ("paper", "small"):
            raise ValueError(f"head must be 'paper' or 'small', got {head!r}")
        self.backbone = backbone
        self.grid = PatchGrid(patch, gap, input_size)
        # layout image: row 0 (the identity) is JiGen's class 0, the unshuffled image, beside P permutations
        self.register_buffer("permutations", pretext.hamming_permutations(num_permutations + (layout == "image")))
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        if layout == "image":  # JiGen's jigsaw_classifier (head paper), or one hidden layer before it (small)
            self.fc6 = nn.Identity()
            self.head = (nn.Linear(backbone.out_dim, num_permutations + 1) if head == "paper" else nn.Sequential(
                nn.Linear(backbone.out_dim, hidden_dim), nn.ReLU(inplace=True), *drop,
                nn.Linear(hidden_dim, num_permutations + 1)))
        elif head == "paper":
            self.fc6 = nn.Sequential(nn.Linear(backbone.out_dim, hidden_dim), nn.ReLU(inplace=True), *drop)
            self.head = nn.Sequential(nn.Linear(9 * hidden_dim, 4 * hidden_dim), nn.ReLU(inplace=True), *drop,
                                      nn.Linear(4 * hidden_dim, num_permutations))
        else:
            self.fc6 = nn.Identity()
            self.head = nn.Sequential(nn.Linear(9 * backbone.out_dim, hidden_dim), nn.ReLU(inplace=True), *drop,
                                      nn.Linear(hidden_dim, num_permutations))
        self.tile_norm, self.colour_jitter, self.foreign_tiles = tile_norm, colour_jitter, foreign_tiles
        self.layout, self.whole_image = layout, whole_image

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        x = batch.views[0]
        if self.colour_jitter and x.shape[1] == 3:
            x = augment.grayscale(x, p=0.3)
        if self.layout == "image":
            return self._whole_image_step(x)
        patch, gap, size = self.grid.resolve(x.shape[-1])
        tiles, labels = pretext.jigsaw(x, self.permutations, patch=patch, gap=gap)
        if self.foreign_tiles:
            tiles, _ = pretext.replace_with_foreign_tiles(tiles, self.foreign_tiles)
        flat = pretext.resize_patches(tiles.flatten(0, 1), size)       # (9B, C, s, s), image-major
        if self.colour_jitter:
            flat = pretext.jitter_tile_colours(flat)
        if self.tile_norm:  # standardised tiles reach the network: the backbone's normalisation undone
            flat = pretext.standardise_tiles(flat) * self.backbone.std + self.backbone.mean
        features = self.fc6(self.backbone(flat)).view(x.shape[0], -1)  # (B, 9 d), tiles in puzzle order
        logits = self.head(features)
        return {"loss": F.cross_entropy(at_least_float32(logits), labels), "task_accuracy": task_accuracy(logits, labels)}

    def _whole_image_step(self, x: Tensor) -> dict[str, Tensor]:
        """JiGen: the image's 3x3 cells (``side // 3`` pixels, the remainder at the right and bottom
        left out) shuffled into one image, one linear layer on its features naming the order."""
        cell = min(x.shape[-2], x.shape[-1]) // 3
        patch = cell if self.grid.patch is None else self.grid.patch
        gap = 0 if self.grid.gap is None else self.grid.gap
        labels = torch.randint(self.permutations.shape[0], (x.shape[0],), device=x.device)
        if self.whole_image is not None:
            labels = labels.masked_fill(torch.rand(x.shape[0], device=x.device) < self.whole_image, 0)
        tiles = pretext.grid_patches(x, self.permutations[labels], patch=patch, gap=gap)  # (B, 9, C, p, p)
        if self.colour_jitter:
            tiles = pretext.jitter_tile_colours(tiles.flatten(0, 1)).view_as(tiles)
        if self.tile_norm:
            tiles = pretext.standardise_tiles(tiles) * self.backbone.std + self.backbone.mean
        if patch < cell:  # each tile in the middle of its cell, the rest black: no edge runs across cells
            before = (cell - patch) // 2
            tiles = F.pad(tiles, (before, cell - patch - before, before, cell - patch - before))
        batch, _, channels = tiles.shape[:3]
        image = tiles.view(batch, 3, 3, channels, cell, cell).permute(0, 3, 1, 4, 2, 5).reshape(
            batch, channels, 3 * cell, 3 * cell)                           # row-major: position j at (j // 3, j % 3)
        logits = self.head(self.backbone(image))
        return {"loss": F.cross_entropy(at_least_float32(logits), labels), "task_accuracy": task_accuracy(logits, labels)}


__all__ = ["Jigsaw"]
