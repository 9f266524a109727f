"""Gradient caching: the exact gradient of a contrastive loss over a batch larger than memory.

Gao, Zhang, Han, Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (GradCache). A contrastive loss couples every image of the batch, so it cannot be
accumulated micro-batch by micro-batch like a per-sample loss; but it couples them only through
their embeddings, which are small. With ``train.micro_batch_size`` the step is::

    1. embeddings of every micro-batch, without a graph            # method.embed, RNG state kept
    2. the loss of the whole batch on those embeddings, and its     # method.loss_from (queues, gathers:
       gradient with respect to them (the "cache")                  #  the full batch's, as without caching)
    3. each micro-batch again, with its graph and the RNG state     # the same numbers as in 1
       of 1, back-propagated with its rows of the cache

Step 3 gives every parameter the gradient of the full-batch loss: the chain rule through the
embeddings, one micro-batch at a time, so the memory of activations is that of one micro-batch.
Exact for networks without BatchNorm (a ViT, say); with BatchNorm each micro-batch is normalised
with its own statistics, as under gradient accumulation, so the function differs from the one of
the whole batch. The running statistics move once per micro-batch, as under accumulation (the
first pass's updates are undone; the official GradCache runs both passes in training mode and
counts each micro-batch twice), so one micro-batch as large as the batch is the plain step, buffers
included. Under DDP each rank caches its own rows; the gradient is averaged over the ranks
once, after the last micro-batch, as DDP would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from selfsup import distributed, losses
from selfsup.engine import state
from selfsup.methods import Batch, Progress

if TYPE_CHECKING:
    from selfsup.engine.trainer import Trainer


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """``batch`` cut into row slices of ``size`` (the last may be smaller): views, index, labels
    and every extra tensor with one row per image; other extras are shared."""
    rows = batch.index.shape[0]
    parts = []
    for start in range(0, rows, size):
        cut = slice(start, min(start + size, rows))
        extra = None if batch.extra is None else {
            key: value[cut] if isinstance(value, Tensor) and value.ndim and value.shape[0] == rows else value
            for key, value in batch.extra.items()}
        parts.append(Batch([view[cut] for view in batch.views], batch.index[cut],
                           None if batch.labels is None else batch.labels[cut], extra))
    return parts


def cached_step(trainer: Trainer, batch: Batch, progress: Progress) -> dict[str, Tensor]:
    """One step's forward and backward with gradient caching (see the module docstring): the
    parameters' ``.grad`` hold the gradient of the whole batch's loss; returns the method's outputs."""
    method, model, fabric = trainer.method, trainer.model, trainer.fabric
    parts = split_batch(batch, trainer.cfg.train.micro_batch_size)
    device = fabric.device
    starts, pieces = [], []
    norms = [m for m in method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    statistics = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    with torch.no_grad(), losses.finite_checks(False):
        for part in parts:
            starts.append(state.rng_state(device))
            pieces.append(model(part, progress, embed=True))
        for m, (mean, var, count) in zip(norms, statistics):  # BatchNorm's running statistics move in the
            m.running_mean.copy_(mean)                        # second pass only, once per micro-batch
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
    cache = {key: torch.cat([piece[key] for piece in pieces]).detach().float() for key in pieces[0]}
    for value in cache.values():
        value.requires_grad_(True)
    with losses.finite_checks(False):
        outputs = method.loss_from(cache, batch, progress)
    trainer.check_finite(outputs["loss"], progress)
    fabric.backward(outputs["loss"])  # the cache's gradient (and of parameters only the loss uses)
    after = state.rng_state(device)  # what the first pass and the loss drew: the next step goes on from here
    start = 0
    with fabric.no_backward_sync(model, enabled=fabric.world_size > 1):
        for part, rng in zip(parts, starts):
            rows = slice(start, start + part.index.shape[0])
            start = rows.stop
            state.set_rng_state(rng, device)  # the same random choices as the first pass
            again = model(part, progress, embed=True)
            # Σ <embedding, its cached gradient>: its backward is the micro-batch's share of the whole
            # loss's. Through fabric.backward (which mixed precision requires), whose gradient scaler
            # already scaled the cache: divided out once here.
            surrogate = sum((again[key].float() * cache[key].grad[rows]).sum() for key in cache
                            if again[key].requires_grad and cache[key].grad is not None)
            if isinstance(surrogate, Tensor):
                fabric.backward(surrogate / _loss_scale(fabric))
    state.set_rng_state(after, device)
    if fabric.world_size > 1:
        average_gradients(method)
    return outputs


def _loss_scale(fabric) -> float:
    """The fp16 gradient scaler's current scale (1 without one)."""
    scaler = getattr(fabric.strategy.precision, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None else 1.0


def average_gradients(module: torch.nn.Module) -> None:
    """Every parameter's gradient averaged over the ranks (what DDP's backward does), in one all-reduce."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads or not distributed.is_distributed():
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= distributed.world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()
