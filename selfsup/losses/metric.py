"""Metric-learning losses on unnormalised embeddings: triplet family and prototypical networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses._common import _embeddings, _labels, _same_shape, float32_loss


@float32_loss
def triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0, squared: bool = False) -> Tensor:
    """FaceNet's triplet hinge on given triplets, equal to `torch.nn.functional.triplet_margin_loss`.

    Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
    Clustering", CVPR 2015. On unnormalised embeddings:

        l_i = max(0, d(a_i, p_i) - d(a_i, n_i) + margin)

    with d the Euclidean distance computed as torch does (`pairwise_distance`,
    eps 1e-6 added to the difference), or its square with `squared=True`
    (FaceNet's eq. 1: the official davidsandberg/facenet `triplet_loss` takes
    the margin 0.2 on squared distances), mean over the N triplets.

    Args:
        anchor, positive, negative: `(N, D)` embeddings.
        margin: hinge margin >= 0 (torch default 1.0; FaceNet used 0.2 on the unit sphere).
        squared: compare squared distances (FaceNet) rather than distances.

    Returns:
        0-d tensor.

    Examples:
        >>> a, p, n = torch.randn(8, 16), torch.randn(8, 16), torch.randn(8, 16)
        >>> triplet(a, p, n, margin=1.0).shape
        torch.Size([])
    """
    anchor, positive = _embeddings("anchor", anchor), _embeddings("positive", positive)
    negative = _embeddings("negative", negative)
    _same_shape("anchor", anchor, "positive", positive)
    _same_shape("anchor", anchor, "negative", negative)
    _margin(margin)
    power = 2 if squared else 1
    gap = F.pairwise_distance(anchor, positive) ** power - F.pairwise_distance(anchor, negative) ** power
    return F.relu(gap + margin).mean()


@float32_loss
def batch_hard_triplet(embeddings: Tensor, labels: Tensor, margin: float = 0.2, squared: bool = False) -> Tensor:
    """Batch-hard triplet loss: each anchor with its farthest positive and closest negative.

    Hermans et al., "In Defense of the Triplet Loss for Person
    Re-Identification", 2017. With Euclidean distances d on unnormalised embeddings:

        l_i = max(0, max_{p: y_p = y_i, p ≠ i} d_ip - min_{n: y_n ≠ y_i} d_in + margin)

    averaged over the anchors that have at least one positive and one negative
    (0 if none has). With `squared=True` d is the squared distance.

    Args:
        embeddings: `(N, D)` embeddings.
        labels: `(N,)` integer labels.
        margin: hinge margin >= 0.
        squared: squared Euclidean distances (FaceNet's) instead of distances (Hermans et al.'s).

    Returns:
        0-d tensor.

    Examples:
        >>> x, y = torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> batch_hard_triplet(x, y, margin=0.2).shape
        torch.Size([])
    """
    distances, positive_mask, negative_mask = _pair_masks(embeddings, labels, margin, squared)
    hardest_positive = distances.masked_fill(~positive_mask, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(~negative_mask, float("inf")).amin(dim=1)
    valid = positive_mask.any(dim=1) & negative_mask.any(dim=1)
    hinge = F.relu(hardest_positive - hardest_negative + margin)
    return torch.where(valid, hinge, 0.0).sum() / valid.sum().clamp(min=1)


@float32_loss
def semi_hard_triplet(embeddings: Tensor, labels: Tensor, margin: float = 0.2, squared: bool = False) -> Tensor:
    """Triplet loss over all positive pairs, each with a semi-hard negative.

    Schroff et al., FaceNet, CVPR 2015, sec. 3.2: for each anchor-positive
    pair (a, p), the negative is the closest one that is still farther than
    the positive, `argmin_{n: d_an > d_ap} d_an` (semi-hard: it violates the
    margin without being harder than the positive); when no negative is
    farther than the positive, the farthest negative is used (the choice of
    TensorFlow Addons' `triplet_semihard_loss`). Euclidean distances on
    unnormalised embeddings:

        l_ap = max(0, d_ap - d_an + margin),  mean over pairs a ≠ p, y_a = y_p

    An anchor with no negative at all takes the smallest distance of its row (its own, 0) as
    the negative, so its pairs cost `d_ap + margin`, and every positive pair counts in the
    mean: TensorFlow's `masked_maximum` over an empty mask, as `triplet_semihard_loss` and
    TCN's `singleview_tcn_loss` compute it (0 when the batch has no positive pair).
    With `squared=True` distances are squared (FaceNet's eq. 1, and
    `tf.contrib`'s `triplet_semihard_loss`).

    Args:
        embeddings: `(N, D)` embeddings.
        labels: `(N,)` integer labels.
        margin: hinge margin >= 0.
        squared: squared Euclidean distances instead of distances.

    Returns:
        0-d tensor.

    Examples:
        >>> x, y = torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> semi_hard_triplet(x, y, margin=0.2).shape
        torch.Size([])
    """
    distances, positive_mask, negative_mask = _pair_masks(embeddings, labels, margin, squared)
    return semi_hard_from_masks(distances, positive_mask, negative_mask, margin)


def semi_hard_from_masks(distances: Tensor, positive_mask: Tensor, negative_mask: Tensor, margin: float) -> Tensor:
    """:func:`semi_hard_triplet` on given ``(N, N)`` distances and positive / negative pair masks
    (pairs in neither mask are ignored: TCN's frames between its two radii)."""
    # Sorting each anchor's negative distances turns "closest negative farther
    # than d_ap" into a binary search: O(N^2 log N) instead of an N^3 mask.
    negative_sorted, _ = distances.masked_fill(~negative_mask, float("inf")).sort(dim=1)
    negative_count = negative_mask.sum(dim=1, keepdim=True)
    first_farther = torch.searchsorted(negative_sorted.detach(), distances.detach(), right=True)
    chosen = torch.where(first_farther < negative_count, first_farther, negative_count - 1).clamp(min=0)
    # An anchor without any negative: its row's smallest distance (TF's masked_maximum of an empty mask).
    negative_distance = torch.where(negative_count > 0, negative_sorted.gather(1, chosen),
                                    distances.min(dim=1, keepdim=True).values)
    hinge = F.relu(distances - negative_distance + margin)
    return torch.where(positive_mask, hinge, 0.0).sum() / positive_mask.sum().clamp(min=1)


def _margin(margin: float) -> None:
    if not float(margin) >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")


def _pair_masks(embeddings: Tensor, labels: Tensor, margin: float,
                squared: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Pairwise Euclidean distances `(N, N)` (or their squares) and the positive (same label, not self)
    and negative masks."""
    embeddings = _embeddings("embeddings", embeddings)
    labels = _labels("labels", labels, embeddings.shape[0], "embeddings")
    _margin(margin)
    same = labels[:, None] == labels[None, :]
    positive_mask = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    distances = torch.cdist(embeddings, embeddings)
    return distances.square() if squared else distances, positive_mask, ~same


@float32_loss
def prototypical(support: Tensor, support_labels: Tensor, query: Tensor, query_labels: Tensor) -> Tensor:
    """Prototypical-network episode loss: classify queries by distance to class-mean prototypes.

    Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
    With prototypes `c_k = mean{ s_j : y_j = k }` of the support set and
    squared Euclidean distance on unnormalised embeddings:

        l_q = -log exp(-‖q - c_{y_q}‖²) / Σ_k exp(-‖q - c_k‖²)

    mean over the queries. Labels may be any integers; every query label must
    occur in the support set.

    Args:
        support: `(S, D)` support embeddings.
        support_labels: `(S,)` integer labels.
        query: `(Q, D)` query embeddings.
        query_labels: `(Q,)` integer labels, each present in `support_labels`.

    Returns:
        0-d tensor.

    Examples:
        >>> support, query = torch.randn(10, 16), torch.randn(5, 16)
        >>> labels = torch.arange(5)
        >>> prototypical(support, labels.repeat(2), query, labels).shape
        torch.Size([])
    """
    support, query = _embeddings("support", support), _embeddings("query", query)
    support_labels = _labels("support_labels", support_labels, support.shape[0], "support")
    query_labels = _labels("query_labels", query_labels, query.shape[0], "query")
    if support.shape[1] != query.shape[1]:
        raise ValueError(
            f"support and query must have the same dimension D, got {tuple(support.shape)} and {tuple(query.shape)}"
        )
    classes, class_of = torch.unique(support_labels, return_inverse=True)
    target = torch.searchsorted(classes, query_labels).clamp(max=len(classes) - 1)
    missing = classes[target] != query_labels
    if missing.any():
        raise ValueError(
            f"query_labels {sorted(set(query_labels[missing].tolist()))} do not occur in support_labels "
            f"{classes.tolist()}; every query class needs support samples"
        )
    prototypes = support.new_zeros(len(classes), support.shape[1]).index_add(0, class_of, support)
    prototypes = prototypes / torch.bincount(class_of, minlength=len(classes))[:, None]
    squared_distance = (query[:, None, :] - prototypes[None, :, :]).pow(2).sum(dim=-1)
    return F.cross_entropy(-squared_distance, target)


@float32_loss
def pixelwise_contrastive(match_a: Tensor, match_b: Tensor, non_match_a: Tensor, non_match_b: Tensor,
                          margin: float = 0.5, *, match_pair: Tensor | None = None,
                          non_match_pair: Tensor | None = None) -> Tensor:
    """Dense Object Nets' pixelwise contrastive loss on descriptor pairs (Florence et al. 2018; the
    official ``PixelwiseContrastiveLoss`` with ``scale_by_hard_negatives``):

        match     = 1 / M  * sum_matches ||d_a - d_b||^2
        non-match = 1 / H  * sum_non-matches max(0, margin - ||d_a - d_b||)^2

    the sum of the two, where H is the number of hard negatives (non-matches still inside the margin,
    at least 1): the non-match term does not fade as most pairs clear the margin. The official code
    trains on one image pair at a time; given the image pair each row comes from (``match_pair``,
    ``non_match_pair``), the loss is that of each pair on its own (its own M and H), averaged over the
    pairs that have matches. Without them every row is pooled into one M and one H.

    Args:
        match_a, match_b: ``(M, D)`` descriptors of corresponding points of the two images.
        non_match_a, non_match_b: ``(K, D)`` descriptors of points that do not correspond.
        margin: the non-match margin M (official: 0.5).
        match_pair, non_match_pair: ``(M,)`` and ``(K,)`` integer indices of each row's image pair (both
            or neither).

    Examples:
        >>> a = torch.tensor([[0.0, 0.0]])
        >>> pixelwise_contrastive(a, a + 0.1, a, torch.tensor([[0.3, 0.4]]), margin=1.0)   # 0.02 + 0.5^2
        tensor(0.2700)
    """
    match_a, match_b = _embeddings("match_a", match_a), _embeddings("match_b", match_b)
    non_match_a, non_match_b = _embeddings("non_match_a", non_match_a), _embeddings("non_match_b", non_match_b)
    _same_shape("match_a", match_a, "match_b", match_b)
    _same_shape("non_match_a", non_match_a, "non_match_b", non_match_b)
    _margin(margin)
    squared = (match_a - match_b).pow(2).sum(dim=1)
    hinge = (margin - (non_match_a - non_match_b).norm(dim=1)).clamp_min(0).pow(2)
    if (match_pair is None) != (non_match_pair is None):
        raise ValueError("give match_pair and non_match_pair together, or neither")
    if match_pair is None:
        return squared.mean() + hinge.sum() / (hinge > 0).sum().clamp_min(1)
    if match_pair.shape != squared.shape or non_match_pair.shape != hinge.shape:
        raise ValueError(f"match_pair must be ({len(squared)},) and non_match_pair ({len(hinge)},), got "
                         f"{tuple(match_pair.shape)} and {tuple(non_match_pair.shape)}")
    pairs = 1 + max((int(index.max()) for index in (match_pair, non_match_pair) if len(index)), default=-1)

    def per_pair(index: Tensor, values: Tensor) -> Tensor:
        return values.new_zeros(pairs).index_add(0, index, values)

    matches = per_pair(match_pair, torch.ones_like(squared))
    present = matches > 0
    match = per_pair(match_pair, squared)[present] / matches[present]
    hard = per_pair(non_match_pair, (hinge > 0).to(hinge.dtype)).clamp_min(1)
    return (match + (per_pair(non_match_pair, hinge) / hard)[present]).mean()
