"""Momentum (EMA) encoders, as in MoCo, BYOL and DINO."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from selfsup.errors import ConfigError


def check_momentum(name: str, value: float) -> None:
    """Raise a ValueError naming ``name`` unless the EMA momentum ``value`` lies in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters never receive gradients (the momentum encoder)."""
    ema = copy.deepcopy(module)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def momentum_update(ema: nn.Module, online: nn.Module | Iterable[nn.Module], momentum: float) -> None:
    """``θ_ema ← m·θ_ema + (1 − m)·θ_online`` for every parameter (He et al. 2020, eq. 2).

    ``online`` may be several modules (say a backbone and its head) whose parameters, in order,
    match those of ``ema`` (a :func:`frozen_copy` of ``nn.Sequential(backbone, head)``).
    Buffers (BatchNorm running statistics) are not averaged: each encoder keeps its own, as in
    the official MoCo code.
    """
    check_momentum("momentum", momentum)
    ema_params = list(ema.parameters())
    half = {p.dtype for p in ema_params} & {torch.bfloat16, torch.float16}
    if half and momentum > 0:
        # (1 - m)(θ_online - θ_ema) is below half a unit in the last place of a 16-bit weight unless the two
        # differ by about as much as the weight itself: the update rounds away (bf16, m = 0.996: 100 updates
        # towards a target 10% away moved no weight at all).
        raise ConfigError(f"the momentum encoder's weights are {half.pop()}, where its update rounds away; keep them "
                          f"in float32 (train.precision=bf16-mixed or 16-mixed, not bf16-true or 16-true)")
    modules = [online] if isinstance(online, nn.Module) else list(online)
    online_params = [p for module in modules for p in module.parameters()]
    if len(ema_params) != len(online_params):
        raise ValueError(f"EMA and online encoders differ: {len(ema_params)} vs {len(online_params)} parameters")
    torch._foreach_lerp_(ema_params, online_params, 1.0 - momentum)
