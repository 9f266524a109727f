"""SupCon (Khosla et al. 2020, "Supervised Contrastive Learning")."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, projection_mlp


def require_labels(batch: Batch, method: MethodBase) -> Tensor:
    """The batch's labels, or a clear error naming the method when the data has none."""
    if batch.labels is None:
        raise ValueError(f"{type(method).__name__} learns from class labels, but this batch has none; give it "
                         f"labelled data")
    return batch.labels


class SupCon(MethodBase):
    """Contrastive learning where every image of the same class is a positive (stage 1 of two).

    Per batch (section 3.2 of the paper)::

        z = normalize(h(f(x))) for each of the V views      # (V·N, 128)
        l_i = −1/|P(i)| Σ_{p ∈ P(i)} log softmax_{a ≠ i}(z_i · z_a / τ)[p]   # L_out, eq. 2
        loss = mean_i l_i                                   # losses.supcon, P(i): same label, ≠ i

    Stage 2 of the paper's evaluation trains a linear classifier on the frozen encoder with
    cross-entropy, which is the engine's linear probe (``linear_accuracy``); the projection head
    is dropped, as in the paper. The head is the official code's ("mlp": Linear–ReLU–Linear,
    hidden = the encoder's width, output 128). Labels are required: the engine refuses data
    without them in one line.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        proj_hidden_dim: hidden width of the head (None: the backbone's width).
        proj_dim: output dimension (128).
        temperature: τ (0.1, the paper's; its code's CIFAR default is 0.07).
    """

    exclude_bias_norm = False  # HobbitLong/SupContrast util.set_optimizer: SGD(model.parameters(), weight_decay=...) decays every parameter

    augment_recipe: ClassVar[str] = "simclr"
    views_needed: ClassVar[tuple[int, int | None]] = (1, None)
    needs_labels: ClassVar[bool] = True

    def __init__(self, backbone: Backbone, *, proj_hidden_dim: int | None = None, proj_dim: int = 128,
                 temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.backbone = backbone
        hidden = backbone.out_dim if proj_hidden_dim is None else proj_hidden_dim
        self.projector = projection_mlp(backbone.out_dim, hidden, proj_dim, batch_norm=False)
        self.temperature = temperature

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        return self.loss_from(self.embed(batch, progress), batch, progress)

    def embed(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        return {"z": torch.stack([self.projector(self.backbone(view)) for view in batch.views], dim=1)}  # (B, V, D)

    def loss_from(self, embeddings: dict[str, Tensor], batch: Batch, progress: Progress) -> dict[str, Tensor]:
        labels = require_labels(batch, self)
        z = embeddings["z"].transpose(0, 1).flatten(0, 1)  # view 1 of every image, then view 2, ...
        return {"loss": losses.supcon(z, labels.repeat(embeddings["z"].shape[1]), self.temperature)}


__all__ = ["SupCon", "require_labels"]
