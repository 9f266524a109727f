"""N-pair training (Sohn 2016, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective")."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.methods.supcon import require_labels
from selfsup.nn import Backbone


def pair_up(labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Anchor and positive positions: random disjoint pairs of images with the same label.

    Each class's images are shuffled and taken two at a time (an odd one out is left over), so a
    batch of B images gives about B/2 pairs from every class it holds. Returns two ``(P,)`` index
    tensors into ``labels``.
    """
    order = torch.randperm(labels.numel(), generator=generator, device="cpu").to(labels.device)
    order = order[torch.argsort(labels[order], stable=True)]
    sorted_labels = labels[order]
    position = torch.arange(labels.numel(), device=labels.device)
    rank_in_class = position - torch.searchsorted(sorted_labels, sorted_labels)
    has_next = torch.zeros_like(position, dtype=torch.bool)
    has_next[:-1] = sorted_labels[1:] == sorted_labels[:-1]
    first = position[(rank_in_class % 2 == 0) & has_next]
    return order[first], order[first + 1]


class NPair(MethodBase):
    """Each anchor must pick its class's positive among the positives of the other classes.

    Per batch (section 3.2 of the paper)::

        (a_i, p_i) = pairs of images of one class             # pair_up, about B/2 pairs
        l_i = log(1 + Σ_{j: y_j ≠ y_i} exp(f(a_i)·f(p_j) − f(a_i)·f(p_i)))   # losses.n_pair
        loss = mean_i l_i + λ/4 · (mean ‖f(a)‖² + mean ‖f(p)‖²) # the L2 term of tf npairs_loss, λ = 0.002

    The paper builds batches of N pairs from N distinct classes; on data with fewer classes than
    pairs (Fashion-MNIST has 10) a batch holds several pairs per class, and the positives of the
    anchor's own class are left out of its negatives (``n_pair(..., labels=)``), which is the
    paper's loss whenever the classes are distinct. Embeddings are unnormalised inner products,
    as in the paper. The embedding-norm penalty is the one of the authors' TensorFlow loss
    (``tf.contrib.losses.metric_learning.npairs_loss``: ``0.25 · reg_lambda · (mean ‖a‖² + mean ‖p‖²)``,
    ``reg_lambda`` 0.002). Labels are required.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        embed_dim: embedding dimension (128).
        l2_reg: λ of the embedding-norm penalty (0.002).
        same_class: how pairs of the anchor's own class count: ``"mask"`` (left out, above; our default, the
            paper's loss over the other classes, the recipe's measured setting) or ``"soft"`` (TensorFlow's
            ``npairs_loss``: targets spread over the class's positives). :func:`selfsup.losses.n_pair`.
    """

    augment_recipe: ClassVar[str] = "instdisc"
    views_needed: ClassVar[tuple[int, int | None]] = (1, None)
    needs_labels: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, *, embed_dim: int = 128, l2_reg: float = 0.002,
                 same_class: str = "mask") -> None:
        super().__init__()
        if not l2_reg >= 0:
            raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
        if same_class not in ("mask", "soft"):
            raise ValueError(f"same_class must be 'mask' or 'soft', got {same_class!r}")
        self.same_class = same_class
        self.backbone = backbone
        self.embedding = nn.Linear(backbone.out_dim, embed_dim)
        self.l2_reg = l2_reg

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        labels = require_labels(batch, self).repeat(len(batch.views))
        e = torch.cat([self.embedding(self.backbone(view)) for view in batch.views]).float()
        anchor, positive = pair_up(labels)
        if anchor.numel() < 2:
            raise ValueError(f"NPair needs at least two same-class pairs per batch, got {anchor.numel()}; "
                             f"use a larger batch")
        a, p = e[anchor], e[positive]
        loss = losses.n_pair(a, p, labels=labels[anchor], same_class=self.same_class)
        penalty = 0.25 * (a.pow(2).sum(dim=1).mean() + p.pow(2).sum(dim=1).mean())
        return {"loss": loss + self.l2_reg * penalty, "pairs": torch.tensor(float(anchor.numel()))}


__all__ = ["NPair", "pair_up"]
