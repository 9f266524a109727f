"""The few torch.distributed facts the losses need: who we are and a gather that carries gradients.

Everything here degrades to the single-process answer when torch.distributed is
not initialised (or has one rank), so losses call it unconditionally.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one rank.

    Example:
        >>> is_distributed()  # a plain Python process
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default group; 0 when not distributed.

    Example:
        >>> rank()
        0
    """
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed.

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size() if is_distributed() else 1


def gather(tensor: Tensor) -> Tensor:
    """Concatenate along dim 0 the `tensor` of every rank, in rank order, with gradients.

    Under torch.distributed with world size W > 1 this returns `(W * N, ...)` for
    an input of `(N, ...)`; rank r's rows sit at `[r * N, (r + 1) * N)`. It uses
    `torch.distributed.nn.functional.all_gather`, whose backward *sums* the
    gradient that every rank sends back for this rank's rows. A loss that is a
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

    Example:
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
        # Imported lazily: torch.distributed.nn pulls in RPC machinery we never need single-process.
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(tensor), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over every rank (no gradient); ``tensor`` itself on one process.

    Example:
        >>> all_reduce_sum(torch.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is True on every rank (one all-reduce), so that all ranks decide together.

    Example:
        >>> all_true(True)  # single process: the flag itself
        True
    """
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)
