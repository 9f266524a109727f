"""Linear probe: multinomial logistic regression on frozen, cached features."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.evaluate._common import as_features, as_labels, stratified_sample

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
LINEAR_PROTOCOL = ("multinomial logistic regression (full-batch L-BFGS) on frozen, standardised encoder features of "
                   "every training image; L2 strength chosen among 1e-6 ... 1 on a stratified 10% of the training "
                   "images, refit on all of them; top-1 accuracy on the test split (Kornblith et al. 2019)")
"""How :func:`linear_probe` evaluates, in words, for reports."""


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """What :func:`linear_probe` found.

    Attributes:
        accuracy: top-1 accuracy on the test features.
        weight_decay: the L2 strength chosen on the validation split (see :func:`linear_probe`).
        train_accuracy: top-1 accuracy of the final classifier on the whole train set.
        val_accuracies: validation accuracy for each weight decay tried (empty when only one
            value was given, since nothing was chosen).
        weight: ``(C, D)`` classifier weights acting on standardised features.
        bias: ``(C,)`` classifier bias.
        mean, std: ``(D,)`` train-feature statistics used to standardise.
    """

    accuracy: float
    weight_decay: float
    train_accuracy: float
    val_accuracies: dict[float, float] = field(repr=False)
    weight: Tensor = field(repr=False)
    bias: Tensor = field(repr=False)
    mean: Tensor = field(repr=False)
    std: Tensor = field(repr=False)

    def predict(self, features) -> Tensor:
        """Predicted class indices ``(N,)`` for raw (unstandardised) ``features`` ``(N, D)``."""
        features = as_features(features, "features")
        if features.shape[1] != len(self.mean):
            raise ValueError(f"features have {features.shape[1]} dimensions but the probe was "
                             f"trained on {len(self.mean)}")
        standardised = (features.cpu().float() - self.mean) / self.std
        return _logits(standardised, self.weight, self.bias).argmax(dim=1)


def _logits(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return torch.addmm(bias, features, weight.T)


def _fit(features: Tensor, labels: Tensor, num_classes: int, weight_decay: float, max_iter: int,
         start: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """Minimise ``mean CE(x W^T + b, y) + weight_decay / 2 * ||W||^2`` with full-batch L-BFGS."""
    if start is None:
        weight = features.new_zeros(num_classes, features.shape[1])
        bias = features.new_zeros(num_classes)
    else:
        weight, bias = (tensor.clone() for tensor in start)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-5, tolerance_change=1e-9,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(_logits(features, weight, bias), labels)
        loss = loss + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return int((logits.argmax(dim=1) == labels).sum()) / len(labels)  # the exact fraction, not a float32 mean


def linear_probe(train_x, train_y, test_x, test_y, *,
                 weight_decays: Sequence[float] = WEIGHT_DECAYS, val_fraction: float = 0.1,
                 max_iter: int = 200, seed: int = 0,
                 device: torch.device | str | None = None) -> ProbeResult:
    """Linear evaluation of frozen features: multinomial logistic regression, test top-1.

    The frozen-feature protocol of Kornblith et al. (2019, "Do Better ImageNet Models Transfer
    Better?"), used for the transfer results of SimCLR and BYOL:

    1. standardise every feature dimension with the train mean and (population) std, as
       scikit-learn's ``StandardScaler`` does; constant dimensions are only centred;
    2. hold out a stratified ``val_fraction`` of the train rows, fit one classifier per weight
       decay ``lambda`` minimising ``mean_i CE(W x_i + b, y_i) + lambda / 2 * ||W||_F^2`` (the
       bias is not penalised), and keep the ``lambda`` with the best validation accuracy, ties
       going to the lower validation cross-entropy;
    3. refit on all train rows with that ``lambda`` and report the test accuracy.

    ``lambda`` relates to scikit-learn's ``LogisticRegression(C=...)`` by ``lambda = 1 / (C * N)``
    with ``N`` train rows. Fits are full-batch L-BFGS with a strong-Wolfe line search, each
    warm-started from the previous, stronger ``lambda``: the default grid on 60000 x 512 features
    takes about 120 loss evaluations in all, 10-20 s on two (shared) CPU cores.
    Every test label counts: a class absent from the train set is always a miss.

    Args:
        train_x, test_x: features ``(N, D)`` and ``(M, D)`` (tensors or arrays, any device).
        train_y, test_y: integer class indices ``(N,)`` and ``(M,)``.
        weight_decays: grid of ``lambda`` values; with a single value it is used directly and
            no validation split is made.
        val_fraction: share of train rows held out to choose ``lambda``, in (0, 1).
        max_iter: L-BFGS iterations per fit.
        seed: seeds the validation split.
        device: where to fit; defaults to the device of ``train_x``.

    Returns:
        A :class:`ProbeResult`.

    Examples:
        >>> train_x, test_x = torch.randn(200, 8), torch.randn(50, 8)
        >>> result = linear_probe(train_x, (train_x[:, 0] > 0).long(), test_x, (test_x[:, 0] > 0).long())
        >>> result.accuracy > 0.9
        True
    """
    train_x = as_features(train_x, "train_x")
    test_x = as_features(test_x, "test_x")
    train_y = as_labels(train_y, "train_y", len(train_x), "train_x")
    test_y = as_labels(test_y, "test_y", len(test_x), "test_x")
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test_x has {test_x.shape[1]} feature dimensions but train_x has "
                         f"{train_x.shape[1]}; extract both with the same encoder")
    if len(train_x) < 2 or len(test_x) == 0:
        raise ValueError(f"need at least 2 train rows and 1 test row, got train_x {len(train_x)}, "
                         f"test_x {len(test_x)}")
    grid = sorted({float(value) for value in weight_decays}, reverse=True)
    if not grid or not all(math.isfinite(value) and value >= 0 for value in grid):
        raise ValueError(f"weight_decays must be a non-empty sequence of finite values >= 0, "
                         f"got {list(weight_decays)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")

    device = torch.device(device) if device is not None else train_x.device
    train_x = train_x.to(device, torch.float32)
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, correction=0)
    # A constant column's float32 std is rounding noise of order 1e-7 * |mean|; leave it unscaled.
    std = torch.where(std > 1e-6 * mean.abs(), std, torch.ones_like(std))
    train_x = (train_x - mean) / std
    test_x = (test_x.to(device, torch.float32) - mean) / std
    train_y, test_y = train_y.to(device), test_y.to(device)
    num_classes = int(train_y.max()) + 1

    val_accuracies: dict[float, float] = {}
    start = None
    if len(grid) > 1:
        val_count = min(max(1, round(val_fraction * len(train_y))), len(train_y) - 1)
        val_rows = stratified_sample(train_y.cpu().numpy(), val_count, np.random.default_rng(seed))
        is_val = torch.zeros(len(train_y), dtype=torch.bool, device=device)
        is_val[torch.from_numpy(val_rows).to(device)] = True
        fit_x, fit_y = train_x[~is_val], train_y[~is_val]
        val_x, val_y = train_x[is_val], train_y[is_val]
        fits, val_losses = {}, {}
        for weight_decay in grid:
            start = fits[weight_decay] = _fit(fit_x, fit_y, num_classes, weight_decay, max_iter, start)
            logits = _logits(val_x, *start)
            val_accuracies[weight_decay] = _accuracy(logits, val_y)
            val_losses[weight_decay] = F.cross_entropy(logits, val_y).item()
        chosen = max(grid, key=lambda value: (val_accuracies[value], -val_losses[value]))
        start = fits[chosen]
    else:
        chosen = grid[0]
    weight, bias = _fit(train_x, train_y, num_classes, chosen, max_iter, start)
    return ProbeResult(accuracy=_accuracy(_logits(test_x, weight, bias), test_y),
                       weight_decay=chosen,
                       train_accuracy=_accuracy(_logits(train_x, weight, bias), train_y),
                       val_accuracies=val_accuracies,
                       weight=weight.cpu(), bias=bias.cpu(), mean=mean.cpu(), std=std.cpu())
