"""Projection and prediction heads."""

from __future__ import annotations

from torch import nn


def projection_mlp(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                   batch_norm: bool = True, last_batch_norm: bool = False) -> nn.Sequential:
    """MLP head ``Linear -> [BN] -> ReLU -> ... -> Linear [-> BN]``.

    SimCLR and MoCo v2 use two layers (hidden 2048, output 128) with BN on the hidden layer;
    SimSiam and MoCo v3 use three layers with BN after the last one (``last_batch_norm``).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
