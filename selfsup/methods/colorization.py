"""Colorization (Zhang, Isola, Efros 2016, "Colorful Image Colorization")."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.augment import rgb_to_lab
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.methods.rotation import task_accuracy
from selfsup.nn import Backbone, WrappedEncoder, eval_mode, feature_map
from selfsup.nn.dtypes import at_least_float32


def ab_bins(grid: int = 10, samples: int = 64) -> Tensor:
    """Centres ``(Q, 2)`` of the ``grid``-sized ab cells that some sRGB colour falls in (the paper's
    in-gamut quantisation: 313 cells at grid 10 on ImageNet's colours; here every sRGB colour of a
    ``samples``-per-channel cube decides, which keeps the bins a pure function of ``grid``: 261 at
    grid 10). The centres lie on multiples of ``grid`` as the official ``pts_in_hull.npy``'s do, so
    neutral gray (0, 0) is a bin's centre. In the default floating-point type, as the method's other
    buffers."""
    axis = torch.linspace(0, 1, samples, dtype=torch.float64)
    cube = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(cube)[0, 1:, :, 0].T                                     # (samples³, 2)
    cells = torch.unique(torch.round(ab / grid), dim=0)
    return (cells * grid).to(torch.get_default_dtype())


def soft_encode(ab: Tensor, centres: Tensor, neighbours: int = 5, sigma: float = 5.0) -> Tensor:
    """The paper's soft targets: each pixel's ``(P, 2)`` ab value spread over its ``neighbours``
    nearest bin centres with Gaussian weights (σ = 5), normalised to sum to 1. Returns ``(P, Q)``.
    The paper says 5 neighbours (the default); the official caffe layer ``NNEncLayer`` uses 10."""
    distance = torch.cdist(ab, centres.to(ab))                               # (P, Q)
    nearest, index = distance.topk(neighbours, dim=1, largest=False)
    weights = torch.exp(-nearest ** 2 / (2 * sigma ** 2))
    weights = weights / weights.sum(dim=1, keepdim=True)
    return torch.zeros_like(distance).scatter_(1, index, weights)


def rebalancing_weights(prior: Tensor, centres: Tensor, mix: float = 0.5, sigma: float = 5.0) -> Tensor:
    """Class rebalancing (section 2.2, eq. 4): ``w ∝ ((1 − λ) p̃ + λ u)⁻¹`` with ``p̃`` the ab
    distribution smoothed by a Gaussian of σ = 5 over the bin centres and ``u`` uniform over the
    bins where ``p̃`` is not zero, normalised so that ``Σ_q p̃_q w_q = 1`` (the official
    ``PriorFactor``, richzhang/colorization ``resources/caffe_traininglayers.py``). Rare colours
    weigh more, so the net does not settle for gray. A bin the prior never saw (which no target
    of that prior falls in) gets the largest weight of the others rather than an infinite one."""
    kernel = torch.exp(-torch.cdist(centres, centres) ** 2 / (2 * sigma ** 2))
    smoothed = kernel @ prior
    smoothed = smoothed / smoothed.sum()
    support = smoothed > 0
    uniform = support.to(smoothed) / support.sum()
    weights = 1 / ((1 - mix) * smoothed + mix * uniform).where(support, torch.ones_like(smoothed))
    weights = weights / (smoothed * weights).sum()
    return weights.where(support, weights[support].max())


class GrayInput(WrappedEncoder):
    """An RGB encoder input path that sees only lightness: RGB -> L / 100, repeated on 3 channels.

    The colorization network learns from L alone; this is how its backbone is evaluated and
    exported, so a linear probe on RGB images sees what training saw.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = backbone.out_dim

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(lightness(images))


def lightness(images: Tensor) -> Tensor:
    """L / 100 of RGB images, repeated on 3 channels (a gray image in [0, 1])."""
    return _gray(rgb_to_lab(images))


def _gray(lab: Tensor) -> Tensor:
    return (lab[:, :1] / 100).expand(-1, 3, -1, -1)


