"""Retrieval with frozen features: cosine nearest neighbours, recall@k, and a picture of the results."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from selfsup.evaluate._common import as_features, as_labels
from selfsup.evaluate.fewshot import _positive_int
from selfsup.evaluate.knn import _top_k
from selfsup.evaluate.plots import DPI, _png_path, _save, _show_image

CELL_SIZE = 1.25  # inches per image: a 125 x 125 pixel cell (exact in binary, so sizes are exact)
MATCH_COLOUR = "#2ca02c"  # matplotlib's tab:green
MISS_COLOUR = "#d62728"  # tab:red


def _check_k(k, available: int, name: str, exclude_self: bool) -> None:
    if _positive_int(k, name) > available:
        raise ValueError(f"{name} must be at most {available}, the gallery rows a query can retrieve"
                         f"{' (itself excluded)' if exclude_self else ''}; got {k}")


@torch.no_grad()
def nearest_neighbours(query_x, gallery_x, k: int, *, exclude_self: bool = False,
                       batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """The ``k`` gallery rows most cosine-similar to each query row, most similar first.

    Both sides are L2-normalised, so similarity is ``q . g / (|q| |g|)``. Equal similarities go
    to the lower gallery index (so duplicated gallery rows give the same answer on every device).
    Queries are processed ``batch_size`` at a time, so memory is ``batch_size * G`` similarities.

    Args:
        query_x: ``(Q, D)`` query features (tensor or array).
        gallery_x: ``(G, D)`` gallery features.
        k: neighbours per query, at most ``G`` (``G - 1`` with ``exclude_self``).
        exclude_self: the query set is the gallery set (row ``i`` of both is the same item), so
            query ``i`` never retrieves gallery row ``i`` (leave-one-out retrieval).
        batch_size: query rows per similarity block.

    Returns:
        ``(indices, similarities)``: ``(Q, k)`` int64 gallery rows and their ``(Q, k)`` cosine
        similarities, on the device of ``query_x``.

    Examples:
        >>> gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> nearest_neighbours(torch.tensor([[2.0, 0.1]]), gallery, k=2)[0]
        tensor([[0, 2]])
    """
    query_x = as_features(query_x, "query_x")
    gallery_x = as_features(gallery_x, "gallery_x")
    if query_x.shape[1] != gallery_x.shape[1]:
        raise ValueError(f"query_x has {query_x.shape[1]} feature dimensions but gallery_x has "
                         f"{gallery_x.shape[1]}; extract both with the same encoder")
    if exclude_self and len(query_x) != len(gallery_x):
        raise ValueError(f"exclude_self=True needs the query set to be the gallery set, but query_x has "
                         f"{len(query_x)} rows and gallery_x {len(gallery_x)}; pass the same features twice")
    _check_k(k, len(gallery_x) - int(exclude_self), "k", exclude_self)
    _positive_int(batch_size, "batch_size")

    gallery = F.normalize(gallery_x, dim=1)
    indices, similarities = [], []
    for start in range(0, len(query_x), batch_size):
        block = F.normalize(query_x[start:start + batch_size].to(gallery.device, gallery.dtype), dim=1)
        similarity = block @ gallery.T  # (b, G)
        if exclude_self:
            rows = torch.arange(len(block), device=similarity.device)
            similarity[rows, start + rows] = float("-inf")  # never among the top k <= G - 1
        values, neighbours = _top_k(similarity, k)
        indices.append(neighbours)
        similarities.append(values)
    if not indices:
        return (torch.empty(0, k, dtype=torch.long, device=query_x.device),
                torch.empty(0, k, dtype=gallery.dtype, device=query_x.device))
    return torch.cat(indices).to(query_x.device), torch.cat(similarities).to(query_x.device)


def recall_at_k(query_x, query_y, gallery_x, gallery_y, ks: Sequence[int] = (1, 5, 10), *,
                exclude_self: bool = False) -> dict[int, float]:
    """Recall@k of cosine retrieval: the share of queries with a same-class item among their k nearest.

    The metric-learning definition (Oh Song et al., 2016, "Deep Metric Learning via Lifted
    Structured Feature Embedding"; Sohn, 2016): a query scores 1 at ``k`` when at least one of
    its ``k`` nearest gallery rows (:func:`nearest_neighbours`, cosine similarity, ties to the
    lower gallery index) has the query's label, else 0; recall@k is the mean over queries, so it
    never decreases with ``k``. A query whose class is absent from the gallery is always a miss.
    For the usual in-dataset protocol (every test image queries all the others) pass the same
    features and labels as query and gallery with ``exclude_self=True``.

    Args:
        query_x, gallery_x: ``(Q, D)`` and ``(G, D)`` features (tensors or arrays).
        query_y, gallery_y: ``(Q,)`` and ``(G,)`` integer labels.
        ks: the cut-offs, each between 1 and ``G`` (``G - 1`` with ``exclude_self``).
        exclude_self: query ``i`` is gallery row ``i`` and is not retrieved (see
            :func:`nearest_neighbours`).

    Returns:
        ``{k: recall}`` for each distinct ``k`` in increasing order.

    Examples:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.5]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> recall_at_k(x, y, x, y, ks=(1, 3), exclude_self=True)  # row 3 ranks rows 1, 0, 2
        {1: 0.75, 3: 1.0}
    """
    query_x = as_features(query_x, "query_x")
    gallery_x = as_features(gallery_x, "gallery_x")
    query_y = as_labels(query_y, "query_y", len(query_x), "query_x")
    gallery_y = as_labels(gallery_y, "gallery_y", len(gallery_x), "gallery_x")
    if len(query_x) == 0:
        raise ValueError("query_x is empty; recall needs at least one query")
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks:
        raise ValueError("ks is empty; pass cut-offs such as (1, 5, 10)")
    for k in ks:
        _check_k(k, len(gallery_x) - int(exclude_self), "every k in ks", exclude_self)
    ks = sorted(set(ks))
    indices, _ = nearest_neighbours(query_x, gallery_x, ks[-1], exclude_self=exclude_self)
    hits = gallery_y.to(indices.device)[indices] == query_y.to(indices.device)[:, None]  # (Q, max k)
    found = hits.cummax(dim=1).values  # found[:, j]: a match among the first j + 1
    return {k: found[:, k - 1].double().mean().item() for k in ks}


def _pictures(images, name: str) -> Tensor:
    """``images`` as float ``(N, C, H, W)`` in [0, 1] on the CPU, checked."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (N, C, H, W) tensor with C = 1 or 3 channels, got {shape}")
    if images.dtype == torch.uint8:
        return images.detach().cpu().float() / 255
    if not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {images.dtype}")
    images = images.detach().cpu().float()
    if len(images) and not 0 <= float(images.min()) <= float(images.max()) <= 1:  # also catches NaN
        raise ValueError(f"float {name} must lie in [0, 1], got values in "
                         f"[{float(images.min()):.3g}, {float(images.max()):.3g}]")
    return images


