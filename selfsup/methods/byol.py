"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent")."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, check_momentum, cosine, frozen_copy, momentum_update, projection_mlp


class BYOL(MethodBase):
    """An online network predicts a slowly moving target network's projection of the other view.

    Per batch (section 3.1 of the paper)::

        z, z' = g(f(v)), g(f(v'))            # online projections of both views
        p, p' = q(z), q(z')                  # online predictions
        t, t' = g_ξ(f_ξ(v)), g_ξ(f_ξ(v'))    # target projections, no gradient
        loss = (2 - 2 cos(p, t')) + (2 - 2 cos(p', t))
        ξ ← τ ξ + (1 − τ) θ,   τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2   # after optimiser step k of K

    No negatives: the predictor and the momentum target keep the representation from collapsing.
    Each view goes through each network on its own, as in the official code, so BatchNorm
    normalises each view with its own statistics (the asymmetric views differ: only the second
    is solarised). The target is a copy of the online backbone and projector and never receives
    gradients; evaluation uses the online backbone. Projector and predictor are the official MLP
    (deepmind-research ``byol/utils/networks.py``): Linear, BatchNorm, ReLU, then a Linear without
    bias (the first Linear's bias, which the official code keeps, is cancelled by the BatchNorm
    after it, so it is left out here).

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        proj_hidden_dim: hidden width of the projector (paper: 4096).
        proj_dim: projection dimension (256), also the predictor's output.
        pred_hidden_dim: hidden width of the predictor (4096).
        base_momentum: τ_base (0.996).
        final_momentum: τ at the last step (1.0).
    """

    augment_recipe = "byol"
    sync_batchnorm = True

    def __init__(self, backbone: Backbone, *, proj_hidden_dim: int = 4096, proj_dim: int = 256,
                 pred_hidden_dim: int = 4096, base_momentum: float = 0.996, final_momentum: float = 1.0) -> None:
        super().__init__()
        check_momentum("base_momentum", base_momentum)
        check_momentum("final_momentum", final_momentum)
        self.backbone = backbone
        self.projector = projection_mlp(backbone.out_dim, proj_hidden_dim, proj_dim, last_bias=False)
        self.predictor = projection_mlp(proj_dim, pred_hidden_dim, proj_dim, last_bias=False)
        self.target = frozen_copy(nn.Sequential(backbone, self.projector))
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        p1, p2 = (self.predictor(self.projector(self.backbone(view))) for view in batch.views)
        with torch.no_grad():
            t1, t2 = (self.target(view) for view in batch.views)
        # negative_cosine is -cos, so 2 - 2 cos = 2 + 2 * negative_cosine.
        loss = 4 + 2 * (losses.negative_cosine(p1, t2) + losses.negative_cosine(p2, t1))
        return {"loss": loss, "momentum": torch.tensor(self.momentum_at(progress))}

    def momentum_at(self, progress: Progress) -> float:
        """τ of the target update that follows step ``progress.step``."""
        return cosine(progress.step, progress.max_steps, self.base_momentum, self.final_momentum)

    def on_step_end(self, progress: Progress) -> None:
        momentum_update(self.target, (self.backbone, self.projector), self.momentum_at(progress))
