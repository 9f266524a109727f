"""A memory bank of one L2-normalised feature per training image (InstDisc, CMC)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.nn.momentum import check_momentum


class MemoryBank(nn.Module):
    """``(N, D)`` unit vectors, row ``i`` the running feature of training image ``i``.

    Wu et al. 2018, sec. 3.1: after each step the entry of every image in the batch moves towards
    its new feature, ``v_i ← normalize(m·v_i + (1 − m)·f_i)`` (m = 0.5), and the other entries stay
    as they are. Entries start as random unit vectors. The bank is a buffer, so it is checkpointed
    with the method; it is never broadcast under DDP: every rank applies the same update from the
    features and indices of the whole global batch (``update`` takes them gathered), so the copies
    stay equal by construction at the cost of one all-gather of ``(B, D)`` per step.

    Args:
        size: number of training images N.
        dim: feature dimension D.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"memory bank size and dim must be positive, got size={size}, dim={dim}")
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def update(self, index: Tensor, features: Tensor, momentum: float = 0.5) -> None:
        """Move entries ``index`` (B,) towards ``features`` (B, D), then renormalise them.

        An index may appear once per call (a batch is drawn without replacement) and must lie in
        ``[0, N)`` (not checked here: that would wait for the device every step); ``features``
        need not be normalised (the paper's ``f_i`` are).
        """
        check_momentum("momentum", momentum)
        if features.ndim != 2 or features.shape[1] != self.features.shape[1]:
            raise ValueError(f"features must have shape (B, {self.features.shape[1]}), got {tuple(features.shape)}")
        if index.shape != features.shape[:1]:
            raise ValueError(f"index must have shape ({features.shape[0]},) to match features, "
                             f"got {tuple(index.shape)}")
        index = index.to(self.features.device)
        moved = self.features[index] * momentum + features.detach().to(self.features.dtype) * (1 - momentum)
        self.features[index] = F.normalize(moved, dim=1)
