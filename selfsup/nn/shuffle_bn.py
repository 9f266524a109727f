"""Shuffling BatchNorm (He et al. 2020, sec. 3.3).

A key encoder with BatchNorm computes each key with statistics of the batch that holds its
query's positive, which lets the model cheat the pretext task. MoCo shuffles the batch across
GPUs before the key encoder and unshuffles after, so a query and its key see BN statistics of
different sub-batches. On one process we get the same effect by shuffling and running the key
encoder on ``num_splits`` chunks, each normalised with its own statistics (MoCo's SplitBatchNorm
for single-GPU runs). Under DDP the shuffle is global across ranks, as in the official code.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from selfsup import distributed


@torch.no_grad()
def shuffled_forward(encoder: nn.Module, images: Tensor, num_splits: int = 8) -> Tensor:
    """``encoder(images)`` with BN statistics computed on shuffled sub-batches; rows in input order.

    Args:
        encoder: the (momentum) key encoder; called without gradients.
        images: ``(B, ...)`` local batch.
        num_splits: sub-batches on a single process (ignored under DDP, where every rank is one).
    """
    if distributed.world_size() > 1:
        return _shuffled_forward_ddp(encoder, images)
    batch = images.shape[0]
    splits = max(1, min(num_splits, batch // 2))
    perm = torch.randperm(batch, device=images.device)
    out = torch.cat([encoder(chunk) for chunk in images[perm].chunk(splits)])
    return out[torch.argsort(perm)]


def _shuffled_forward_ddp(encoder: nn.Module, images: Tensor) -> Tensor:
    rank, world = distributed.rank(), distributed.world_size()
    local = images.shape[0]
    everything = distributed.gather(images)
    perm = torch.randperm(everything.shape[0], device=images.device)
    dist.broadcast(perm, src=0)  # every rank must use rank 0's permutation
    mine = perm.view(world, local)[rank]
    keys = distributed.gather(encoder(everything[mine]))
    return keys[torch.argsort(perm)].view(world, local, -1)[rank]
