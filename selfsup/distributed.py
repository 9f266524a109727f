"""The few torch.distributed facts the losses need: who we are and a gather that carries gradients.

Everything here degrades to the single-process answer when torch.distributed is
not initialised (or has one rank), so losses call it unconditionally.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one rank.

    Examples:
        >>> is_distributed()  # a plain Python process
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default group; 0 when not distributed.

    Examples:
        >>> rank()
        0
    """
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed.

    Examples:
        >>> world_size()
        1
    """
    return dist.get_world_size() if is_distributed() else 1


def gather(tensor: Tensor) -> Tensor:
    """Concatenate along dim 0 the `tensor` of every rank, in rank order, with gradients.

    Under torch.distributed with world size W > 1 this returns `(W * N, ...)` for
    an input of `(N, ...)`; rank r's rows sit at `[r * N, (r + 1) * N)`. Its
    backward *sums* the gradient that every rank sends back for this rank's rows
    (as `torch.distributed.nn.functional.all_gather` did). A loss that is a
    mean over the local anchors against gathered candidates therefore gets, on
    each rank, W times the gradient of the single-process loss on the
    concatenated batch, and DDP's mean over ranks cancels the W (see
    `selfsup.losses`). Without torch.distributed (or with one rank) it returns
    `tensor` itself.

    Every rank must pass the same shape; a mismatch raises ValueError on all
    ranks (checked with one small all-gather of the shapes) instead of hanging
    or failing inside the backend.

    Args:
        tensor: `(N, ...)` tensor on this rank's device.

    Returns:
        `(W * N, ...)` tensor.

    Examples:
        >>> z = torch.randn(4, 8, requires_grad=True)
        >>> gather(z).shape  # single process: identity
        torch.Size([4, 8])
    """
    if not is_distributed():
        return tensor
    if tensor.dim() == 0:
        raise ValueError("gather: tensor must have at least one dimension (rows to concatenate), got a 0-d tensor")
    shape = torch.tensor(tensor.shape, device=tensor.device, dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(other, shape) for other in shapes):
        raise ValueError(
            f"gather: every rank must pass the same shape, got {[tuple(s.tolist()) for s in shapes]}; "
            "use drop_last=True in the DataLoader so all ranks see equal batches"
        )
    if tensor.requires_grad:
        return _GatherWithGradients.apply(tensor)
    return _all_gather(tensor)


def gather_list(tensor: Tensor) -> list[Tensor]:
    """Every rank's ``tensor`` (same shape on every rank), in rank order, without gradients;
    ``[tensor]`` on one process.

    Examples:
        >>> [t.tolist() for t in gather_list(torch.arange(2))]
        [[0, 1]]
    """
    if not is_distributed():
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def _all_gather(tensor: Tensor) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


# torch.distributed.nn.functional's all_gather and all_reduce warn that they are deprecated (torch 2.14)
# in favour of torch.distributed._functional_collectives, a private module whose names changed between
# releases (all_gather_tensor_autograd, then all_gather_single) and whose all_reduce has no backward in
# older torch. These two Functions use only the stable collectives, on every torch the package declares
# and on every backend (gloo has no reduce_scatter: the backward all-reduces and keeps this rank's rows).
class _GatherWithGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows = tensor.shape[0]
        return _all_gather(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[rank() * ctx.rows:(rank() + 1) * ctx.rows]


class _AllReduceWithGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        total = tensor.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


def all_reduce_with_gradients(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over every rank, whose backward sums the gradients of every rank (what
    global BatchNorm needs); ``tensor`` itself on one process.

    Examples:
        >>> all_reduce_with_gradients(torch.ones(2, requires_grad=True)).tolist()
        [1.0, 1.0]
    """
    if not is_distributed():
        return tensor
    return _AllReduceWithGradients.apply(tensor)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over every rank (no gradient); ``tensor`` itself on one process.

    Examples:
        >>> all_reduce_sum(torch.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def launch_rank() -> int:
    """This process's rank, also before the process group starts: torchrun's ``RANK``, or, where Fabric
    started the processes itself (it sets ``LOCAL_RANK``, ``NODE_RANK`` and ``WORLD_SIZE`` but not
    ``RANK``), ``NODE_RANK x processes per node + LOCAL_RANK``; 0 alone."""
    if is_distributed():
        return rank()
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    local, node = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("NODE_RANK", "0"))
    nodes = int(os.environ.get("NUM_NODES", os.environ.get("SLURM_NNODES", "1")) or 1)
    per_node = max(1, int(os.environ.get("WORLD_SIZE", "1")) // max(1, nodes))
    return node * per_node + local


def any_of(flags: list[bool], device: torch.device | str = "cpu") -> list[bool]:
    """For each flag, whether it is True on any rank (one all-reduce for all of them).

    Examples:
        >>> any_of([True, False])  # single process: the flags themselves
        [True, False]
    """
    if not is_distributed():
        return [bool(flag) for flag in flags]
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value > 0) for value in values.tolist()]


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is True on every rank (one all-reduce), so that all ranks decide together.

    Examples:
        >>> all_true(True)  # single process: the flag itself
        True
    """
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)
