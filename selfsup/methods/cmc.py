"""CMC (Tian, Krishnan, Isola 2019, "Contrastive Multiview Coding")."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import augment, distributed, losses
from selfsup.augment import lab_to_rgb, rgb_to_lab
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, MemoryBank, with_in_channels
from selfsup.nn.dtypes import at_least_float32

# L / 100 and (ab + 128) / 255 put both parts of Lab in [0, 1], the range backbones take.
_AB_OFFSET, _AB_SCALE = 128.0, 255.0


def lab_split(images: Tensor) -> tuple[Tensor, Tensor]:
    """RGB ``(B, 3, H, W)`` in [0, 1] (or uint8) to CMC's two views: ``L / 100`` ``(B, 1, H, W)``
    and ``(ab + 128) / 255`` ``(B, 2, H, W)``, both in [0, 1]; :func:`lab_merge` inverts it."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"CMC's L/ab views need RGB images (B, 3, H, W), got shape {tuple(images.shape)}; "
                         f"use method_args.views=augment for grayscale data")
    lab = rgb_to_lab(images)
    return lab[:, :1] / 100, (lab[:, 1:] + _AB_OFFSET) / _AB_SCALE


def lab_merge(lightness: Tensor, ab: Tensor) -> Tensor:
    """The RGB image of :func:`lab_split`'s two views, in [0, 1]."""
    return lab_to_rgb(torch.cat([lightness * 100, ab * _AB_SCALE - _AB_OFFSET], dim=1))


def view_pairs(count: int, objective: str) -> list[tuple[int, int]]:
    """The pairs of views contrasted: ``"core"`` pairs view 0 with every other (the core-view
    paradigm, eq. 7 of the paper), ``"full"`` every pair ``i < j`` (the full graph, eq. 8)."""
    if objective == "core":
        return [(0, j) for j in range(1, count)]
    if objective == "full":
        return [(i, j) for i in range(count) for j in range(i + 1, count)]
    raise ValueError(f"objective must be 'core' or 'full', got {objective!r}")