class Colorization(MethodBase):
    """Predict the colours of an image from its lightness, as classification over quantised ab bins.

    Per batch (section 2 of the paper)::

        L, ab = Lab(x)                               # the view, converted on the device
        Ẑ = softmax(head(f(L)))                      # (B, Q, h, w): a distribution over ab bins per pixel
        Z = soft_encode(ab at h x w)                 # 5 nearest bins, Gaussian σ = 5
        loss = −mean_pixels w(argmax Z) Σ_q Z_q log Ẑ_q      # eq. 2, rebalanced by eq. 4

    The backbone reads ``L`` repeated on its three input channels; a 1x1 convolution of its last
    feature map gives the Q logits, upsampled to a quarter of the input side (the paper predicts
    at a quarter of the resolution). The targets are by default each 4x4 cell's mean ab, and a gray image's
    pixels count as the others'; ``targets="sampled"`` and ``gray_mask=True`` are the official prototxt's
    choices (``colorization_train_val_v2.prototxt``: a stride-4 1x1 convolution of fixed weight 1 takes every
    fourth pixel's ab, and ``NonGrayMaskLayer`` multiplies the rebalancing weight of every pixel of an image
    that has no |ab| > 5 among those targets by zero, the mean still over all pixels). The defaults stay
    because the recipes were measured with them: on 32-pixel crops a 4x4 cell's mean is the colour the 8x8
    prediction stands for, where one pixel of it is aliased. (The official ``ClassRebalanceMultLayer``
    weighs only the gradient and reports the unweighted loss; here the reported loss is weighted, the
    gradient the same.) The rebalancing prior is the ab histogram of the first
    training batch, over all ranks (``prior``, a checkpointed buffer; the paper took ImageNet's). Evaluation and
    export use :class:`GrayInput`: the frozen backbone on the lightness of RGB images. Colour
    images only: grayscale data is refused in one line.

    Args:
        backbone: encoder over 3-channel images with spatial features (ConvNet, ResNet, ViT).
        grid: ab bin size (10).
        mix: λ of the rebalancing (0.5).
        sigma: σ of the soft encoding and the prior's smoothing (5).
        neighbours: bins per soft target (5).
        targets: ``"pooled"`` (each 4x4 cell's mean ab) or ``"sampled"`` (every fourth pixel's, the official).
        gray_mask: give images without colour (no |ab| > 5 among the targets) zero weight, as the official.
    """

    augment_recipe: ClassVar[str] = "flip"
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    curves: ClassVar[tuple[str, ...]] = ("task_accuracy",)

    def __init__(self, backbone: Backbone, *, grid: int = 10, mix: float = 0.5, sigma: float = 5.0,
                 neighbours: int = 5, targets: str = "pooled", gray_mask: bool = False) -> None:
        super().__init__()
        if targets not in ("pooled", "sampled"):
            raise ValueError(f"targets must be 'pooled' or 'sampled', got {targets!r}")
        if backbone.in_channels != 3:
            raise ValueError(f"colorization needs colour images, but the data has {backbone.in_channels} channel; "
                             f"use RGB data (data.channels=3)")
        if not 0 <= mix <= 1:
            raise ValueError(f"mix must be in [0, 1], got {mix}")
        self.backbone = backbone
        self.register_buffer("centres", ab_bins(grid))
        q = self.centres.shape[0]
        if not 1 <= neighbours <= q:
            raise ValueError(f"neighbours must be between 1 and {q} bins, got {neighbours}")
        with torch.no_grad(), eval_mode(backbone):  # a shape probe must not move BatchNorm's running statistics
            channels = feature_map(backbone, torch.zeros(1, 3, 32, 32)).shape[1]
        self.head = nn.Conv2d(channels, q, kernel_size=1)
        self.register_buffer("prior", torch.full((q,), float("nan")))
        self.mix, self.sigma, self.neighbours = mix, sigma, neighbours
        self.targets, self.gray_mask = targets, gray_mask
        self._weights: Tensor | None = None

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        x = batch.views[0]
        lab = rgb_to_lab(x)
        logits = self.head(feature_map(self.backbone, _gray(lab)))
        size = (max(1, x.shape[-2] // 4), max(1, x.shape[-1] // 4))
        logits = at_least_float32(F.interpolate(logits, size=size, mode="bilinear", align_corners=False))
        if self.targets == "sampled":                                            # targets at a quarter
            ab = lab[:, 1:, ::4, ::4][..., :size[0], :size[1]]
        else:
            ab = F.adaptive_avg_pool2d(lab[:, 1:], size)
        targets = soft_encode(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.centres, self.neighbours, self.sigma)
        nearest = targets.argmax(dim=1)
        log_p = F.log_softmax(logits.permute(0, 2, 3, 1).reshape(-1, self.centres.shape[0]), dim=1)
        per_pixel = -(targets * log_p).sum(dim=1) * self.class_weights(targets)[nearest]
        if self.gray_mask:
            coloured = (ab.abs() > 5).flatten(1).any(dim=1)                       # (B,)
            per_pixel = per_pixel * coloured.repeat_interleave(size[0] * size[1]).to(per_pixel)
        return {"loss": per_pixel.mean(), "task_accuracy": task_accuracy(log_p, nearest)}

    def class_weights(self, targets: Tensor) -> Tensor:
        """The rebalancing weights; the prior is set from ``targets`` on the first call of a run."""
        if self._weights is None:
            if not bool(torch.isfinite(self.prior).all()):
                with torch.no_grad():  # every rank's first batch, so that all ranks weigh alike
                    counts = distributed.gather(targets.sum(dim=0, keepdim=True)).sum(dim=0)
                    self.prior.copy_(counts / counts.sum())
            self._weights = rebalancing_weights(self.prior, self.centres, self.mix, self.sigma)
        return self._weights

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._weights = None  # recomputed from the loaded prior

    def eval_encoder(self) -> nn.Module:
        """The backbone on the lightness of RGB images (what training saw)."""
        return GrayInput(self.backbone)


__all__ = ["Colorization", "GrayInput", "ab_bins", "lightness", "rebalancing_weights", "soft_encode"]
