"""Checks and helpers shared by the evaluation modules: features, labels, sampling, atomic files."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from selfsup._io import atomic_write as atomic_write  # the evaluation modules' atomic files, shared with checkpoints


def as_features(values, name: str) -> Tensor:
    """``values`` as a finite floating ``(N, D)`` tensor; integer input becomes float32."""
    tensor = torch.as_tensor(values)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) feature matrix, got shape {tuple(tensor.shape)}; "
                         f"flatten or pool the encoder output first")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.float()
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} NaN/Inf values; check the encoder output "
                         f"(e.g. a diverged run) before evaluating")
    return tensor


def as_labels(values, name: str, length: int, length_of: str) -> Tensor:
    """``values`` as a non-negative int64 ``(N,)`` tensor with ``length`` entries like ``length_of``."""
    tensor = torch.as_tensor(values)
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor of class indices, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {tensor.dtype}; "
                         f"convert with .long() if the values are whole numbers")
    if len(tensor) != length:
        raise ValueError(f"{name} has {len(tensor)} labels but {length_of} has {length} rows; "
                         f"pass one label per feature row")
    if length and int(tensor.min()) < 0:
        raise ValueError(f"{name} holds negative labels (min {int(tensor.min())}); "
                         f"labels must be class indices 0..C-1")
    return tensor.long()


def stratified_sample(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``count`` rows drawn without replacement, each class in proportion to its size.

    Per-class quotas are ``count * n_c / N`` rounded down, and the rows left over go to the classes
    with the largest remainders, so the total is exactly ``count``.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * count / len(labels)
    quotas = np.floor(exact).astype(np.int64)
    leftover = count - int(quotas.sum())
    quotas[np.argsort(-(exact - quotas), kind="stable")[:leftover]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == cls), quota, replace=False)
              for cls, quota in zip(classes, quotas)]
    return np.sort(np.concatenate(chosen))
