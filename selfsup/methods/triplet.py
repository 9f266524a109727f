"""Triplet training with online mining (Schroff et al. 2015, FaceNet; Hermans et al. 2017, batch-hard)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.methods.supcon import require_labels
from selfsup.nn import Backbone

MINING = ("batch_hard", "semi_hard")


class Triplet(MethodBase):
    """An embedding on the unit sphere where an image is closer to every image of its class than to
    any of another class by a margin, from triplets mined inside each batch.

    Per batch::

        e = normalize(W · f(x))                       # (N, 128), FaceNet's L2-normalised embedding
        batch_hard: l_a = [max_p d(a, p) − min_n d(a, n) + α]₊      # d: distance, or its square (squared)
        semi_hard:  l_ap = [d(a, p) − d(a, n*) + α]₊,  n* = argmin_{n: d(a,n) > d(a,p)} d(a, n)
        loss = mean                                   # losses.batch_hard_triplet / semi_hard_triplet

    Labels are required (the engine refuses data without them). Mining needs several images
    per class in a batch: the in-memory source's shuffled batches of 256 give about 25 per class
    on a 10-class set; for many classes sample P classes x K images per batch.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        embed_dim: embedding dimension (128, as FaceNet).
        margin: α (0.2, FaceNet's on the unit sphere).
        mining: ``"batch_hard"`` (Hermans et al.) or ``"semi_hard"`` (FaceNet).
        squared: compare squared distances, as FaceNet's eq. 1 and its official ``triplet_loss``
            (margin 0.2 on the squared distance); False compares distances, as Hermans et al.
            (who report the plain distance more stable) and ``F.triplet_margin_loss``.
    """

    augment_recipe: ClassVar[str] = "instdisc"  # one lightly augmented view per image
    views_needed: ClassVar[tuple[int, int | None]] = (1, None)
    needs_labels: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, *, embed_dim: int = 128, margin: float = 0.2,
                 mining: str = "batch_hard", squared: bool = False) -> None:
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"mining must be one of {', '.join(MINING)}, got {mining!r}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.backbone = backbone
        self.embedding = nn.Linear(backbone.out_dim, embed_dim)
        self.margin, self.mining, self.squared = margin, mining, squared

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        labels = require_labels(batch, self).repeat(len(batch.views))
        e = F.normalize(torch.cat([self.embedding(self.backbone(view)) for view in batch.views]).float(), dim=1)
        mine = losses.batch_hard_triplet if self.mining == "batch_hard" else losses.semi_hard_triplet
        return {"loss": mine(e, labels, self.margin, squared=self.squared)}

    def extra_repr(self) -> str:
        return f"mining={self.mining}, margin={self.margin}, squared={self.squared}"


__all__ = ["MINING", "Triplet"]
