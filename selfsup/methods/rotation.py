"""Rotation prediction (Gidaris, Singh, Komodakis 2018, "Unsupervised Representation Learning by Predicting Image Rotations")."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.augment import pretext
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone


def task_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of the pretext task's labels that ``logits`` get right (a logged metric)."""
    return (logits.detach().argmax(dim=1) == labels).float().mean()


class Rotation(MethodBase):
    """Which way is up? A 4-way classifier of the rotation (0, 90, 180, 270 degrees) applied to an
    image, on top of the backbone.

    Per batch (section 2 of the paper)::

        x_0, x_90, x_180, x_270 = rotate(x, k · 90°) for k = 0..3    # all four, every image: 4B inputs
        loss = CE(W · f(x_k), k)                                      # mean over the 4B inputs

    Only the backbone is kept: the reported number is the linear probe of its frozen features,
    not the task; the task's own accuracy (``task_accuracy``) is logged and drawn in curves.png.
    Square images only. The views are the official CIFAR loader's (gidariss/FeatureLearningRotNet):
    each image shifted by up to an eighth of its side with a black border (``RandomCrop(32,
    padding=4)``) and flipped with p 0.5, the ``shift_flip`` recipe.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
    """

    exclude_bias_norm = False  # gidariss/FeatureLearningRotNet algorithms/Algorithm.py: SGD(model.parameters(), weight_decay=...) decays every parameter

    augment_recipe: ClassVar[str] = "shift_flip"  # the official CIFAR loader's shift (padding 4) and flip
    views_needed: ClassVar[tuple[int, int | None]] = (1, 1)
    curves: ClassVar[tuple[str, ...]] = ("task_accuracy",)

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.out_dim, 4)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        images, labels = pretext.rotations(batch.views[0])
        logits = self.classifier(self.backbone(images))
        return {"loss": F.cross_entropy(logits.float(), labels), "task_accuracy": task_accuracy(logits, labels)}


__all__ = ["Rotation", "task_accuracy"]
