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
        predictor: False removes the predictor (the online projection regresses the target's
            directly): the paper's Table 5 ablation, which collapses.
        head_norm: the projector's and predictor's hidden normalisation: ``batch`` (the paper's),
            ``none``, or ``group`` (GroupNorm, no batch statistics). With ``backbone.norm=group_ws``
            (convnet) no layer sees batch statistics, the test of "BYOL leaks through BatchNorm"
            (Richemond et al. 2020, "BYOL works even without batch statistics").
    """

    augment_recipe = "byol"
    sync_batchnorm = True

    HEAD_NORMS = ("batch", "group", "none")

    def __init__(self, backbone: Backbone, *, proj_hidden_dim: int = 4096, proj_dim: int = 256,
                 pred_hidden_dim: int = 4096, base_momentum: float = 0.996, final_momentum: float = 1.0,
                 predictor: bool = True, head_norm: str = "batch") -> None:
        super().__init__()
        check_momentum("base_momentum", base_momentum)
        check_momentum("final_momentum", final_momentum)
        if head_norm not in self.HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {', '.join(self.HEAD_NORMS)}, got {head_norm!r}")
        self.backbone = backbone
        self.projector = self._head(backbone.out_dim, proj_hidden_dim, proj_dim, head_norm)
        self.predictor = self._head(proj_dim, pred_hidden_dim, proj_dim, head_norm) if predictor else nn.Identity()
        self.head_norm = head_norm
        self.target = frozen_copy(nn.Sequential(backbone, self.projector))
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum

    @staticmethod
    def _head(in_dim: int, hidden: int, out_dim: int, norm: str) -> nn.Sequential:
        """The paper's MLP (BatchNorm on the hidden layer); ``none`` without it, ``group`` with a
        GroupNorm of 16 groups in its place (batch-independent, as in Richemond et al. 2020)."""
        head = projection_mlp(in_dim, hidden, out_dim, last_bias=False, batch_norm=norm == "batch")
        if norm == "group":
            head.insert(1, nn.GroupNorm(min(16, hidden), hidden))
        return head

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
