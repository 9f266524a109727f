"""R3M's time-contrastive objective (Nair et al. 2022, "R3M: A Universal Visual Representation for Robot
Manipulation"; official code facebookresearch/r3m)."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup import augment, losses
from selfsup.methods.base import Batch, Progress, VideoMethodBase
from selfsup.nn import Backbone


class R3M(VideoMethodBase):
    """Five frames per video; the frame nearer in time is the positive, -L2 distance the similarity.

    Per batch (official ``r3m/trainer.py`` and ``r3m/utils/data_loaders.py``)::

        start, end, s0 < s1 <= s2  ~ sampled as the official loader   # 5 frames per video
        e = f(crop(x))                                                 # one crop for the 5 frames
        tcn = r3m_time_contrastive(e_s0, e_s1, e_s2, 3 shuffles)       # InfoNCE, sim = -||a - b||
        loss = tcn_weight * tcn + l1_weight * mean ||e||_1 + l2_weight * mean ||e||_2

    The embeddings are the backbone's pooled features, unnormalised (R3M's ResNet with ``fc =
    Identity``). The penalties average over all five frames' embeddings, as the official's. R3M's
    language term needs captioned clips, which the video source does not give; it is left out (the
    official's representation config trains it with ``langweight`` 0 as well).

    Args:
        backbone: the frame encoder.
        alpha: the start frame lies in the first, the end frame in the last ``alpha`` of the video (0.2).
        shuffles: negatives from other videos per anchor (the official's ``num_negatives`` 3).
        tcn_weight, l1_weight, l2_weight: the loss weights (official ``config_rep.yaml``: 1, 1e-5, 1e-5).
        crop_scale: area range of the random resized crop shared by a video's five frames (the
            official ``rctraj`` augmentation: RandomResizedCrop with scale (0.2, 1.0)); None: none.
    """

    def __init__(self, backbone: Backbone, *, alpha: float = 0.2, shuffles: int = 3, tcn_weight: float = 1.0,
                 l1_weight: float = 1e-5, l2_weight: float = 1e-5,
                 crop_scale: tuple[float, float] | None = (0.2, 1.0)) -> None:
        super().__init__()
        if not 0 < alpha < 0.5 or shuffles < 0:
            raise ValueError(f"need 0 < alpha < 0.5 and shuffles >= 0, got {alpha} and {shuffles}")
        self.backbone = backbone
        self.alpha, self.shuffles = alpha, shuffles
        self.tcn_weight, self.l1_weight, self.l2_weight = tcn_weight, l1_weight, l2_weight
        self.crop_scale = None if crop_scale is None else tuple(crop_scale)

    def clip_times(self, lengths: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, 5)``: start, end, s0, s1, s2, drawn as the official loader (its 1-based frame numbers
        minus one): start in [0, int(αL)], end in [int((1-α)L) - 2, L - 2], s1 in [1, L - 2],
        s0 in [0, s1 - 1], s2 in [s1, L - 1]. Videos need at least 3 frames."""
        if bool((lengths < 3).any()):
            raise ValueError(f"R3M needs videos of at least 3 frames, got one of {int(lengths.min())}")
        n = len(lengths)

        def uniform(low: Tensor, high: Tensor) -> Tensor:  # integers in [low, high]
            return low + (torch.rand(n, generator=generator) * (high - low + 1)).long().clamp(max=high - low)

        zero = torch.zeros(n, dtype=torch.int64)
        start = uniform(zero, (self.alpha * lengths).long())
        end = uniform(((1 - self.alpha) * lengths).long() - 2, lengths - 2).clamp(min=0)
        s1 = uniform(zero + 1, lengths - 2)
        s0 = uniform(zero, s1 - 1)
        s2 = uniform(s1, lengths - 1)
        return torch.stack([start, end, s0, s1, s2], dim=1)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        clips = batch.views[0]  # (B, 5, C, H, W)
        views = (augment.clip_views(clips, scale=self.crop_scale, jitter=None) if self.crop_scale is not None
                 else augment.clip_to_float(clips))
        embeddings = self.backbone(views.flatten(0, 1)).float().view(clips.shape[0], 5, -1)
        _, _, s0, s1, s2 = embeddings.unbind(1)
        shuffles = torch.stack([torch.randperm(len(s0), device=s0.device) for _ in range(self.shuffles)]) \
            if self.shuffles else torch.empty(0, len(s0), dtype=torch.int64, device=s0.device)
        tcn = losses.r3m_time_contrastive(s0, s1, s2, shuffles)
        l1 = embeddings.abs().sum(-1).mean()
        l2 = embeddings.norm(dim=-1).mean()
        loss = self.tcn_weight * tcn + self.l1_weight * l1 + self.l2_weight * l2
        return {"loss": loss, "tcn": tcn.detach(), "l1": l1.detach(), "l2": l2.detach()}
