"""Pictures of an embedding (UMAP / t-SNE) and of training curves, as PNG files.

Figures are drawn with matplotlib's object API onto its Agg canvas, so nothing needs a display
and the caller's pyplot state and backend are left alone.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from selfsup.evaluate._common import as_features, as_labels, atomic_write, stratified_sample

logger = logging.getLogger(__name__)

DPI = 100
EMBEDDING_SIZE = (8.0, 7.0)  # inches: an 800 x 700 pixel PNG
PANEL_SIZE = (4.5, 3.5)  # inches per curve panel
_MAX_LEGEND_CLASSES = 20


def _png_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must name a .png file, got {str(path)!r}")
    return path


def _save(figure: Figure, path: Path) -> Path:
    return atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=DPI))


def _show_image(cell: Axes, picture: Tensor) -> None:
    """Draw one ``(C, H, W)`` float image in [0, 1], C = 1 (gray) or 3, in ``cell`` without ticks."""
    picture = picture.clamp(0, 1).permute(1, 2, 0).numpy()
    if picture.shape[2] == 1:
        cell.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        cell.imshow(picture, interpolation="nearest")
    cell.set_xticks([])
    cell.set_yticks([])


def _project(features: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``features`` and the name of the method that made them."""
    if method == "umap":
        try:
            import umap
        except ImportError:
            logger.warning("umap-learn is not installed, so the embedding is drawn with t-SNE "
                           "instead; install it with `pip install 'selfsup[umap]'`")
        else:
            # A fixed random_state makes UMAP single-threaded; n_jobs=1 says so without a warning.
            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(features) - 1),
                                random_state=seed, n_jobs=1)
            return reducer.fit_transform(features), "UMAP"
    from sklearn.manifold import TSNE

    reducer = TSNE(n_components=2, perplexity=min(30.0, (len(features) - 1) / 3), init="pca",
                   random_state=seed)
    return reducer.fit_transform(features), "t-SNE"


def plot_embedding(features, labels, path: str | os.PathLike, *,
                   method: Literal["umap", "tsne"] = "umap", classes: Sequence[str] | None = None,
                   max_points: int = 5000, seed: int = 0) -> Path:
    """Draw a 2-D map of ``features`` coloured by ``labels`` and save it as an 800 x 700 PNG.

    At most ``max_points`` rows are drawn, subsampled per class in proportion to class size
    (seeded by ``seed``) so rare classes stay visible. ``method="umap"`` uses umap-learn
    (McInnes et al., 2018) when it is installed and otherwise falls back to scikit-learn's t-SNE
    (van der Maaten & Hinton, 2008) with a logged warning; the title names the method used.

    Args:
        features: ``(N, D)`` tensor or array.
        labels: ``(N,)`` integer class indices, or None for one colour.
        path: output ``.png`` file; folders are created, and the file is replaced atomically.
        method: ``"umap"`` or ``"tsne"``.
        classes: names for the label values, indexed by label, shown in the legend (up to
            20 classes; more classes get a colour bar of label indices).
        max_points: largest number of points drawn.
        seed: seeds the subsample and the projection.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Examples:
        >>> import tempfile, torch
        >>> out = plot_embedding(torch.randn(100, 8), torch.arange(100) % 3, tempfile.mkdtemp() + "/map.png",
        ...                      method="tsne", classes=["cat", "dog", "bird"])
    """
    path = _png_path(path)
    if method not in ("umap", "tsne"):
        raise ValueError(f"method must be 'umap' or 'tsne', got {method!r}")
    features = as_features(features, "features").detach().cpu().float().numpy()
    if len(features) < 4:
        raise ValueError(f"features has {len(features)} rows; a 2-D map needs at least 4")
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, got {max_points}")
    if labels is not None:
        labels = as_labels(labels, "labels", len(features), "features").cpu().numpy()
        if classes is not None and len(classes) <= labels.max():
            raise ValueError(f"classes has {len(classes)} names but labels go up to {labels.max()}; "
                             f"give one name per class index")

    rng = np.random.default_rng(seed)
    if len(features) <= max_points:
        rows = np.arange(len(features))
    elif labels is None:
        rows = np.sort(rng.choice(len(features), max_points, replace=False))
    else:
        rows = stratified_sample(labels, max_points, rng)
    coords, method_name = _project(features[rows], method, seed)

    figure = Figure(figsize=EMBEDDING_SIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots()
    size = float(np.clip(5000 / len(rows), 4, 20))  # dots shrink as the map fills up
    if labels is None:
        axes.scatter(coords[:, 0], coords[:, 1], s=size, alpha=0.7, linewidths=0)
    else:
        labels = labels[rows]
        present = np.unique(labels)
        if len(present) <= _MAX_LEGEND_CLASSES:
            palette = "tab10" if len(present) <= 10 else "tab20"
            colours = colormaps[palette]
            for position, label in enumerate(present):
                chosen = labels == label
                name = classes[label] if classes is not None else str(label)
                axes.scatter(coords[chosen, 0], coords[chosen, 1], s=size, alpha=0.7, linewidths=0,
                             color=colours(position), label=name)
            legend = axes.legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5),
                                 frameon=False)
            for handle in legend.legend_handles:
                handle.set_sizes([40])
                handle.set_alpha(1)
        else:
            points = axes.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="viridis", s=size,
                                  alpha=0.7, linewidths=0)
            figure.colorbar(points, ax=axes, label="class index")
    axes.set_title(f"{method_name} of {len(rows)} embeddings"
                   + (f" (of {len(features)})" if len(rows) < len(features) else ""))
    axes.set_xlabel(f"{method_name} 1")
    axes.set_ylabel(f"{method_name} 2")
    axes.set_xticks([])
    axes.set_yticks([])
    return _save(figure, path)


