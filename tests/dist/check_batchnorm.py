"""Run under torchrun (2 gloo CPU ranks): each rank puts its slice of a fixed global batch through
GlobalBatchNorm, backpropagates its own loss, and saves output, input gradient and running
statistics to <outdir>/rank<r>.pt."""

import sys
import warnings

import torch
import torch.distributed as dist

from selfsup import distributed
from selfsup.nn import GlobalBatchNorm

N_PER_RANK, CHANNELS = 5, 3


def global_batch(world):
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(N_PER_RANK * world, CHANNELS, 4, 4, generator=g)  # mean far from 0
    weights = torch.randn(N_PER_RANK * world, CHANNELS, 4, 4, generator=g)  # a loss that is not symmetric
    return x, weights


def batchnorm():
    torch.manual_seed(1)
    norm = GlobalBatchNorm(CHANNELS, momentum=0.3)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    return norm


def main(outdir):
    dist.init_process_group("gloo")
    rank, world = distributed.rank(), distributed.world_size()
    x, weights = global_batch(world)
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    norm = batchnorm()
    local = x[rows].clone().requires_grad_()
    out = norm(local)
    (out * weights[rows]).sum().backward()
    torch.save({"out": out.detach(), "grad": local.grad, "weight_grad": norm.weight.grad,
                "running_mean": norm.running_mean, "running_var": norm.running_var}, f"{outdir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    # A deprecated collective (torch.distributed.nn.functional in torch 2.14) fails the check.
    warnings.simplefilter("error", FutureWarning)
    main(sys.argv[1])
