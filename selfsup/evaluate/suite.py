"""The evaluations a run reports, as the JSON entries of ``results.json`` (schema in
:mod:`selfsup.evaluate.report`), each with its protocol written out in words.

One place makes every entry, so the engine's end-of-run evaluation and ``selfsup evaluate``
write the same keys and texts. Like the rest of :mod:`selfsup.evaluate`, these take features,
images and labels, never a checkpoint or a configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.evaluate.fewshot import fewshot_accuracy
from selfsup.evaluate.finetune import BASE_LR, DEFAULT_STEPS, few_label_finetune
from selfsup.evaluate.knn import KNN_PROTOCOL, knn_accuracy
from selfsup.evaluate.probe import LINEAR_PROTOCOL, linear_probe
from selfsup.evaluate.retrieval import nearest_neighbours, plot_retrieval, recall_at_k

FEWSHOT_PROTOCOL = ("{n_way}-way {k_shot}-shot episodes of the test split ({n_query} queries per class, {episodes} "
                    "episodes, support and query disjoint): each class prototype is the mean L2-normalised frozen "
                    "feature of its support images, each query goes to the nearest prototype (squared Euclidean); "
                    "mean accuracy with a 95% interval 1.96 * std / sqrt(episodes) (Snell et al. 2017)")
RETRIEVAL_PROTOCOL = ("every test image queries the training images by cosine similarity of frozen features; "
                      "recall@k is the share of queries with an image of their class among the k nearest "
                      "(Oh Song et al. 2016)")
COLLAPSE_PROTOCOL = ("frozen features of the test split: feature_std is the standard deviation over images of the "
                     "L2-normalised features, averaged over dimensions (SimSiam section 4.1: about 1/sqrt(d) for "
                     "features spread over the sphere, 0 for a collapsed encoder); effective_rank is exp of the "
                     "entropy of the normalised singular values of the centred features (Roy and Vetterli 2007): "
                     "between 1 and d, 0 when every image has the same features")
FINETUNE_PROTOCOL = ("the whole encoder and a linear head trained end to end on a class-stratified {percent} of the "
                     "training labels (seeded subsets), crop + flip augmentation, Nesterov SGD, lr {lr} per 256 "
                     "images with a cosine schedule, {steps} steps of batch {batch} (a subset smaller than {batch_size} "
                     "labels is one whole batch, its lr scaled to its size); test top-1, mean ± std over "
                     "subset seeds {seeds}, beside the same network trained from random initialisation on the "
                     "same labels (SimCLR section 7.2)")


def frozen_evaluations(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, data: str,
                       linear: bool = True, knn: bool = True, knn_k: int = 200, knn_temperature: float = 0.1,
                       shots: Sequence[int] = (1, 5), n_way: int = 5, episodes: int = 600,
                       recall_ks: Sequence[int] = (1, 5, 10), collapse: bool = True,
                       device: torch.device | str | None = None) -> dict[str, dict[str, Any]]:
    """Linear probe, kNN, few-shot episodes and retrieval of frozen features, as results.json entries.

    Keys: ``linear``, ``knn``, ``fewshot_<n_way>way_<k>shot`` for each ``k`` in ``shots`` (left
    out when the test split has fewer than ``n_way`` classes with ``k + 15`` images), and
    ``retrieval``, and ``collapse`` (:func:`collapse_entry` of the test features). ``data`` names the
    dataset in every entry. The probe's L-BFGS and the kNN
    search run on ``device`` (the GPU of a run that has one; default: where the features are).
    """
    entries: dict[str, dict[str, Any]] = {}
    if linear:
        entries["linear"] = {"accuracy": linear_probe(train_x, train_y, test_x, test_y, device=device).accuracy,
                             "data": data, "protocol": LINEAR_PROTOCOL}
    if knn:
        entries["knn"] = {"accuracy": knn_accuracy(train_x, train_y, test_x, test_y, k=knn_k,
                                                   temperature=knn_temperature, device=device),
                          "k": knn_k, "temperature": knn_temperature, "data": data,
                          "protocol": KNN_PROTOCOL.format(k=knn_k, temperature=knn_temperature)}
    for k_shot in shots:
        entry = fewshot_entry(test_x, test_y, data=data, n_way=n_way, k_shot=k_shot, episodes=episodes)
        if entry is not None:
            entries[f"fewshot_{n_way}way_{k_shot}shot"] = entry
    ks = [k for k in recall_ks if k <= len(train_x)]
    if ks:
        recalls = recall_at_k(test_x, test_y, train_x, train_y, ks)
        entries["retrieval"] = {**{f"recall@{k}": value for k, value in recalls.items()}, "data": data,
                                "protocol": RETRIEVAL_PROTOCOL}
    if collapse:
        entries["collapse"] = collapse_entry(test_x, data=data)
    return entries


def collapse_entry(features: Tensor, *, data: str) -> dict[str, Any]:
    """How far an encoder is from collapse, as a results.json entry: ``feature_std`` (SimSiam's measure),
    ``effective_rank`` and ``dimension`` (see :data:`COLLAPSE_PROTOCOL`).

    Examples:
        >>> import torch
        >>> entry = collapse_entry(torch.eye(4).repeat(25, 1), data="toy")  # 4 equal, orthogonal directions
        >>> round(entry["effective_rank"], 6)
        3.0
        >>> collapse_entry(torch.ones(10, 3), data="toy")["effective_rank"]
        0.0
    """
    x = features.detach().double()
    std = float(torch.nn.functional.normalize(x, dim=1).std(dim=0).mean())
    singular = torch.linalg.svdvals(x - x.mean(dim=0))
    total = singular.sum()
    if total <= 1e-12 * max(1.0, float(x.abs().max())):
        rank = 0.0
    else:
        p = singular[singular > 0] / total
        rank = float(torch.exp(-(p * p.log()).sum()))
    return {"feature_std": std, "effective_rank": rank, "dimension": int(x.shape[1]), "data": data,
            "protocol": COLLAPSE_PROTOCOL}


def fewshot_entry(features: Tensor, labels: Tensor, *, data: str, n_way: int = 5, k_shot: int = 1,
                  n_query: int = 15, episodes: int = 600, seed: int = 0,
                  classes: Sequence[int] | None = None) -> dict[str, Any] | None:
    """:func:`~selfsup.evaluate.fewshot_accuracy` as a results.json entry; None when the data has
    fewer than ``n_way`` classes with ``k_shot + n_query`` images."""
    try:
        result = fewshot_accuracy(features, labels, n_way=n_way, k_shot=k_shot, n_query=n_query,
                                  episodes=episodes, seed=seed, classes=classes)
    except ValueError:
        if classes is not None:
            raise
        return None
    entry = {"accuracy": result.accuracy, "ci95": result.ci95, "episodes": episodes, "n_way": n_way,
             "k_shot": k_shot, "n_query": n_query, "data": data,
             "protocol": FEWSHOT_PROTOCOL.format(n_way=n_way, k_shot=k_shot, n_query=n_query, episodes=episodes)}
    if classes is not None:
        entry["classes"] = [int(c) for c in classes]
    return entry


def retrieval_picture(train_images: Tensor, train_x: Tensor, train_y: Tensor | None, test_images: Tensor,
                      test_x: Tensor, test_y: Tensor | None, path: str | Path, *, queries: int = 8,
                      neighbours: int = 8, classes: Sequence[str] | None = None) -> Path:
    """``retrieval.png``: the first ``queries`` test images and their nearest training images."""
    k = min(neighbours, len(train_x))
    indices, _ = nearest_neighbours(test_x[:queries], train_x, k)
    # Only the retrieved rows are read (a streamed split decodes them now, not the whole split).
    rows, found = torch.unique(indices.cpu(), return_inverse=True)
    gallery = train_images[rows.to(train_images.device)]
    return plot_retrieval(test_images[:queries], gallery, found, path,
                          query_labels=None if test_y is None else test_y[:queries],
                          gallery_labels=None if train_y is None else train_y[rows.to(train_y.device)],
                          classes=classes)


def finetune_entry(pretrained: nn.Module, make_scratch: Callable[[], nn.Module], train_images: Tensor,
                   train_labels: Tensor, test_images: Tensor, test_labels: Tensor, *, data: str,
                   fractions: Sequence[float] = (0.01, 0.1), seeds: Sequence[int] = (0, 1, 2),
                   steps: int = DEFAULT_STEPS, batch_size: int = 256, device=None,
                   progress: bool = False) -> dict[str, Any]:
    """:func:`~selfsup.evaluate.few_label_finetune` as the results.json ``finetune`` entry."""
    table = few_label_finetune(pretrained, make_scratch, train_images, train_labels, test_images, test_labels,
                               fractions=fractions, seeds=seeds, steps=steps, batch_size=batch_size,
                               device=device, progress=progress)
    # finetune() caps the batch at the subset's size (and scales the lr from the batch it uses): say so per
    # fraction, so that a 1% subset of 82 labels is not described as "batch 256".
    rows = {str(fraction): {"mean": row["pretrained"]["mean"], "std": row["pretrained"]["std"],
                            "scratch_mean": row["scratch"]["mean"], "scratch_std": row["scratch"]["std"],
                            "labels": row["labels"], "batch": min(batch_size, row["labels"]), "seeds": row["seeds"]}
            for fraction, row in table.items()}
    percent = " / ".join(f"{100 * f:g}%" for f in fractions)
    batches = " / ".join(str(row["batch"]) for row in rows.values())
    return {"data": data, "fractions": rows, "steps": steps, "batch_size": batch_size,
            "protocol": FINETUNE_PROTOCOL.format(percent=percent, lr=BASE_LR, steps=steps, batch=batches,
                                                 batch_size=batch_size, seeds=list(seeds))}
