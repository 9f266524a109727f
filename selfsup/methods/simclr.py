"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, projection_mlp


class SimCLR(MethodBase):
    """Two augmented views, one encoder, a projection MLP and the NT-Xent loss.

    Per batch of N images (Algorithm 1 of the paper)::

        h = f(x1), f(x2)                     # backbone features, (N, F) each
        z = g(h)                             # projection MLP, (N, D) each
        loss = nt_xent(z1, z2, temperature)  # 2N anchors, 2N - 2 negatives each

    Both views go through the backbone as one batch of 2N, so BatchNorm sees both views; under
    DDP the engine makes it global BN (the paper's) and the loss uses the projections of every
    rank as negatives.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        proj_hidden_dim: hidden width of the projection MLP (paper: 2048).
        proj_dim: output dimension of the projection (paper: 128).
        temperature: NT-Xent temperature τ (paper: 0.5 on CIFAR-10, 0.1 on ImageNet at batch 4096);
            NT-Logistic's too.
        proj_layers: the head (section 4.2, Fig. 8): 2, the paper's nonlinear MLP; 1, a linear
            projection to ``proj_dim``; 0, none (the loss sees the backbone's features).
        loss: ``nt_xent`` (the paper's), or the alternatives of its Table 2 for comparison:
            ``nt_logistic`` (:func:`selfsup.losses.nt_logistic`) and ``margin_triplet``
            (:func:`selfsup.losses.margin_triplet`, with ``margin``).
        margin: the margin triplet's margin (paper's best: 0.4).
        proj_last_bn: BatchNorm after the head's last Linear, with a learned scale and no shift, and
            that Linear without bias, as the official code builds every head (google-research/simclr
            ``projection_head``: ``use_bn=True`` on each layer, the last with ``use_bias=False``, so
            its BN has ``center=False``); also the ``proj_layers=1`` linear head's. False: the last
            Linear with a bias and no BN, as the paper's text describes g and most
            reimplementations (lightly, solo-learn) build it.
    """

    LOSSES = ("nt_xent", "nt_logistic", "margin_triplet")

    augment_recipe = "simclr"
    sync_batchnorm = True
    legacy_args = {"proj_last_bn": False}  # checkpoints from before the official head read as they were built

    def __init__(self, backbone: Backbone, *, proj_hidden_dim: int = 2048, proj_dim: int = 128,
                 temperature: float = 0.5, proj_layers: int = 2, loss: str = "nt_xent", margin: float = 0.4,
                 proj_last_bn: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if proj_layers not in (0, 1, 2):
            raise ValueError(f"proj_layers must be 0 (no head), 1 (linear) or 2 (the paper's MLP), got {proj_layers}")
        if loss not in self.LOSSES:
            raise ValueError(f"loss must be one of {', '.join(self.LOSSES)}, got {loss!r}")
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.backbone = backbone
        self.projector = (nn.Identity() if proj_layers == 0
                          else projection_mlp(backbone.out_dim, proj_hidden_dim, proj_dim, num_layers=proj_layers,
                                              last_batch_norm=proj_last_bn, last_scale=proj_last_bn))
        self.temperature = temperature
        self.loss_name, self.margin = loss, margin

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        return self.loss_from(self.embed(batch, progress), batch, progress)

    def embed(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        z1, z2 = self.projector(self.backbone(torch.cat(batch.views))).chunk(2)
        return {"z1": z1, "z2": z2}

    def loss_from(self, embeddings: dict[str, Tensor], batch: Batch, progress: Progress) -> dict[str, Tensor]:
        z1, z2 = embeddings["z1"], embeddings["z2"]
        if self.loss_name == "nt_logistic":
            return {"loss": losses.nt_logistic(z1, z2, self.temperature)}
        if self.loss_name == "margin_triplet":
            return {"loss": losses.margin_triplet(z1, z2, self.margin)}
        return {"loss": losses.nt_xent(z1, z2, self.temperature)}