def _read_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Series per metric column of a CSV with a ``step`` column; empty cells are skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"curves file {str(path)!r} does not exist")
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        if "step" not in columns:
            raise ValueError(f"{str(path)!r} needs a 'step' column, found columns {columns}")
        history: dict[str, list[tuple[float, float]]] = {name: [] for name in columns if name != "step"}
        for line, row in enumerate(reader, start=2):
            for name, cell in row.items():
                if name in history and cell not in (None, ""):
                    try:
                        history[name].append((float(row["step"]), float(cell)))
                    except ValueError:
                        raise ValueError(f"{str(path)!r} line {line}: step {row['step']!r} or "
                                         f"{name} {cell!r} is not a number") from None
    return history


def plot_curves(history: Mapping[str, Sequence[tuple[float, float]]] | str | os.PathLike,
                path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Plot each metric against the step in its own panel and save one PNG.

    Panels are laid out three to a row, each 450 x 350 pixels, so ``n`` metrics give an image
    ``450 * min(n, 3)`` wide and ``350 * ceil(n / 3)`` high.

    Args:
        history: ``{metric: [(step, value), ...]}``, or a CSV file with a ``step`` column and
            one column per metric (empty cells, e.g. a metric logged only each epoch, are skipped).
        path: output ``.png`` file; folders are created, and the file is replaced atomically.
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Examples:
        >>> import tempfile
        >>> out = plot_curves({"loss": [(0, 2.3), (100, 1.1)], "knn_acc": [(100, 0.71)]},
        ...                   tempfile.mkdtemp() + "/curves.png", title="SimCLR")
    """
    path = _png_path(path)
    if isinstance(history, (str, os.PathLike)):
        history = _read_curves(Path(history))
    history = {name: series for name, series in history.items() if len(series)}
    if not history:
        raise ValueError("history holds no points; pass {metric: [(step, value), ...]} with at "
                         "least one point, or a CSV with a step column and metric values")

    columns = min(len(history), 3)
    rows = math.ceil(len(history) / columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), dpi=DPI,
                    layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, (name, series) in zip(panels, history.items()):
        points = np.asarray(series, dtype=float)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"history[{name!r}] must be a sequence of (step, value) pairs, "
                             f"got shape {points.shape}")
        points = points[np.argsort(points[:, 0], kind="stable")]
        axes.plot(points[:, 0], points[:, 1], marker="o" if len(points) <= 30 else None,
                  markersize=3, linewidth=1.5)
        axes.set_title(name)
        axes.set_xlabel("step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
    for axes in panels[len(history):]:
        axes.set_visible(False)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_views(images, views: Sequence, path: str | os.PathLike, *, names: Sequence[str] | None = None,
               title: str | None = None) -> Path:
    """A grid of images (one row each) and their augmented views (one column per view), as a PNG.

    Every cell is drawn at the same size whatever the view's resolution, so local crops show
    what the network sees, only coarser.

    Args:
        images: ``(N, C, H, W)`` uint8 or float in [0, 1], C = 1 or 3.
        views: a list of ``(N, C, h_i, w_i)`` float views in [0, 1] of those images.
        path: output ``.png`` file; folders are created, and the file is replaced atomically.
        names: column titles for the views (default ``view 1``, ``view 2``, ...).
        title: figure title.

    Examples:
        >>> import tempfile, torch
        >>> x = torch.rand(3, 1, 8, 8)
        >>> out = plot_views(x, [x, x[..., :4, :4]], tempfile.mkdtemp() + "/views.png")
    """
    path = _png_path(path)
    columns = [images, *views]
    rows = len(images)
    if rows == 0 or any(len(view) != rows for view in views):
        raise ValueError(f"every view needs one row per image ({rows}), got {[len(v) for v in views]}")
    names = ["image", *(names or [f"view {i + 1}" for i in range(len(views))])]
    figure = Figure(figsize=(1.2 * len(columns), 1.2 * rows + (0.4 if title else 0)), dpi=DPI,
                    layout="constrained")
    axes = figure.subplots(rows, len(columns), squeeze=False)
    for column, (name, batch) in enumerate(zip(names, columns)):
        batch = batch.detach().cpu().float()
        if batch.max() > 1:
            batch = batch / 255
        for row in range(rows):
            cell = axes[row, column]
            _show_image(cell, batch[row])
            if row == 0:
                cell.set_title(name, fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_signal_views(signals, views: Sequence, path: str | os.PathLike, *, names: Sequence[str] | None = None,
                      title: str | None = None, samples: int = 800) -> Path:
    """Windows of signal (one row each) and their views as waveforms: the signal, each view drawn
    over it, and each view's change from the signal (its own scale), over the first ``samples``
    samples so the waveform stays readable.

    Args:
        signals: ``(N, 1, T)`` float windows.
        views: a list of ``(N, 1, T)`` views of them.
        path: output ``.png`` file.
        names: the views' names (default ``view 1``, ...).
        title: figure title.

    Examples:
        >>> import tempfile, torch
        >>> x = torch.randn(2, 1, 1000) / 10
        >>> out = plot_signal_views(x, [x + 0.01, x - 0.01], tempfile.mkdtemp() + "/views.png")
    """
    path = _png_path(path)
    rows = len(signals)
    if rows == 0 or any(tuple(view.shape) != tuple(signals.shape) for view in views):
        raise ValueError(f"every view must have the signals' shape {tuple(signals.shape)}, got "
                         f"{[tuple(v.shape) for v in views]}")
    names = list(names or [f"view {i + 1}" for i in range(len(views))])
    figure = Figure(figsize=(3.2 * (1 + len(views)), 1.3 * rows + (0.4 if title else 0)), dpi=DPI,
                    layout="constrained")
    axes = figure.subplots(rows, 1 + len(views), squeeze=False)
    x = signals.detach().cpu().float()[:, 0, :samples]
    for row in range(rows):
        axes[row, 0].plot(x[row].numpy(), linewidth=0.6, color="black")
        for column, (name, view) in enumerate(zip(names, views), start=1):
            v = view.detach().cpu().float()[row, 0, :samples]
            cell = axes[row, column]
            cell.plot(x[row].numpy(), linewidth=0.6, color="0.75")
            cell.plot(v.numpy(), linewidth=0.6, color="tab:blue")
            change = cell.twinx()
            change.plot((v - x[row]).numpy(), linewidth=0.4, color="tab:red", alpha=0.6)
            change.tick_params(labelsize=5, colors="tab:red")
            if row == 0:
                cell.set_title(f"{name} (blue; its change in red)", fontsize=8)
        for cell in axes[row]:
            cell.tick_params(labelsize=5)
        if row == 0:
            axes[row, 0].set_title("signal", fontsize=8)
    if title:
        figure.suptitle(title)
    return _save(figure, path)