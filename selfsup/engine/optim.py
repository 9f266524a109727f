"""Optimisers (SGD, AdamW, LARS) with the usual parameter groups, and the LR schedule."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from selfsup.config import OptimConfig, Optimizer


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), as used by SimCLR and BYOL.

    For each parameter ``w`` with gradient ``g`` in a group with ``lars_adapt=True``::

        g ← g + weight_decay · w
        g ← g · trust_coefficient · ‖w‖ / ‖g‖        (when both norms are > 0)
        v ← momentum · v + g;   w ← w − lr · v

    Groups with ``lars_adapt=False`` (biases and normalisation weights) get plain SGD with momentum.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["lars_adapt"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["trust_coefficient"] * w_norm / g_norm, torch.ones_like(w_norm))
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def _is_bias_or_norm(name: str, param: Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters split into decayed weights and (optionally) undecayed biases/norms."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not cfg.exclude_bias_norm:
        return [{"params": [p for _, p in trainable], "weight_decay": cfg.weight_decay}]
    decay = [p for n, p in trainable if not _is_bias_or_norm(n, p)]
    no_decay = [p for n, p in trainable if _is_bias_or_norm(n, p)]
    return [{"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_adapt": False}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.name`` over :func:`param_groups` of ``model``."""
    groups = param_groups(model, cfg)
    if cfg.name == Optimizer.lars:
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for group in groups:
        group.pop("lars_adapt", None)
    if cfg.name == Optimizer.sgd:
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))


def learning_rate(step: int, max_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup from ``base_lr / warmup_steps`` to ``base_lr``, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