class MultiviewEncoder(nn.Module):
    """One encoder per view over the same image; the representation is their features concatenated
    (the paper evaluates L and ab features together).

    ``split="lab"``: RGB images are cut into ``L`` and ``ab`` (:func:`lab_split`), one encoder each.
    ``split=None``: every encoder reads the image itself (the views are augmentations of it).
    ``mean`` / ``std`` are the data's statistics, kept so that a checkpoint rebuilds the method.
    """

    def __init__(self, encoders: list[Backbone], split: str | None, mean: Tensor, std: Tensor,
                 in_channels: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.split = split
        self.out_dim = sum(e.out_dim for e in encoders)
        self.in_channels = in_channels
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def views(self, images: Tensor) -> list[Tensor]:
        """The input of each encoder for a batch of images."""
        if self.split == "lab":
            return list(lab_split(images))
        return [images] * len(self.encoders)

    def forward(self, images: Tensor) -> Tensor:
        return torch.cat([encoder(view) for encoder, view in zip(self.encoders, self.views(images))], dim=1)


class CMC(MethodBase):
    """One encoder per view, and an InfoNCE between the views of the same image.

    Per batch, with views ``V_1 .. V_M`` of each image, encoders ``f_m`` and linear heads ``g_m``
    to unit 128-d vectors ``z_m = normalize(g_m(f_m(V_m)))``, the loss is a sum over pairs
    ``(i, j)`` of the two-way contrast (eq. 2-3)::

        L(V_i, V_j) = L_{z_i -> z_j} + L_{z_j -> z_i}
        L_{a -> b} = -mean_n log exp(a_n·b_n / τ) / Σ_c exp(a_n·c / τ)

    where the candidates ``c`` of ``L_{a -> b}`` are either the ``b`` of the other images of the
    (global) batch (``negatives="batch"``) or, as the paper's memory, ``b``'s bank: the positive
    is the bank entry of image n and the negatives ``num_negatives`` entries drawn uniformly per
    global step (the same draw for the whole batch, as InstDisc here; the official code draws per
    image); each view's bank moves to its new features with momentum 0.5 after the step. The pairs
    are the core view's or the full graph's (:func:`view_pairs`). This is the official code's
    ``--softmax`` criterion (``NCESoftmaxLoss``); its default, with which the released weights were
    trained, is NCE (``NCEAverage`` + ``NCECriterion``, as InstDisc's :func:`selfsup.losses.nce`), which
    its README expects the softmax to improve on.

    Views: ``"lab"`` (the paper's) splits each augmented RGB image into L and ab (grayscale
    data is refused in one line); ``"augment"`` gives every encoder its own augmentation of the
    image (``num_views`` of them, SimCLR's recipe), which works for any data. Evaluation and export
    use the concatenated features of all encoders (:class:`MultiviewEncoder`).

    Args:
        backbone: the encoder architecture; each view gets a freshly initialised copy.
        num_samples: training-set size (the banks' rows).
        views: ``"lab"`` or ``"augment"``.
        num_views: encoders for ``views="augment"`` (2 or more).
        objective: ``"core"`` or ``"full"`` (the same for 2 views).
        negatives: ``"batch"`` or ``"bank"``.
        proj_dim: the heads' output (paper: 128).
        temperature: τ (paper: 0.07).
        num_negatives: bank entries drawn per step (paper: 16384 on ImageNet).
        bank_momentum: the banks' update momentum (paper: 0.5).
        noise_seed: seeds the bank draws (a function of the global step only).
    """

    exclude_bias_norm = False  # HobbitLong/CMC train_CMC.py: SGD(model.parameters(), weight_decay=...) decays every parameter

    augment_recipe: ClassVar[str] = "cmc"
    views_needed: tuple[int, int | None] = (1, 1)
    needs_num_samples: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, *, num_samples: int, views: str = "lab", num_views: int = 2,
                 objective: str = "core", negatives: str = "bank", proj_dim: int = 128, temperature: float = 0.07,
                 num_negatives: int = 4096, bank_momentum: float = 0.5, noise_seed: int = 0) -> None:
        super().__init__()
        if views not in ("lab", "augment"):
            raise ValueError(f"views must be 'lab' or 'augment', got {views!r}")
        if negatives not in ("batch", "bank"):
            raise ValueError(f"negatives must be 'batch' or 'bank', got {negatives!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if not 0 <= bank_momentum <= 1:
            raise ValueError(f"bank_momentum must be in [0, 1], got {bank_momentum}")
        if views == "lab":
            if backbone.in_channels != 3:
                raise ValueError(f"CMC's L/ab views need colour images, but the data has {backbone.in_channels} "
                                 f"channel; use method_args.views=augment (two augmentations of each image) or "
                                 f"RGB data (data.channels=3)")
            encoders = [with_in_channels(backbone, 1, [0.5], [0.25]),
                        with_in_channels(backbone, 2, [0.5, 0.5], [0.25, 0.25])]
        else:
            if num_views < 2:
                raise ValueError(f"num_views must be >= 2, got {num_views}")
            encoders = [with_in_channels(backbone, backbone.in_channels, backbone.mean.flatten().tolist(),
                                         backbone.std.flatten().tolist()) for _ in range(num_views)]
        self.views_needed = (1, 1) if views == "lab" else (len(encoders), len(encoders))
        self.pairs = view_pairs(len(encoders), objective)
        self.backbone = MultiviewEncoder(encoders, "lab" if views == "lab" else None, backbone.mean,
                                         backbone.std, backbone.in_channels)
        self.heads = nn.ModuleList(nn.Linear(e.out_dim, proj_dim) for e in encoders)
        self.banks = nn.ModuleList(MemoryBank(num_samples, proj_dim) for _ in encoders) if negatives == "bank" \
            else nn.ModuleList()
        self.view_mode, self.objective, self.negatives = views, objective, negatives
        self.temperature, self.num_negatives, self.bank_momentum = temperature, num_negatives, bank_momentum
        self.noise_seed = noise_seed
        self._pending: tuple[list[Tensor], Tensor] | None = None

    def augmentation(self, image_size: int) -> augment.Augmentation:
        """The paper's one crop (split into L and ab), or SimCLR's views, one per encoder."""
        if self.view_mode == "lab":
            return augment.recipe("cmc", image_size)
        views = augment.recipe("simclr", image_size)
        return augment.Augmentation([views.views[0]] * len(self.backbone.encoders))

    def embed(self, view_inputs: list[Tensor]) -> list[Tensor]:
        """The unit vectors ``z_m`` of each view's inputs."""
        outputs = [head(encoder(x)) for encoder, head, x in zip(self.backbone.encoders, self.heads, view_inputs)]
        return [F.normalize(at_least_float32(z), dim=1) for z in outputs]

    def noise(self, step: int, device: torch.device) -> Tensor:
        """The ``num_negatives`` bank rows of global step ``step`` (the same on every rank)."""
        generator = torch.Generator(device=device).manual_seed(self.noise_seed * 1_000_003 + step)
        return torch.randint(self.banks[0].size, (self.num_negatives,), generator=generator, device=device)

    def contrast(self, anchors: Tensor, targets: Tensor, view: int, index: Tensor, noise: Tensor | None) -> Tensor:
        """``L_{anchors -> targets}``: each anchor picks its own image among view ``view``'s candidates."""
        if self.negatives == "batch":
            return losses.info_nce(anchors, targets, temperature=self.temperature)
        bank = self.banks[view].features
        return losses.info_nce(anchors, bank[index], bank[noise], temperature=self.temperature)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        inputs = self.backbone.views(batch.views[0]) if self.view_mode == "lab" else batch.views
        z = self.embed(inputs)
        index = batch.index.to(z[0].device)
        noise = self.noise(progress.step, z[0].device) if self.negatives == "bank" else None
        loss = sum(self.contrast(z[i], z[j], j, index, noise) + self.contrast(z[j], z[i], i, index, noise)
                   for i, j in self.pairs)
        if self.negatives == "bank":
            self._pending = ([distributed.gather(v.detach()) for v in z], distributed.gather(index))
        return {"loss": loss}

    def on_step_end(self, progress: Progress) -> None:
        if self._pending is not None:
            features, index = self._pending
            for bank, f in zip(self.banks, features):
                bank.update(index, f, self.bank_momentum)
            self._pending = None

    def extra_repr(self) -> str:
        return (f"views={self.view_mode}, objective={self.objective}, pairs={self.pairs}, negatives={self.negatives}, "
                f"temperature={self.temperature}")


__all__ = ["CMC", "MultiviewEncoder", "lab_merge", "lab_split", "view_pairs"]
