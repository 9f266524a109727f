"""Shuffling BatchNorm (He et al. 2020, sec. 3.3).

A key encoder with BatchNorm computes each key with statistics of the batch that holds its
query's positive, which lets the model cheat the pretext task. MoCo shuffles the batch across
GPUs before the key encoder and unshuffles after, so a query and its key see BN statistics of
different sub-batches. Under DDP the shuffle is global across ranks and every rank's BatchNorm
is its own (the query encoder's too), as in the official code.

On one process the official single-GPU demo (facebookresearch/moco, branch ``colab-notebook``,
``colab/moco_cifar10_demo.ipynb``) emulates the devices with ``SplitBatchNorm`` in **both**
encoders: sample ``n`` of a batch is normalised with the statistics of split ``n % S`` (8 splits),
and the key batch is permuted before its encoder. So a query and its key are normalised within
groups of B / S images, and mostly not the same group: :class:`SplitBatchNorm` and
:func:`split_batchnorm` do that here, and :func:`shuffled_forward` permutes the keys.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed


class SplitBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over ``num_splits`` interleaved sub-batches, as MoCo's single-GPU demo emulates devices.

    In training on one process, sample ``n`` is normalised with the mean and biased variance of
    the samples ``m`` with ``m % S == n % S`` (``S``: :meth:`splits_for`, at most ``num_splits``);
    the running statistics move towards the mean of the splits' statistics (unbiased variances),
    ``r ← (1 − momentum)·r + momentum·mean_s(stat_s)``, as the demo's average of per-split
    updates. Under DDP (each rank is a device already), in eval mode, or with
    one split, it is plain BatchNorm. Its state dict is BatchNorm's, so checkpoints and exports
    read it as one.

    Args:
        num_features: channels ``C`` of ``(N, C, ...)`` inputs.
        num_splits: sub-batches (the demo's ``bn_splits``, 8).
    """

    def __init__(self, num_features: int, num_splits: int = 8, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SplitBatchNorm expects input of shape (N, C, ...), got {tuple(input.shape)}")

    def splits_for(self, batch: int) -> int:
        """The splits a batch of ``batch`` samples gets: the largest divisor of it up to ``num_splits``
        that leaves at least 2 samples per split, else 1 (plain BatchNorm).

        The demo requires ``batch % num_splits == 0``; here a batch it would refuse (the last of an
        epoch, a small one) gets fewer, equal splits. Never splits of one sample: BatchNorm can
        take no statistics from one value per channel, and one image's own would normalise each
        sample alone, an instance norm rather than a device's batch.
        """
        return max((s for s in range(1, min(self.num_splits, batch // 2) + 1) if batch % s == 0), default=1)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        splits = self.splits_for(input.shape[0])
        if not self.training or splits == 1 or distributed.world_size() > 1:
            return super().forward(input)
        n, c = input.shape[:2]
        grouped = input.reshape(n // splits, splits * c, *input.shape[2:])  # sample n -> split n % S
        weight = self.weight.repeat(splits) if self.affine else None
        bias = self.bias.repeat(splits) if self.affine else None
        if not self.track_running_stats:
            return F.batch_norm(grouped, None, None, weight, bias, True, 0.0, self.eps).view_as(input)
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        mean, var = self.running_mean.repeat(splits), self.running_var.repeat(splits)
        out = F.batch_norm(grouped, mean, var, weight, bias, True, momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(splits, c).mean(dim=0))
            self.running_var.copy_(var.view(splits, c).mean(dim=0))
        return out.view_as(input)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


def split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm of ``module`` (in place) by a :class:`SplitBatchNorm` with the same
    state; returns ``module``."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SplitBatchNorm):
            split = SplitBatchNorm(child.num_features, num_splits, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.running_mean.device
                                   if child.running_mean is not None else None)
            split.load_state_dict(child.state_dict())
            split.train(child.training)
            setattr(module, name, split)
        else:
            split_batchnorm(child, num_splits)
    return module


@torch.no_grad()
def shuffled_forward(encoder: nn.Module, images: Tensor) -> Tensor:
    """``encoder(images)`` of the batch in a random order, rows given back in input order.

    On one process, an encoder whose BatchNorms are :class:`SplitBatchNorm` then normalises each key
    within a random group of the batch; under DDP the batch is shuffled across the ranks (rank 0's
    permutation) and each rank encodes its share with its own statistics.

    Args:
        encoder: the (momentum) key encoder; called without gradients.
        images: ``(B, ...)`` local batch.
    """
    if distributed.world_size() > 1:
        return _shuffled_forward_ddp(encoder, images)
    perm = torch.randperm(images.shape[0], device=images.device)
    return encoder(images[perm])[torch.argsort(perm)]


def _shuffled_forward_ddp(encoder: nn.Module, images: Tensor) -> Tensor:
    rank, world = distributed.rank(), distributed.world_size()
    local = images.shape[0]
    everything = distributed.gather(images)
    perm = torch.randperm(everything.shape[0], device=images.device)
    dist.broadcast(perm, src=0)  # every rank must use rank 0's permutation
    mine = perm.view(world, local)[rank]
    keys = distributed.gather(encoder(everything[mine]))
    return keys[torch.argsort(perm)].view(world, local, *keys.shape[1:])[rank]
