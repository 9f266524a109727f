"""Projection and prediction heads: the SimCLR/MoCo/BYOL MLP and DINO's weight-normalised head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def projection_mlp(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                   batch_norm: bool = True, last_batch_norm: bool = False,
                   last_bias: bool | None = None, last_scale: bool = False) -> nn.Sequential:
    """MLP head ``Linear -> [BN] -> ReLU -> ... -> Linear [-> BN]``.

    BYOL's projector and predictor use two layers (hidden 4096, output 256) with BN on the hidden
    layer; MoCo v2's head has no BN (``batch_norm=False``); SimSiam and MoCo v3 use three layers
    with BN after the last one (``last_batch_norm``, affine-free); SimCLR's official head
    (google-research/simclr ``projection_head``) has BN after every layer, the last one with a
    learned scale but no shift (``last_scale``: TF's ``center=False``). Linears followed by a BN
    have no bias; the last Linear has one unless ``last_bias`` says otherwise (None: when no BN
    follows it). BYOL's and MoCo v3's official last Linears have none.
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
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm if last_bias is None else last_bias))
    if last_batch_norm:
        layers.append(ScaleBatchNorm1d(out_dim) if last_scale else nn.BatchNorm1d(out_dim, affine=False))
    elif last_scale:
        raise ValueError("last_scale is the last BatchNorm's scale: it needs last_batch_norm=True")
    return nn.Sequential(*layers)


class ScaleBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm with a learned per-channel scale and no shift (TF's ``center=False, scale=True``):
    SimCLR's last projection layer. A :class:`torch.nn.BatchNorm1d` whose ``bias`` is None, so
    ``convert_sync_batchnorm`` and exports treat it as any BatchNorm."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=True)
        del self.bias
        self.register_parameter("bias", None)


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, section 3.1 and appendix).

    An MLP ``in -> hidden -> hidden -> bottleneck`` with GELU (BatchNorm optional, off in the
    paper for ViTs), L2 normalisation of the bottleneck, then a weight-normalised linear layer
    without bias to the K output dimensions. With ``norm_last_layer`` the weight norm's
    magnitude ``g`` is fixed at 1, so the last layer only chooses directions: the paper's
    stabiliser for ViT training.

    Args:
        in_dim: backbone feature dimension.
        out_dim: K, the number of prototypes (paper: 65536).
        hidden_dim: MLP width (2048).
        bottleneck_dim: dimension before the last layer (256).
        num_layers: MLP layers (3).
        batch_norm: BatchNorm after each hidden linear layer.
        norm_last_layer: fix the last layer's weight-norm magnitude at 1.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, in_dim)`` features -> ``(B, out_dim)`` logits."""
        return self.last_layer(F.normalize(self.mlp(features), dim=-1))
