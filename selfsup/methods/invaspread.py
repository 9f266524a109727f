"""InvaSpread (Ye, Zhang, Yuen, Chang 2019, "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature")."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone


class InvaSpread(MethodBase):
    """Instance classification inside the batch: no memory bank, no momentum encoder.

    Per batch (section 3 of the paper, the official code's symmetric form)::

        f, f̂ = normalize(W · backbone(x)), normalize(W · backbone(x̂))   # two views, (N, 128) each
        P(i | f̂_i) = exp(f_i · f̂_i / τ) / Σ_k exp(f_k · f̂_i / τ)          # invariance: own instance
        P(i | f_j) for j ≠ i                                             # spreading: not instance i
        J = −Σ_i log P(i | f̂_i) − Σ_i Σ_{j ≠ i} log(1 − P(i | f_j))      # losses.invaspread, τ = 0.1

    The batch's own features are the instance classifier's weights (detached, as in the official
    code), so every step compares each image with the other 2N − 2 samples of the same batch,
    fresh from the current network, where InstDisc compares against a bank of stale features.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        proj_dim: embedding dimension (128, a linear layer as in the paper).
        temperature: τ (0.1).
    """

    exclude_bias_norm = False  # mangye16/Unsupervised_Embedding_Learning demo_seen.py: SGD(model.parameters(), weight_decay=...) decays every parameter

    augment_recipe: ClassVar[str] = "moco_v1"  # the official code's views: InstDisc's augmentation

    def __init__(self, backbone: Backbone, *, proj_dim: int = 128, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.backbone = backbone
        self.projector = nn.Linear(backbone.out_dim, proj_dim)
        self.temperature = temperature

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        return self.loss_from(self.embed(batch, progress), batch, progress)

    def embed(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        f, f_hat = (self.projector(self.backbone(view)) for view in batch.views)
        return {"f": f, "f_hat": f_hat}

    def loss_from(self, embeddings: dict[str, Tensor], batch: Batch, progress: Progress) -> dict[str, Tensor]:
        return {"loss": losses.invaspread(embeddings["f"], embeddings["f_hat"], self.temperature)}


__all__ = ["InvaSpread"]
