"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning")."""

from __future__ import annotations

import math
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, projection_mlp


def output_std(z: Tensor) -> Tensor:
    """The paper's collapse monitor (section 4.1, Fig. 2): the standard deviation over the batch of
    the L2-normalised outputs, averaged over channels. About ``1 / sqrt(d)`` for outputs spread
    over the sphere, 0 when every image maps to one point."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


class SimSiam(MethodBase):
    """Two views through one encoder; each view's prediction regresses the other's projection,
    whose gradient is stopped.

    Per batch (Algorithm 1 of the paper)::

        z1, z2 = f(x1), f(x2)                 # backbone + projection MLP
        p1, p2 = h(z1), h(z2)                 # predictor
        L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2,   D(p, z) = -cos(p, z)

    No negatives, no momentum encoder: the stop-gradient alone keeps the outputs from
    collapsing to a constant (``stop_gradient=False`` shows it collapse, the paper's Fig. 2).
    The predictor is trained at a fixed learning rate (``fixed_predictor_lr``, the paper's
    default), the rest with the engine's schedule. ``output_std`` is logged with the loss and
    drawn in ``curves.png``; ``1/sqrt(d)`` is where spread-out outputs sit.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        proj_hidden_dim: projector width (paper: 2048; None: the backbone's feature width).
        proj_dim: output dimension d (2048).
        pred_hidden_dim: predictor bottleneck (512, a quarter of d).
        proj_layers: projector depth (3 on ImageNet, 2 on CIFAR), BN after every layer.
        fixed_predictor_lr: keep the predictor's LR at the peak LR instead of decaying it.
        stop_gradient: the paper's stop-gradient; False only to show the collapse.
    """

    exclude_bias_norm = False  # facebookresearch/simsiam main_simsiam.py: SGD(model.parameters(), weight_decay=...) decays every parameter

    augment_recipe: ClassVar[str] = "moco_v2"  # the official code's augmentation: MoCo v2's
    sync_batchnorm: ClassVar[bool] = True      # "SyncBN" in the paper's ImageNet runs
    curves: ClassVar[tuple[str, ...]] = ("output_std",)

    def __init__(self, backbone: Backbone, *, proj_hidden_dim: int | None = 2048, proj_dim: int = 2048,
                 pred_hidden_dim: int = 512, proj_layers: int = 3, fixed_predictor_lr: bool = True,
                 stop_gradient: bool = True) -> None:
        super().__init__()
        if proj_layers < 2:
            raise ValueError(f"proj_layers must be >= 2 (the paper uses 3, or 2 on CIFAR), got {proj_layers}")
        self.backbone = backbone
        hidden = backbone.out_dim if proj_hidden_dim is None else proj_hidden_dim
        self.projector = projection_mlp(backbone.out_dim, hidden, proj_dim, num_layers=proj_layers,
                                        last_batch_norm=True)
        self.predictor = projection_mlp(proj_dim, pred_hidden_dim, proj_dim, num_layers=2)
        self.fixed_predictor_lr = fixed_predictor_lr
        self.stop_gradient = stop_gradient
        self.proj_dim = proj_dim

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        z1, z2 = (self.projector(self.backbone(view)) for view in batch.views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        d1 = losses.negative_cosine(p1, z2, stop_gradient=self.stop_gradient)
        d2 = losses.negative_cosine(p2, z1, stop_gradient=self.stop_gradient)
        loss = 0.5 * (d1 + d2)
        return {"loss": loss, "output_std": output_std(z1)}

    def param_groups(self) -> list[dict]:
        encoder = [*self.backbone.parameters(), *self.projector.parameters()]
        return [{"params": encoder}, {"params": list(self.predictor.parameters()),
                                      "fixed_lr": self.fixed_predictor_lr}]

    @property
    def spread_std(self) -> float:
        """``1 / sqrt(d)``: the ``output_std`` of outputs spread uniformly over the sphere."""
        return 1 / math.sqrt(self.proj_dim)

    def extra_repr(self) -> str:
        return f"stop_gradient={self.stop_gradient}, fixed_predictor_lr={self.fixed_predictor_lr}"


__all__ = ["SimSiam", "output_std"]
