"""Floating-point types that keep float64 where a caller chose it."""

from __future__ import annotations

import torch
from torch import Tensor


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` as float32 when it is half precision (or an integer type), unchanged when it is float32 or
    float64: arithmetic that needs float32's range or precision under autocast (scores divided by a small
    temperature, statistics, a softmax's logits) without rounding float64 work down to float32, so a
    float64 run (the distributed equality tests) stays float64 throughout.

    Examples:
        >>> at_least_float32(torch.ones(2, dtype=torch.bfloat16)).dtype
        torch.float32
        >>> at_least_float32(torch.ones(2, dtype=torch.float64)).dtype
        torch.float64
    """
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
