"""Frozen-encoder features: batched extraction, export to ``.npy`` files, and tables that join
each embedding back to its image (CSV, Parquet)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from selfsup._optional import require_extra
from selfsup.errors import ConfigError
from selfsup.evaluate._common import as_features, as_labels, atomic_write
from selfsup.nn import eval_mode


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(encoder: nn.Module, images: Tensor, *, batch_size: int = 1024,
                     device: torch.device | str | None = None, autocast: bool = False,
                     progress: bool = False, kind: str = "images") -> Tensor:
    """Run a frozen ``encoder`` over ``images`` in batches and return its features.

    The encoder runs in eval mode (BatchNorm uses its running statistics, dropout is off), so the
    result does not depend on ``batch_size``. Each submodule's train/eval flag is restored
    afterwards, and so is the encoder's device when ``device`` moved it.

    Args:
        encoder: maps float images ``(B, C, H, W)`` in [0, 1] to features ``(B, D)``; it applies
            its own normalisation (as :class:`selfsup.nn.backbones.Backbone` does).
        images: ``(N, C, H, W)`` uint8 (divided by 255 on the device) or float in [0, 1]; with
            ``kind="sequences"`` float signals ``(N, C, T)`` (any range), with ``kind="graph"``
            int64 node ids ``(N,)`` of the graph the encoder holds. They may stay on the CPU;
            each batch is moved to ``device``.
        batch_size: images per forward pass.
        device: where the forward passes run; defaults to the encoder's device.
        autocast: run the forward passes under bf16 autocast (faster on recent CPUs and GPUs;
            features then agree with float32 to about 1e-2 relative).
        progress: show a tqdm bar over batches.
        kind: what ``images`` are: "images", "sequences" or "graph" (a data source's kind;
            "image_text" is read as "images": the image tower's input).

    Returns:
        float32 features ``(N, D)`` on the CPU.

    Examples:
        >>> encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16))
        >>> images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
        >>> extract_features(encoder, images, batch_size=4).shape
        torch.Size([10, 16])
    """
    if kind not in ("images", "image_text", "sequences", "graph", "video"):
        raise ValueError(f"kind must be 'images', 'image_text', 'sequences', 'video' or 'graph', got {kind!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    from selfsup.data.stream import ImageStream

    if isinstance(images, ImageStream):  # a streamed split: DataLoader workers read it batch by batch
        if len(images) == 0:
            raise ValueError("images is empty (N = 0); pass at least one image")
        return _encode(encoder, images.batches(batch_size), -(-len(images) // batch_size), device, autocast,
                       progress, nodes=False)
    signals, nodes = kind == "sequences", kind == "graph"
    if nodes and not (isinstance(images, Tensor) and images.ndim == 1 and images.dtype == torch.int64):
        raise ValueError(f"a graph's inputs must be int64 node ids (N,), got "
                         f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    if signals and not (isinstance(images, Tensor) and images.ndim == 3 and images.is_floating_point()):
        raise ValueError(f"signals must be a float (N, C, T) tensor, got {tuple(getattr(images, 'shape', ()))}")
    if not isinstance(images, Tensor) or not (images.ndim == 4 or signals or nodes):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {shape}; "
                         f"add a channel dimension with images.unsqueeze(1) for grayscale")
    if len(images) == 0:
        raise ValueError("images is empty (N = 0); pass at least one image")
    if images.dtype != torch.uint8 and not (signals or nodes):
        if not images.is_floating_point():
            raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
        low, high = float(images.min()), float(images.max())
        if not 0 <= low <= high <= 1:  # also catches NaN
            raise ValueError(f"float images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                             f"pass unnormalised images (the encoder normalises them itself)")
    batches = (images[start:start + batch_size] for start in range(0, len(images), batch_size))
    return _encode(encoder, batches, -(-len(images) // batch_size), device, autocast, progress, nodes=nodes)


def _encode(encoder: nn.Module, batches, count: int, device, autocast: bool, progress: bool, *,
            nodes: bool) -> Tensor:
    """The features of each batch of ``batches`` (``count`` of them), concatenated on the CPU."""
    home = _module_device(encoder)
    target = torch.device(device) if device is not None else home
    chunks: list[Tensor] = []
    moved = target != home
    try:
        if moved:
            encoder.to(target)
        dtype = next((p.dtype for p in encoder.parameters() if p.is_floating_point()), torch.float32)
        with eval_mode(encoder):
            for batch in tqdm(batches, total=count, desc="features", unit="batch", disable=not progress):
                batch = batch.to(target, non_blocking=True)
                if not nodes:  # node ids stay ids; pixels in the weights' dtype (a bf16-true or 64-true run's)
                    batch = batch.float().div_(255) if batch.dtype == torch.uint8 else batch.float()
                    batch = batch.to(dtype)
                with torch.autocast(target.type, dtype=torch.bfloat16, enabled=autocast):
                    features = encoder(batch)
                if not isinstance(features, Tensor) or features.ndim != 2 or len(features) != len(batch):
                    shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
                    raise ValueError(f"encoder must return features of shape ({len(batch)}, D) for a batch of "
                                     f"{len(batch)} images, got {shape}; pool and flatten its output")
                chunks.append(features.float().cpu())
    finally:
        if moved:
            encoder.to(home)
    return torch.cat(chunks)


def save_embeddings(directory: str | os.PathLike, features, labels=None, *,
                    prefix: str = "embeddings") -> list[Path]:
    """Write features (and labels) as ``<prefix>.npy`` (float32) and ``<prefix>_labels.npy`` (int64).

    Each file is written to a temporary name and renamed, so an interrupted export never leaves
    a truncated file behind, and existing files are replaced only once the new one is complete.

    Args:
        directory: output folder, created if missing.
        features: ``(N, D)`` tensor or array.
        labels: optional ``(N,)`` integer class indices.
        prefix: file-name stem, without a folder or an extension.

    Returns:
        The paths written, features first.

    Examples:
        >>> import tempfile
        >>> paths = save_embeddings(tempfile.mkdtemp(), torch.randn(5, 3), torch.arange(5))
        >>> [path.name for path in paths]
        ['embeddings.npy', 'embeddings_labels.npy']
    """
    if not prefix or prefix != Path(prefix).name or prefix.endswith(".npy"):
        raise ValueError(f"prefix must be a bare file-name stem like 'embeddings', got {prefix!r}; "
                         f"put folders in directory and leave out the .npy extension")
    features = as_features(features, "features")
    arrays = {f"{prefix}.npy": features.detach().cpu().float().numpy()}
    if labels is not None:
        labels = as_labels(labels, "labels", len(features), "features")
        arrays[f"{prefix}_labels.npy"] = labels.cpu().numpy()
    directory = Path(directory)
    return [atomic_write(directory / name, lambda file, array=array: np.save(file, array))
            for name, array in arrays.items()]


TABLE_FORMATS = ("npy", "csv", "parquet")


def _text(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def save_embedding_table(path: str | os.PathLike, features, *, files: Sequence[str] | None = None,
                         labels=None, classes: Sequence[str] | None = None, fmt: str = "csv") -> Path:
    """One row per embedding that joins back to the data: ``file`` (the image's path) or ``index``
    (its position in the split), ``label`` and ``class`` when known, then the embedding as
    ``f0 ... f{D-1}`` (CSV) or one fixed-size list column ``embedding`` (Parquet, through pyarrow:
    the ``parquet`` extra). Written to a temporary name and renamed.

    Raises:
        ConfigError: an unknown format, or pyarrow missing for Parquet.
    """
    features = as_features(features, "features").detach().cpu().float().numpy()
    count = features.shape[0]
    if files is not None and len(files) != count:
        raise ValueError(f"files has {len(files)} names for {count} embeddings")
    # A file name that is not valid UTF-8 on disk (Python holds its bytes as lone surrogates) is written with
    # those bytes escaped (caf\xe9.png), so the table stays UTF-8 and names its file.
    key, ids = ("file", [_text(str(name)) for name in files]) if files is not None else ("index", list(range(count)))
    columns: dict[str, list] = {key: ids}
    if labels is not None:
        labels = as_labels(labels, "labels", count, "features").cpu().tolist()
        columns["label"] = labels
        if classes is not None:
            columns["class"] = [classes[k] for k in labels]
    path = Path(path)
    if fmt == "csv":
        import csv

        def write(file) -> None:
            text = io.TextIOWrapper(file, encoding="utf-8", newline="")
            writer = csv.writer(text)
            writer.writerow([*columns, *(f"f{d}" for d in range(features.shape[1]))])
            for row, vector in enumerate(features):
                writer.writerow([*(column[row] for column in columns.values()), *(repr(float(v)) for v in vector)])
            text.flush()
            text.detach()

        return atomic_write(path, write)
    if fmt == "parquet":
        pyarrow = require_extra("pyarrow", "parquet")
        import pyarrow.parquet as parquet

        embedding = pyarrow.FixedSizeListArray.from_arrays(pyarrow.array(features.reshape(-1)), features.shape[1])
        table = pyarrow.table({**columns, "embedding": embedding})
        return atomic_write(path, lambda file: parquet.write_table(table, file))
    raise ConfigError(f"--format: {fmt!r}; choose among {', '.join(TABLE_FORMATS)}")
