"""Run under torchrun (2 gloo CPU ranks): each rank computes the gathered losses on its slice
of a fixed global batch and saves its loss and input gradients to <outdir>/rank<r>.pt."""

import sys
import warnings

import torch
import torch.distributed as dist

from selfsup import distributed, losses

N_PER_RANK, DIM = 6, 5


def global_batch(world):
    g = torch.Generator().manual_seed(0)
    n = N_PER_RANK * world
    a, b = torch.randn(n, DIM, generator=g), torch.randn(n, DIM, generator=g)
    # Every class appears on both ranks, and each at least twice overall.
    labels = torch.arange(n) % 4
    return a, b, labels


CASES = {
    "nt_xent": lambda a, b, y: losses.nt_xent(a, b, 0.3),
    "nt_xent_decoupled": lambda a, b, y: losses.nt_xent(a, b, 0.3, decoupled=True),
    "info_nce": lambda a, b, y: losses.info_nce(a, b, None, 0.2),
    "clip": lambda a, b, y: losses.clip(a, b, 5.0),
    "supcon": lambda a, b, y: losses.supcon(torch.cat([a, b]), torch.cat([y, y]), 0.2),
}


def main(outdir):
    dist.init_process_group("gloo")
    r, world = distributed.rank(), distributed.world_size()
    assert distributed.is_distributed() and world == dist.get_world_size()
    a, b, labels = global_batch(world)
    rows = slice(r * N_PER_RANK, (r + 1) * N_PER_RANK)
    result = {}
    for name, loss_fn in CASES.items():
        la, lb = a[rows].clone().requires_grad_(), b[rows].clone().requires_grad_()
        loss = loss_fn(la, lb, labels[rows])
        loss.backward()
        result[name] = (loss.detach(), la.grad, lb.grad)
    torch.save(result, f"{outdir}/rank{r}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    # A deprecated collective (torch.distributed.nn.functional in torch 2.14) fails the check.
    warnings.simplefilter("error", FutureWarning)
    main(sys.argv[1])
