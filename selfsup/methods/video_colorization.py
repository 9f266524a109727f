"""Tracking Emerges by Colorizing Videos (Vondrick, Shrivastava, Fathi, Guadarrama, Murphy 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import augment, data
from selfsup.methods.base import Batch, Progress, VideoMethodBase
from selfsup.nn import Backbone
from selfsup.nn.dense import DescriptorNet


class GrayInput(nn.Module):
    """Frames to gray (the luminance, repeated over the network's channels) before ``module``: the
    colorization network never sees colour, in training or evaluation."""

    def __init__(self, module: nn.Module, channels: int) -> None:
        super().__init__()
        self.module, self.channels = module, channels

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("mean", "std", "out_dim", "in_channels"):  # what evaluation and export read
                return getattr(self.module, name)
            raise

    def forward(self, images: Tensor) -> Tensor:
        x = augment.to_float(images)
        if x.shape[1] == 3:
            gray = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]
            x = gray.expand(-1, self.channels, -1, -1)
        return self.module(x)


class LabInput(GrayInput):
    """Frames to Lab before ``module``, each channel mapped into [0, 1] (L / 100, a / 255 + 1/2,
    b / 255 + 1/2, so that the backbone's input stays on the scale of images); ``drop`` = 1 or 2 sets
    that chromatic channel (a or b) to neutral (1/2, i.e. 0) in every frame, MAST's channel dropout.
    The colorization input of ``input: lab_dropout``; evaluation gives it whole Lab frames."""

    def forward(self, images: Tensor, drop: int | None = None) -> Tensor:
        lab = augment.rgb_to_lab(augment.to_float(images))
        x = torch.cat([lab[:, :1] / 100, lab[:, 1:] / 255 + 0.5], dim=1)
        if drop is not None:
            if drop not in (1, 2):
                raise ValueError(f"drop must be 1 (a) or 2 (b), got {drop}")
            x[:, drop] = 0.5
        return self.module(x)


INPUTS = ("gray", "lab_dropout")


@torch.no_grad()
def _kmeans(points: Tensor, count: int, iterations: int) -> Tensor:
    """``count`` k-means centres of ``(N, d)`` points: 20 Lloyd iterations from a seeded draw of at most
    20,000 of them; under torch.distributed rank 0's result on every rank."""
    generator = torch.Generator().manual_seed(0)
    points = points[torch.randperm(len(points), generator=generator)[:20000].to(points.device)].float()
    centres = points[torch.randperm(len(points), generator=generator)[:count].to(points.device)]
    for _ in range(iterations):
        assign = torch.cdist(points, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=len(centres)).float()[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(centres, src=0)
    return centres


class VideoColorization(VideoMethodBase):
    """Copy the colours of reference frames to a gray target frame by attention over pixels.

    Per batch of clips of ``references`` reference frames and one target (the last), all gray::

        f = net(gray(x))                          # (B, frames, D, h, w) per-pixel features
        c = onehot(kmeans16(ab(x)))               # reference colours, quantised Lab ab at the grid
        A_ij = softmax_i(f_i · f_j / T)           # i: every pixel of the references, j: the target's
        ĉ_j = Σ_i A_ij c_i                        # the target's predicted colour distribution
        loss = cross_entropy(log ĉ_j, kmeans16(ab(target_j)))

    As the paper: 3 reference frames, 16 k-means clusters of the ab channels, T = 1 in training
    (0.5 is the paper's test temperature; propagation here uses its protocol's own, see
    :mod:`selfsup.evaluate.video`). The clusters are fitted on the first training batch's colours
    (20 Lloyd iterations from a seeded draw; a buffer, so checkpoints keep them), where the paper
    fits them on its training videos. The per-pixel network is a hypercolumn of the backbone's
    stages (:class:`selfsup.nn.dense.DescriptorNet`) at 1/``stride`` of the input, where the paper
    uses a ResNet-18 and a 3-D convolutional network at 1/8 (two 3x3 convolutions on the hypercolumn,
    tried on the synthetic videos, propagated worse: J&F 0.562 against 0.578 at 20 and 10 epochs). No
    official code was released.

    Args:
        backbone: the frame encoder (its pooled features remain the global evaluation encoder).
        references: reference frames per target (paper: 3).
        stride: frames between the clip's frames.
        clusters: k-means colour clusters (paper: 16).
        temperature: the attention's T in training (paper: 1).
        dim: per-pixel feature dimension (paper: 64).
        grid_stride: the features' grid is the input's side / ``grid_stride``.
        input: ``gray`` (paper) or ``lab_dropout`` (MAST's channel dropout, above).
        dropout_target: with ``lab_dropout``, what the target frame's pixels are asked: ``dropped`` (the
            default), the value of the channel dropped at that step, quantised into ``clusters`` levels by
            k-means of that channel alone (MAST ``main.py`` ``compute_lphoto`` regresses the dropped channel
            only: the network sees the other one in every frame, which would give part of a both-channel
            answer away); ``ab``: the clusters of both channels, as with gray input (before 2026-12-07; a
            checkpoint of then reads with it, :attr:`legacy_args`).
        seed: seeds the per-step draw of the dropped channel (``lab_dropout``), so a resumed run
            draws the same.
    """

    legacy_args = {"dropout_target": "ab"}  # lab_dropout checkpoints from before the dropped-channel target read as built

    def __init__(self, backbone: Backbone, *, references: int = 3, stride: int = 1, clusters: int = 16,
                 temperature: float = 1.0, dim: int = 64, grid_stride: int = 4, input: str = "gray",
                 seed: int = 0, dropout_target: str = "dropped") -> None:
        super().__init__()
        if dropout_target not in ("dropped", "ab"):
            raise ValueError(f"dropout_target must be 'dropped' or 'ab', got {dropout_target!r}")
        if references < 1 or stride < 1 or clusters < 2 or temperature <= 0:
            raise ValueError(f"need references >= 1, stride >= 1, clusters >= 2, temperature > 0; got {references}, "
                             f"{stride}, {clusters}, {temperature}")
        if input not in INPUTS:
            raise ValueError(f"input must be one of {', '.join(INPUTS)}, got {input!r}")
        self.input, self.seed = input, seed
        self.backbone = backbone
        self.net = DescriptorNet(backbone, dim, stride=grid_stride)
        self.references, self.stride, self.temperature = references, stride, temperature
        self.register_buffer("centres", torch.zeros(clusters, 2))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.by_channel = input == "lab_dropout" and dropout_target == "dropped"
        if self.by_channel:  # row c - 1: the levels of channel c (a, b), fitted with ``centres``
            self.register_buffer("channel_centres", torch.zeros(2, clusters))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        if self.by_channel and prefix + "centres" in state_dict and prefix + "channel_centres" not in state_dict:
            error_msgs.append("this lab_dropout checkpoint was trained to predict both colour channels (before "
                              "2026-12-07); load it with method_args.dropout_target=ab (the command line does)")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"input={self.input!r}, references={self.references}, temperature={self.temperature}"

    def clip_times(self, lengths: Tensor, generator: torch.Generator) -> Tensor:
        return data.video.window_times(self.references + 1, self.stride)(lengths, generator)

    def _wrap(self, module: nn.Module) -> nn.Module:
        return (LabInput if self.input == "lab_dropout" else GrayInput)(module, self.backbone.in_channels)

    def eval_encoder(self) -> nn.Module:
        return self._wrap(self.backbone)

    def dense_encoder(self) -> nn.Module:
        return self._wrap(self.net)

    def dropped_channel(self, step: int) -> int:
        """The Lab channel (1: a, 2: b) ``input: lab_dropout`` sets neutral at ``step``: a fair coin
        from ``seed`` and the step, the same on every rank and after a resume."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return 1 + int(torch.randint(2, (), generator=generator))

    @torch.no_grad()
    def fit_clusters(self, ab: Tensor, iterations: int = 20) -> None:
        """k-means of ``(N, 2)`` ab values into :attr:`centres`, and, where the target is the dropped
        channel, of each channel alone into ``channel_centres`` (seeded; the same on every rank, whose
        rank-0 result is broadcast under torch.distributed)."""
        self.centres.copy_(_kmeans(ab, len(self.centres), iterations))
        if self.by_channel:
            for c in range(2):
                self.channel_centres[c].copy_(_kmeans(ab[:, c:c + 1], len(self.centres), iterations)[:, 0])
        self.fitted.fill_(True)

    def quantise(self, frames: Tensor, grid: tuple[int, int], channel: int | None = None) -> Tensor:
        """``(N, h, w)`` cluster of each grid cell's mean ab colour, or with ``channel`` (1: a, 2: b)
        the level of that channel alone."""
        ab = F.adaptive_avg_pool2d(augment.rgb_to_lab(frames)[:, 1:], grid)  # (N, 2, h, w)
        flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
        if not bool(self.fitted):
            self.fit_clusters(flat)
        if channel is not None:
            return (flat[:, channel - 1:channel] - self.channel_centres[channel - 1][None]).abs().argmin(dim=1).view(
                ab.shape[0], *grid)
        return torch.cdist(flat, self.centres).argmin(dim=1).view(ab.shape[0], *grid)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        clips = augment.clip_to_float(batch.views[0])  # (B, R + 1, 3, H, W)
        b, k = clips.shape[:2]
        if clips.shape[2] != 3:
            raise ValueError(f"video colorization needs colour frames, got {clips.shape[2]} channel(s)")
        encoder = self.dense_encoder()
        frames = clips.flatten(0, 1)
        drop = self.dropped_channel(progress.step) if self.input == "lab_dropout" else None
        features = (encoder(frames, drop=drop) if drop is not None else encoder(frames)).float()  # (B * k, D, h, w)
        grid = tuple(features.shape[-2:])
        with torch.no_grad():
            colours = self.quantise(frames, grid, drop if self.by_channel else None).view(b, k, -1)  # (B, k, hw)
        features = features.view(b, k, features.shape[1], -1)  # (B, k, D, hw)
        refs = features[:, :-1].permute(0, 1, 3, 2).flatten(1, 2)  # (B, R * hw, D)
        target = features[:, -1]  # (B, D, hw)
        attention = torch.softmax(refs @ target / self.temperature, dim=1)  # (B, R * hw, hw), over references
        ref_colours = F.one_hot(colours[:, :-1].flatten(1), len(self.centres)).float()  # (B, R * hw, K)
        predicted = ref_colours.transpose(1, 2) @ attention  # (B, K, hw)
        loss = F.nll_loss(predicted.clamp(min=1e-8).log(), colours[:, -1])
        accuracy = (predicted.argmax(dim=1) == colours[:, -1]).float().mean()
        return {"loss": loss, "colour_accuracy": accuracy.detach()}
