"""A FIFO queue of keys (MoCo's dictionary)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KeyQueue(nn.Module):
    """Fixed-size FIFO of L2-normalised keys, kept as buffers so it is checkpointed with the model.

    Unlike the reference MoCo code, the queue length need not be a multiple of the batch:
    a batch that runs past the end wraps around to the start, and a batch larger than the
    queue keeps only its last ``size`` keys.

    Args:
        size: number of keys K.
        dim: key dimension D.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be positive, got size={size}, dim={dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Replace the oldest ``len(keys)`` entries by ``keys`` (N, D)."""
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"keys must have shape (N, {self.keys.shape[1]}), got {tuple(keys.shape)}")
        keys = keys.detach().to(self.keys.dtype)[-self.size:]
        n = keys.shape[0]
        slots = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[slots] = keys
        self.ptr.copy_((self.ptr + n) % self.size)
