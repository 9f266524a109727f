"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers")."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, check_momentum, cosine, frozen_copy, momentum_update, projection_mlp
from selfsup.nn.vit import moco_v3_vit


def is_vit(backbone: Backbone) -> bool:
    """Whether the backbone is a Vision Transformer (it has a patch embedding)."""
    return hasattr(backbone.net, "patch_embed")


class MoCoV3(MethodBase):
    """Momentum contrast without a queue: the keys of the batch are the negatives, both views query.

    Per batch (Algorithm 1 of the paper)::

        q1, q2 = g(h(f(x1))), g(h(f(x2)))           # base encoder f, projector h, predictor g
        k1, k2 = h_m(f_m(x1)), h_m(f_m(x2))         # momentum encoder, no gradients
        ctr(q, k) = 2τ · CE(q kᵀ / τ, diagonal)     # info_nce with in-batch keys, gathered
        loss = ctr(q1, k2) + ctr(q2, k1)
        f_m, h_m ← m·(f_m, h_m) + (1 − m)·(f, h),   m = 1 − (1 − m₀)(cos(πk/K) + 1)/2

    The heads are the official code's (moco-v3 ``moco/builder.py``, ``_build_mlp``): a projector of
    ``proj_layers`` layers (2 for a ResNet, 3 for a ViT) and a 2-layer predictor, hidden 4096,
    output 256, every Linear without bias, BatchNorm after every hidden layer, and an affine-free
    BatchNorm after the projector's last layer and, for a ViT (``MoCo_ViT``), the predictor's
    last. A ViT trained from scratch is the official ``vits.py`` one (``official_vit``): a fixed 2-D
    sin-cos position embedding and its initialisation (:func:`selfsup.nn.vit.moco_v3_vit`); its
    patch projection stays at its random initialisation (``freeze_patch_embed``, the paper's fix
    of training instability, section 4.2, ``--stop-grad-conv1``). The recipes pick the optimiser per family as the paper:
    LARS for ResNets, AdamW for ViTs; the official LARS leaves biases and norms out of weight decay
    (the default here), its AdamW decays every parameter (the ViT recipe sets
    ``optim.exclude_bias_norm: false``). The momentum update follows the official order: the update
    before step k+1's keys uses step k+1's momentum.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features (ResNet, ViT or the ConvNet).
        hidden_dim: width of the projector's and predictor's hidden layers (4096).
        proj_dim: output dimension (256).
        proj_layers: projector depth (None: 3 for a ViT, 2 otherwise).
        temperature: τ (None: 0.2 for a ViT, 1.0 otherwise, the paper's values).
        base_momentum: m₀ (0.99), raised to 1 by a cosine over training.
        freeze_patch_embed: keep a ViT's patch projection random (None: when the backbone is a ViT).
        official_vit: make a ViT the official MoCo v3 one (sin-cos position embedding, initialisation;
            None: for a ViT not loaded with pretrained weights).
    """

    augment_recipe: ClassVar[str] = "byol"  # the paper uses BYOL's asymmetric views
    sync_batchnorm: ClassVar[bool] = True   # the official code converts to SyncBatchNorm

    def __init__(self, backbone: Backbone, *, hidden_dim: int = 4096, proj_dim: int = 256,
                 proj_layers: int | None = None, temperature: float | None = None, base_momentum: float = 0.99,
                 freeze_patch_embed: bool | None = None, official_vit: bool | None = None) -> None:
        super().__init__()
        check_momentum("base_momentum", base_momentum)
        vit = is_vit(backbone)
        temperature = (0.2 if vit else 1.0) if temperature is None else temperature
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        freeze = vit if freeze_patch_embed is None else freeze_patch_embed
        if freeze and not vit:
            raise ValueError("freeze_patch_embed needs a ViT backbone (one with a patch embedding)")
        official = vit and not getattr(backbone, "pretrained", False) if official_vit is None else official_vit
        if official and not vit:
            raise ValueError("official_vit needs a ViT backbone (one with a patch embedding)")
        self.backbone = backbone
        if official:
            moco_v3_vit(backbone.net)
        if freeze:
            backbone.net.patch_embed.requires_grad_(False)
        layers = (3 if vit else 2) if proj_layers is None else proj_layers
        self.projector = projection_mlp(backbone.out_dim, hidden_dim, proj_dim, num_layers=layers,
                                        last_batch_norm=True)
        self.predictor = projection_mlp(proj_dim, hidden_dim, proj_dim, num_layers=2, last_batch_norm=vit,
                                        last_bias=False)
        self.momentum_encoder = frozen_copy(nn.Sequential(backbone, self.projector))
        self.temperature, self.base_momentum = temperature, base_momentum
        self.patch_embed_frozen = freeze

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        return self.loss_from(self.embed(batch, progress), batch, progress)

    def embed(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        x1, x2 = batch.views
        q1, q2 = (self.predictor(self.projector(self.backbone(x))) for x in (x1, x2))
        with torch.no_grad():
            k1, k2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        return {"q1": q1, "q2": q2, "k1": k1, "k2": k2}

    def loss_from(self, embeddings: dict[str, Tensor], batch: Batch, progress: Progress) -> dict[str, Tensor]:
        q1, q2, k1, k2 = (embeddings[key] for key in ("q1", "q2", "k1", "k2"))
        scale = 2 * self.temperature  # the official code's factor: the loss's scale does not depend on τ
        loss = scale * (losses.info_nce(q1, k2, temperature=self.temperature)
                        + losses.info_nce(q2, k1, temperature=self.temperature))
        return {"loss": loss, "momentum": torch.tensor(self.momentum_at(progress.step, progress.max_steps))}

    def momentum_at(self, step: int, max_steps: int) -> float:
        """m before the keys of step ``step``: the cosine from m₀ at step 0 to 1 at the end."""
        return cosine(step, max_steps, self.base_momentum, 1.0)

    def on_step_end(self, progress: Progress) -> None:
        momentum = self.momentum_at(progress.step + 1, progress.max_steps)
        momentum_update(self.momentum_encoder, (self.backbone, self.projector), momentum)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, patch_embed_frozen={self.patch_embed_frozen}"


__all__ = ["MoCoV3"]
