"""Few-shot evaluation of frozen features: N-way K-shot episodes scored with class prototypes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.evaluate._common import as_features, as_labels

# Episodes whose features are gathered at once; bounds memory at about
# _EPISODE_CHUNK * n_way * (k_shot + n_query) * D values.
_EPISODE_CHUNK = 64


class Episodes(NamedTuple):
    """Row indices and labels of ``E`` few-shot episodes (see :func:`sample_episodes`).

    Attributes:
        support: ``(E, n_way * k_shot)`` int64 rows of ``labels``, class by class
            (the ``k_shot`` rows of episode class 0, then those of class 1, ...).
        query: ``(E, n_way * n_query)`` int64 rows, laid out the same way.
        support_labels: ``(E, n_way * k_shot)`` int64 episode classes ``0..n_way-1``.
        query_labels: ``(E, n_way * n_query)`` int64 episode classes ``0..n_way-1``.
        classes: ``(E, n_way)`` int64 original label of each episode class.
    """

    support: Tensor
    query: Tensor
    support_labels: Tensor
    query_labels: Tensor
    classes: Tensor


def _positive_int(value, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool), else a ValueError naming ``name`` (retrieval and
    finetune use it too)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _distinct_offsets(counts: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """For each row ``b``, ``size`` distinct offsets in ``0..counts[b]-1`` in uniformly random order.

    Floyd's algorithm (Bentley & Floyd, 1987, "A sample of brilliance") draws a uniform random
    ``size``-subset with ``size`` random numbers per row, whatever the class size, so memory is
    ``(B, size)`` rather than ``(B, largest class)``. Floyd's order is not uniform, so the subset
    is shuffled afterwards: the first ``k_shot`` of a uniformly ordered subset are a uniform
    support set.
    """
    rows = len(counts)
    chosen = torch.empty(rows, size, dtype=torch.long)
    for step in range(size):
        top = counts - size + step  # draw from 0..top inclusive
        # float64 keeps floor(u * (top + 1)) unbiased for any class size a dataset can have.
        draw = (torch.rand(rows, dtype=torch.float64, generator=generator) * (top + 1)).long()
        draw = torch.minimum(draw, top)
        taken = (chosen[:, :step] == draw[:, None]).any(dim=1)
        chosen[:, step] = torch.where(taken, top, draw)
    order = torch.rand(rows, size, generator=generator).argsort(dim=1)
    return chosen.gather(1, order)


def sample_episodes(labels, n_way: int, k_shot: int, n_query: int, episodes: int, *, seed: int = 0,
                    classes=None) -> Episodes:
    """Draw ``episodes`` N-way K-shot episodes with disjoint support and query rows.

    The episode protocol of Vinyals et al. (2016, "Matching Networks for One Shot Learning") and
    Snell et al. (2017, "Prototypical Networks for Few-shot Learning"). Per episode:

    1. ``n_way`` distinct classes are drawn uniformly from ``classes``;
    2. for each, ``k_shot + n_query`` distinct rows of that class are drawn uniformly without
       replacement; the first ``k_shot`` are the support set, the rest the queries, so support
       and query never share a row;
    3. the episode's classes are relabelled ``0..n_way-1`` in the order they were drawn.

    Episodes are independent of each other (a row can appear in several). Everything is drawn
    with one ``torch.Generator`` seeded by ``seed``, batched over episodes.

    Args:
        labels: ``(N,)`` integer class of each row.
        n_way: classes per episode.
        k_shot: support rows per class.
        n_query: query rows per class.
        episodes: number of episodes ``E``.
        seed: seeds the draw.
        classes: the class labels episodes may use (e.g. classes held out of pretraining);
            default every class with at least ``k_shot + n_query`` rows.

    Returns:
        :class:`Episodes` of int64 CPU tensors.

    Raises:
        ValueError: for sizes below 1, a class in ``classes`` that is absent or has fewer than
            ``k_shot + n_query`` rows, or fewer usable classes than ``n_way``.

    Examples:
        >>> episodes = sample_episodes(torch.arange(40) % 4, n_way=3, k_shot=2, n_query=3, episodes=5)
        >>> episodes.support.shape, episodes.query.shape, episodes.classes.shape
        (torch.Size([5, 6]), torch.Size([5, 9]), torch.Size([5, 3]))
    """
    labels = torch.as_tensor(labels)
    labels = as_labels(labels, "labels", len(labels) if labels.ndim else 0, "labels").cpu()
    for name, value in (("n_way", n_way), ("k_shot", k_shot), ("n_query", n_query), ("episodes", episodes)):
        _positive_int(value, name)
    per_class = k_shot + n_query
    counts = torch.bincount(labels)  # (C,) rows per class label
    if classes is None:
        pool = (counts >= per_class).nonzero().squeeze(1)
        if len(pool) < n_way:
            raise ValueError(f"only {len(pool)} classes have the k_shot + n_query = {per_class} rows an "
                             f"episode needs, fewer than n_way={n_way}; lower n_way, k_shot or n_query")
    else:
        pool = torch.as_tensor(classes)
        if pool.ndim != 1 or pool.is_floating_point() or pool.dtype == torch.bool or pool.is_complex():
            raise ValueError(f"classes must be a 1-D sequence of integer class labels, got {classes!r}")
        pool = pool.long().cpu()
        if len(pool.unique()) != len(pool):
            raise ValueError(f"classes lists a class more than once: {pool.tolist()}; list each once")
        known = (pool >= 0) & (pool < len(counts))
        present = torch.zeros_like(pool)
        present[known] = counts[pool[known]]
        if (present == 0).any():
            raise ValueError(f"classes {pool[present == 0].tolist()} do not occur in labels; "
                             f"pass labels that are present")
        if (present < per_class).any():
            short = {int(c): int(n) for c, n in zip(pool[present < per_class], present[present < per_class])}
            raise ValueError(f"classes {short} (class: rows) have fewer than the k_shot + n_query = "
                             f"{per_class} rows an episode needs; lower k_shot or n_query, or leave "
                             f"those classes out")
        if len(pool) < n_way:
            raise ValueError(f"classes holds {len(pool)} classes, fewer than n_way={n_way}; "
                             f"lower n_way or pass more classes")

    generator = torch.Generator().manual_seed(seed)
    # A random permutation of the pool per episode; its first n_way entries are a uniform draw.
    picked = pool[torch.rand(episodes, len(pool), generator=generator).argsort(dim=1)[:, :n_way]]
    # Rows sorted by class: class c occupies by_class[starts[c] : starts[c] + counts[c]].
    by_class = labels.argsort(stable=True)
    starts = counts.cumsum(0) - counts
    offsets = _distinct_offsets(counts[picked].reshape(-1), per_class, generator)
    rows = by_class[starts[picked].reshape(-1, 1) + offsets].view(episodes, n_way, per_class)
    way = torch.arange(n_way)
    return Episodes(support=rows[:, :, :k_shot].reshape(episodes, -1),
                    query=rows[:, :, k_shot:].reshape(episodes, -1),
                    support_labels=way.repeat_interleave(k_shot).expand(episodes, -1).contiguous(),
                    query_labels=way.repeat_interleave(n_query).expand(episodes, -1).contiguous(),
                    classes=picked)


@dataclass(frozen=True, eq=False)
class FewShotResult:
    """What :func:`fewshot_accuracy` measured.

    Attributes:
        accuracy: mean query accuracy over the episodes.
        ci95: half-width of the 95% confidence interval of ``accuracy``,
            ``1.96 * std(accuracies, ddof=1) / sqrt(episodes)`` (NaN for a single episode).
        accuracies: ``(E,)`` float64 query accuracy of each episode.
        n_way, k_shot, n_query, episodes: the episode settings.
    """

    accuracy: float
    ci95: float
    accuracies: Tensor = field(repr=False)
    n_way: int
    k_shot: int
    n_query: int
    episodes: int


@torch.no_grad()
def fewshot_accuracy(features, labels, *, n_way: int = 5, k_shot: int = 1, n_query: int = 15,
                     episodes: int = 600, seed: int = 0, classes=None) -> FewShotResult:
    """N-way K-shot accuracy of frozen features with nearest-prototype classification.

    The Prototypical Networks classifier (Snell et al., 2017, "Prototypical Networks for
    Few-shot Learning"), applied to frozen features without training:

    1. every feature row is L2-normalised;
    2. episodes are drawn by :func:`sample_episodes` (``n_way`` classes, ``k_shot`` support and
       ``n_query`` query rows per class, never sharing a row);
    3. each class prototype is the mean of its normalised support features (not re-normalised);
    4. each query goes to the prototype at the smallest squared Euclidean distance, ties to the
       lower episode class;
    5. an episode's accuracy is the share of its queries classified correctly.

    ``accuracy`` is the mean over episodes and ``ci95`` the half-width of the 95% interval the
    few-shot literature reports, ``1.96 * std(accuracies, ddof=1) / sqrt(episodes)`` (NaN for a
    single episode). The defaults (5-way 1-shot, 15 queries per class, 600 episodes) are the
    usual miniImageNet setting; pass ``k_shot=5`` for 5-shot.

    Args:
        features: ``(N, D)`` frozen features (tensor or array).
        labels: ``(N,)`` integer class of each row.
        n_way, k_shot, n_query, episodes, seed, classes: as in :func:`sample_episodes`; pass
            ``classes`` to evaluate only on classes held out of pretraining.

    Returns:
        A :class:`FewShotResult`.

    Examples:
        >>> features = torch.eye(4)[torch.arange(40) % 4]  # one-hot of the class: separable
        >>> fewshot_accuracy(features, torch.arange(40) % 4, n_way=3, n_query=5, episodes=10).accuracy
        1.0
    """
    features = as_features(features, "features")
    labels = as_labels(labels, "labels", len(features), "features")
    drawn = sample_episodes(labels, n_way, k_shot, n_query, episodes, seed=seed, classes=classes)
    normalised = F.normalize(features, dim=1)
    device = normalised.device
    accuracies = []
    for start in range(0, episodes, _EPISODE_CHUNK):
        chunk = slice(start, start + _EPISODE_CHUNK)
        support = normalised[drawn.support[chunk].to(device)]  # (e, n_way * k_shot, D)
        query = normalised[drawn.query[chunk].to(device)]  # (e, n_way * n_query, D)
        prototypes = support.view(len(support), n_way, k_shot, -1).mean(dim=2)  # (e, n_way, D)
        distances = (query.square().sum(dim=2, keepdim=True) - 2 * query @ prototypes.transpose(1, 2)
                     + prototypes.square().sum(dim=2).unsqueeze(1))  # (e, n_way * n_query, n_way)
        predicted = distances.argmin(dim=2).cpu()  # argmin keeps the first of equal minima
        accuracies.append((predicted == drawn.query_labels[chunk]).double().mean(dim=1))
    accuracies = torch.cat(accuracies)
    spread = accuracies.std(correction=1).item() if episodes > 1 else math.nan
    return FewShotResult(accuracy=accuracies.mean().item(), ci95=1.96 * spread / math.sqrt(episodes),
                         accuracies=accuracies, n_way=n_way, k_shot=k_shot, n_query=n_query,
                         episodes=episodes)
