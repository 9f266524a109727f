"""Data sources: what the engine asks for the batch of (epoch, position, rank).

A source's answer depends only on ``(epoch, position, rank)`` and its seed, never on what was
asked before, so a run resumed at any step sees exactly the batches it would have seen.
Each source says what ``kind`` of data it gives; a method says which kind it learns from
(``Method.data_kind``), and the engine refuses a mismatch in one line.

Kinds: ``"images"`` (:class:`InMemoryImages`, here), ``"sequences"`` (WAV folders,
:class:`selfsup.data.sequences.WavFolder`); streamed folders, graphs and image-text pairs come as
further sources of their kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from selfsup.data.dataset import ImageDataset


@dataclass
class ImageBatch:
    """Raw images of one batch, before augmentation.

    Attributes:
        images: uint8 ``(B, C, H, W)`` on the training device.
        index: ``(B,)`` int64 positions in the dataset.
        labels: ``(B,)`` int64 labels, or None when the data has none.
    """

    images: Tensor
    index: Tensor
    labels: Tensor | None
    extra: dict[str, Tensor] | None = None
    """What else a kind of data carries (a graph's ``edge_index``)."""


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """Epoch ``epoch``'s permutation of ``n`` samples, a function of ``(seed, epoch)`` only: the order
    every source (in memory, WAV windows, streamed) takes its global batches from."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class EpochOrdered:
    """What the sources share: ``steps_per_epoch`` and each epoch's order of ``len(self)`` samples
    (:func:`epoch_order` of ``seed``, cached for the current epoch, on ``order_device``)."""

    batch_size: int
    seed: int
    order_device: torch.device | str = "cpu"
    _order: tuple[int, Tensor] | None = None

    def steps_per_epoch(self) -> int:
        """Global batches in one epoch (the last incomplete batch is dropped)."""
        return len(self) // self.batch_size

    def order(self, epoch: int) -> Tensor:
        """The data order of ``epoch``: a function of (seed, epoch) only."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self), self.seed, epoch).to(self.order_device))
        return self._order[1]


@runtime_checkable
class DataSource(Protocol):
    """The interface every source gives the engine."""

    kind: str

    def __len__(self) -> int:
        """Number of training samples."""
        ...

    def steps_per_epoch(self) -> int:
        """Global batches in one epoch (the last incomplete batch is dropped)."""
        ...

    def batch(self, epoch: int, position: int, rank: int) -> ImageBatch:
        """This rank's share of global batch ``position`` of ``epoch``."""
        ...


class InMemoryImages(EpochOrdered):
    """A dataset that fits on the device as one uint8 tensor (Fashion-MNIST, CIFAR, small folders).

    Epoch ``e``'s order is a permutation drawn from ``seed`` and ``e`` alone. Global batch ``p``
    is positions ``[p * batch_size, (p + 1) * batch_size)`` of that order, and rank ``r`` of
    ``world_size`` takes the ``r``-th equal slice of it, so the global batch is the same
    whatever the number of processes.

    Args:
        dataset: the training images (and labels, if any).
        batch_size: the global batch.
        world_size: number of processes sharing each global batch.
        seed: seeds the epoch orders.
        device: where the images live and the batches are made.

    Examples:
        >>> ds = ImageDataset(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), None, None, "toy")
        >>> source = InMemoryImages(ds, batch_size=4, world_size=2, seed=0)
        >>> source.steps_per_epoch(), source.batch(0, 1, 1).images.shape
        (2, torch.Size([2, 1, 4, 4]))
    """

    kind = "images"

    def __init__(self, dataset: ImageDataset, batch_size: int, world_size: int = 1, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.seed = seed
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.labels = None if dataset.labels is None else dataset.labels.to(self.device)
        self.order_device = self.device

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def inputs(self) -> Tensor:
        """The training images on the device (what evaluation encodes)."""
        return self.images

    def batch(self, epoch: int, position: int, rank: int) -> ImageBatch:
        """Rank ``rank``'s slice of global batch ``position`` of ``epoch``'s order."""
        start = position * self.batch_size + rank * self.local_batch
        index = self.order(epoch)[start:start + self.local_batch]
        return ImageBatch(self.images[index], index, None if self.labels is None else self.labels[index])
