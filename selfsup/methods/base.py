"""What every method provides, and the batch it receives.

A method is a plain ``nn.Module`` (no trainer inside) that satisfies :class:`Method`. The engine
draws a batch of uint8 images, makes the views with ``selfsup.augment.recipe(method.views, size)``
(batched, on the device), wraps them in a :class:`Batch` and calls the method; after the optimiser
step it calls ``on_step_end`` so stateful methods (momentum encoders, queues, schedules) update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@dataclass
class Batch:
    """One training batch.

    Attributes:
        views: augmented views, each float ``(B, C, H, W)`` in [0, 1]; their number and sizes
            are those of the method's augmentation recipe (2 for SimCLR, 2 + n_local for DINO).
        index: ``(B,)`` positions of the images in the dataset (for memory banks).
        labels: ``(B,)`` class labels when the dataset has them (supervised contrastive), else None.
    """

    views: list[Tensor]
    index: Tensor
    labels: Tensor | None = None


@runtime_checkable
class Method(Protocol):
    """The method protocol.

    Attributes:
        backbone: the encoder that evaluation and export use.
        views: name of the augmentation recipe the method expects (``selfsup.augment.recipe``).
    """

    backbone: nn.Module
    views: str

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Return a dict with the scalar ``loss`` to minimise and any metrics to log."""
        ...

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Update state after the optimiser step ``step`` (0-based) of ``max_steps``."""
        ...


def check_views(batch: Batch, expected: int, method: str) -> None:
    """Raise a clear error when a batch has the wrong number of views for ``method``."""
    if len(batch.views) != expected:
        raise ValueError(f"{method} expects {expected} views per batch, got {len(batch.views)}; "
                         f"use an augmentation recipe that returns {expected} views")
