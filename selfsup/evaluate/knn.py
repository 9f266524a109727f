"""Weighted k-nearest-neighbour classification of frozen features (InstDisc's kNN monitor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.evaluate._common import as_features, as_labels

KNN_PROTOCOL = ("weighted k-nearest neighbours on L2-normalised frozen features: the k={k} training images of "
                "highest cosine similarity s vote for their class with weight exp(s / {temperature}); top-1 accuracy "
                "on the test split (Wu et al. 2018)")
"""How :func:`knn_predict` evaluates, in words (format with ``k`` and ``temperature``), for reports."""


def _top_k(similarity: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``similarity.topk(k)``, except that neighbours tied with the k-th go by lower train index.

    ``topk`` promises nothing about which of several equal values it keeps, so duplicated train
    rows could change a prediction between devices. Rows where a tied value was left out are
    redone with a stable sort; with real-valued features they are rare.
    """
    values, indices = similarity.topk(k, dim=1)
    kth = values[:, -1:]
    ambiguous = (similarity == kth).sum(dim=1) > (values == kth).sum(dim=1)
    if ambiguous.any():
        rows = ambiguous.nonzero().squeeze(1)
        redone, order = similarity[rows].sort(dim=1, descending=True, stable=True)
        values[rows], indices[rows] = redone[:, :k], order[:, :k]
    return values, indices


@torch.no_grad()
def knn_predict(train_x, train_y, test_x, *, k: int = 200, temperature: float = 0.1,
                num_classes: int | None = None, batch_size: int = 512,
                device: torch.device | str | None = None) -> Tensor:
    """Predict labels by a similarity-weighted vote of the ``k`` nearest train features.

    As in InstDisc (Wu et al., 2018, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination"): features are L2-normalised, the neighbours of a test row ``q`` are the
    ``k`` train rows ``x_j`` of highest cosine similarity ``s_j = q . x_j``, and class ``c`` scores

        score_c = sum over neighbours j with y_j = c of exp(s_j / temperature).

    The prediction is the class of highest score; equal scores go to the lower class index, and
    neighbours tied with the k-th similarity are taken in train order. A small ``temperature``
    lets the closest neighbours dominate; a large one tends to a plain majority vote. The default
    ``k=200, temperature=0.1`` is the kNN monitor of MoCo's CIFAR-10 demo (``knn_k``, ``knn_t``), which
    lightly's benchmarks keep; InstDisc's own code and DINO's ``eval_knn`` use ``temperature=0.07``
    (``eval.knn_temperature=0.07``), which can read differently (88.11% against 85.93% at 0.1 on a random
    projection of scikit-learn's digits): quote the temperature with the number (results.json records it).
    ``k`` larger than the train set is clamped to it (every train row votes). Test rows are
    processed ``batch_size`` at a time, so memory is ``batch_size * N`` similarities.

    Args:
        train_x: ``(N, D)`` train features (tensor or array).
        train_y: ``(N,)`` integer train labels.
        test_x: ``(M, D)`` test features.
        k: number of neighbours, at least 1.
        temperature: softness of the vote, > 0.
        num_classes: number of classes; defaults to ``max(train_y) + 1``.
        batch_size: test rows per similarity block.
        device: where to compute; defaults to the device of ``train_x``.

    Returns:
        ``(M,)`` int64 predicted labels on the device of ``test_x``.

    Examples:
        >>> train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> knn_predict(train_x, torch.tensor([0, 1]), torch.tensor([[0.9, 0.1]]), k=2)
        tensor([0])
    """
    train_x = as_features(train_x, "train_x")
    test_x = as_features(test_x, "test_x")
    train_y = as_labels(train_y, "train_y", len(train_x), "train_x")
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test_x has {test_x.shape[1]} feature dimensions but train_x has "
                         f"{train_x.shape[1]}; extract both with the same encoder")
    if len(train_x) == 0:
        raise ValueError("train_x is empty; kNN needs at least one train row")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    largest = int(train_y.max())
    if num_classes is None:
        num_classes = largest + 1
    elif num_classes <= largest:
        raise ValueError(f"num_classes={num_classes} but train_y holds label {largest}; "
                         f"pass num_classes > {largest} or leave it None")

    device = torch.device(device) if device is not None else train_x.device
    train = F.normalize(train_x.to(device), dim=1)
    train_y = train_y.to(device)
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(test_x), batch_size):
        query = F.normalize(test_x[start:start + batch_size].to(device, train.dtype), dim=1)
        similarity, neighbours = _top_k(query @ train.T, k)
        # Shifting by the row maximum keeps exp() finite for small temperatures; argmax is unchanged.
        weights = torch.exp((similarity - similarity[:, :1]) / temperature)
        scores = weights.new_zeros(len(query), num_classes).scatter_add_(1, train_y[neighbours], weights)
        predictions.append(scores.argmax(dim=1))
    if not predictions:
        return torch.empty(0, dtype=torch.long, device=test_x.device)
    return torch.cat(predictions).to(test_x.device)


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = 200, temperature: float = 0.1,
                 num_classes: int | None = None, batch_size: int = 512,
                 device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``(test_x, test_y)``; arguments as there.

    Examples:
        >>> train_x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> knn_accuracy(train_x, torch.tensor([0, 1]), train_x, torch.tensor([0, 1]), k=1)
        1.0
    """
    test_x = as_features(test_x, "test_x")
    test_y = as_labels(test_y, "test_y", len(test_x), "test_x")
    if len(test_x) == 0:
        raise ValueError("test_x is empty; accuracy needs at least one test row")
    predicted = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature,
                            num_classes=num_classes, batch_size=batch_size, device=device)
    return int((predicted.cpu() == test_y.cpu()).sum()) / len(test_y)  # the exact fraction, not a float32 mean
