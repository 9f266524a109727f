"""The ViT as MoCo v3 builds it (facebookresearch/moco-v3, ``vits.py``, ``VisionTransformerMoCo``).

Two differences from timm's default ViT, applied to a timm model in place by :func:`moco_v3_vit`:

- a fixed 2-D sin-cos position embedding (:func:`sincos_position_embedding`), not a learned one;
- the initialisation: Xavier-uniform Linears with zero biases, the qkv projection's fan counted
  as three separate matrices, the patch projection uniform with the bound of a Linear from
  ``channels·p·p`` inputs, and the class token drawn with std 1e-6.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """``(1, 1 + grid_h·grid_w, dim)``: a zero row for the class token, then one row per patch.

    Per patch the four quarters of the embedding are ``[sin(a·ω), cos(a·ω), sin(b·ω), cos(b·ω)]``
    with ``ω_d = temperature^(−d / (dim/4))``, ``d = 0 … dim/4 − 1``. As in the official code, whose
    ``torch.meshgrid(grid_w, grid_h)`` indexes ``'ij'``, ``a`` is the index that varies slowest along
    the patch sequence (the row, in timm's row-major patch order) and ``b`` the fastest (the
    column), though the code names them w and h.

    Raises:
        ValueError: ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    slow, fast = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32),
                                indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_a, out_b = slow.flatten()[:, None] * omega, fast.flatten()[:, None] * omega
    patches = torch.cat([out_a.sin(), out_a.cos(), out_b.sin(), out_b.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), patches])[None]


@torch.no_grad()
def moco_v3_vit(net: nn.Module) -> nn.Module:
    """A timm VisionTransformer (class token, one prefix token) made the MoCo v3 ViT, in place:
    the fixed sin-cos position embedding (``requires_grad=False``) and the official initialisation."""
    if getattr(net, "num_prefix_tokens", None) != 1 or getattr(net, "no_embed_class", False):
        raise ValueError("moco_v3_vit needs a timm ViT with a class token and position embeddings for it")
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            if "qkv" in name:  # three matrices side by side: the fan of one of them
                bound = math.sqrt(6.0 / (module.weight.shape[0] // 3 + module.weight.shape[1]))
                nn.init.uniform_(module.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.normal_(net.cls_token, std=1e-6)
    proj = net.patch_embed.proj
    bound = math.sqrt(6.0 / (proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] + proj.out_channels))
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)
    grid_h, grid_w = net.patch_embed.grid_size
    net.pos_embed = nn.Parameter(sincos_position_embedding(grid_h, grid_w, net.embed_dim), requires_grad=False)
    return net
