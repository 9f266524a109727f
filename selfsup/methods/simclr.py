"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, check_views
from selfsup.nn import Backbone, projection_mlp


class SimCLR(nn.Module):
    """Two augmented views, one encoder, a projection MLP and the NT-Xent loss.

    Per batch of N images (Algorithm 1 of the paper)::

        h = f(x1), f(x2)                     # backbone features, (N, F) each
        z = g(h)                             # projection MLP, (N, D) each
        loss = nt_xent(z1, z2, temperature)  # 2N anchors, 2N - 2 negatives each

    Both views go through the backbone as one batch of 2N, so BatchNorm sees both views
    (the paper's global BN across devices is what DDP + SyncBatchNorm would add).
    Under DDP the loss uses the projections of every rank as negatives.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        proj_hidden_dim: hidden width of the projection MLP (paper: 2048).
        proj_dim: output dimension of the projection (paper: 128).
        temperature: NT-Xent temperature τ (paper: 0.5 on CIFAR-10, 0.1 on ImageNet at batch 4096).
    """

    views = "simclr"

    def __init__(self, backbone: Backbone, *, proj_hidden_dim: int = 2048, proj_dim: int = 128,
                 temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.backbone = backbone
        self.projector = projection_mlp(backbone.out_dim, proj_hidden_dim, proj_dim)
        self.temperature = temperature

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        check_views(batch, 2, "SimCLR")
        z1, z2 = self.projector(self.backbone(torch.cat(batch.views))).chunk(2)
        return {"loss": losses.nt_xent(z1, z2, self.temperature)}

    forward = training_step

    def on_step_end(self, step: int, max_steps: int) -> None:
        """SimCLR has no state to update."""
