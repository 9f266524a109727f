"""Per-step schedules as plain functions of the step: LR, weight decay, EMA momentum, temperature.

Each is a pure function of ``(step, total, ...)``, so a schedule is the same whether it is read
from an array precomputed at the start (as the DINO code does) or computed when needed, and a
resumed run sees exactly the values it would have seen.
"""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half a cosine from ``start`` at step 0 to ``end`` at step ``total`` (held after it).

    ``end + (start - end) * (1 + cos(pi * step / total)) / 2``: BYOL's target momentum
    (0.996 -> 1), DINO's teacher momentum and weight decay (0.04 -> 0.4), SGDR's LR.

    Examples:
        >>> cosine(0, 100, 0.996, 1.0), cosine(50, 100, 0.996, 1.0), cosine(100, 100, 0.996, 1.0)
        (0.996, 0.998, 1.0)
    """
    if total <= 0:
        return end
    progress = min(max(step, 0), total) / total
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


def warmup_cosine(step: int, total: int, warmup: int, peak: float, end: float = 0.0) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then :func:`cosine` down to ``end``.

    Warmup step ``s`` (0-based) has ``peak * (s + 1) / warmup``, so the last warmup step reaches
    the peak; the cosine then runs over the remaining ``total - warmup`` steps.

    Examples:
        >>> [round(warmup_cosine(s, 10, 2, 1.0), 3) for s in range(0, 10, 3)]
        [0.5, 0.962, 0.5, 0.038]
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine(step - warmup, max(1, total - warmup), peak, end)