def plot_retrieval(query_images, gallery_images, neighbours, path: str | os.PathLike, *,
                   query_labels=None, gallery_labels=None, classes: Sequence[str] | None = None) -> Path:
    """Draw each query and its retrieved gallery images in a row, and save the grid as a PNG.

    Row ``i`` shows query ``i`` first, then gallery images ``neighbours[i, 0], ...,
    neighbours[i, k-1]`` (e.g. the indices from :func:`nearest_neighbours`). With labels, every
    image is captioned with its class and each neighbour is framed green when its label matches
    the query's and red when it does not. Each image fills a 125 x 125 pixel cell, so the PNG is
    ``125 * (k + 1)`` pixels wide and ``125 * Q`` high.

    Args:
        query_images: ``(Q, C, H, W)`` uint8 or float in [0, 1], C = 1 or 3.
        gallery_images: ``(G, C, h, w)``, the same kinds.
        neighbours: ``(Q, k)`` integer rows of ``gallery_images``.
        path: output ``.png`` file; folders are created, and the file is replaced atomically.
        query_labels, gallery_labels: ``(Q,)`` and ``(G,)`` integer labels; give both or neither.
        classes: names for the label values, indexed by label, used in the captions.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Examples:
        >>> import tempfile
        >>> images, labels = torch.rand(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> found, _ = nearest_neighbours(images.flatten(1), images.flatten(1), k=2, exclude_self=True)
        >>> out = plot_retrieval(images[:3], images, found[:3], tempfile.mkdtemp() + "/retrieval.png",
        ...                      query_labels=labels[:3], gallery_labels=labels)
    """
    path = _png_path(path)
    queries = _pictures(query_images, "query_images")
    gallery = _pictures(gallery_images, "gallery_images")
    neighbours = torch.as_tensor(neighbours)
    if (neighbours.ndim != 2 or len(neighbours) != len(queries) or neighbours.shape[1] == 0
            or neighbours.is_floating_point() or neighbours.dtype == torch.bool):
        raise ValueError(f"neighbours must be (Q, k) integer gallery rows with Q = {len(queries)} (one "
                         f"row per query image) and k >= 1, got {tuple(neighbours.shape)} {neighbours.dtype}")
    if len(queries) == 0:
        raise ValueError("query_images is empty; pass at least one query")
    neighbours = neighbours.long().cpu()
    if int(neighbours.min()) < 0 or int(neighbours.max()) >= len(gallery):
        raise ValueError(f"neighbours holds rows {int(neighbours.min())}..{int(neighbours.max())} but "
                         f"gallery_images has {len(gallery)}; pass indices into gallery_images")
    if (query_labels is None) != (gallery_labels is None):
        raise ValueError("pass both query_labels and gallery_labels, or neither")
    labelled = query_labels is not None
    if labelled:
        query_labels = as_labels(query_labels, "query_labels", len(queries), "query_images").cpu()
        gallery_labels = as_labels(gallery_labels, "gallery_labels", len(gallery), "gallery_images").cpu()
        largest = max(int(query_labels.max()), int(gallery_labels.max()))
        if classes is not None and len(classes) <= largest:
            raise ValueError(f"classes has {len(classes)} names but labels go up to {largest}; "
                             f"give one name per class index")

    def caption(label: Tensor) -> str:
        return classes[int(label)] if classes is not None else str(int(label))

    rows, k = neighbours.shape
    figure = Figure(figsize=(CELL_SIZE * (k + 1), CELL_SIZE * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, k + 1, squeeze=False)
    for row in range(rows):
        _show_image(axes[row, 0], queries[row])
        if labelled:
            axes[row, 0].set_xlabel(caption(query_labels[row]), fontsize=7)
        for column, found in enumerate(neighbours[row].tolist(), start=1):
            cell = axes[row, column]
            _show_image(cell, gallery[found])
            if labelled:
                cell.set_xlabel(caption(gallery_labels[found]), fontsize=7)
                colour = MATCH_COLOUR if gallery_labels[found] == query_labels[row] else MISS_COLOUR
                for spine in cell.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
    axes[0, 0].set_title("query", fontsize=8)
    for column in range(1, k + 1):
        axes[0, column].set_title(str(column), fontsize=8)
    return _save(figure, path)
