"""The floor beside every number: the same evaluation of the same encoder at its random initialisation.

On Fashion-MNIST a ConvNet with random weights already reaches about 84.5% under the linear
probe, so "85% linear" says little until it is read against that. Every evaluation a run or
``selfsup evaluate`` writes carries, in its entry, ``random_init``: the same scores of the same
evaluation encoder (architecture, input normalisation and seed) before any training, on the same
data, by the same protocol. A run from pretrained weights (``backbone.pretrained``) gets the same backbone
with random weights, as the name says. The memory-bank kNN (``bank_knn``) has none: a bank at
initialisation holds no features to vote with.

The floor is computed once and cached in ``$SELFSUP_CACHE/floors`` (default
``~/.cache/selfsup/floors``), keyed by a digest of the encoder's initial weights and
architecture, of the data (every image and label, or a streamed split's file names) and of the
evaluations asked for, so a second run of a recipe pays nothing for it and a change to any of
them computes it anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup._io import atomic_write, tensor_bytes
from selfsup.evaluate import COLLAPSE_PROTOCOL, FEWSHOT_PROTOCOL, KNN_PROTOCOL, LINEAR_PROTOCOL, RETRIEVAL_PROTOCOL

FLOOR_VERSION = 4
"""Raised when what a floor means changes in a way the protocols' texts do not show."""

SCORE_KEYS = ("accuracy", "ci95", "linear", "knn", "feature_std", "effective_rank", "tau", "mean_gap", "alignment_tau",
              "alignment_error", "task_alignment_tau", "task_alignment_error", "j_and_f", "j", "f", "pck@0.1", "pck@0.2")
"""The keys of an evaluation entry that are scores (besides ``recall@k``); the floor keeps these."""


def cache_dir() -> Path:
    """``$SELFSUP_CACHE/floors``, default ``~/.cache/selfsup/floors`` (created when written)."""
    root = os.environ.get("SELFSUP_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "selfsup") / "floors"


def _fields(split: Any) -> list[str]:
    """The fields of an in-memory split a floor depends on: a dataclass's (every split of selfsup.data is
    one), or its labels; not the report of skipped files, which says how the split was read."""
    if dataclasses.is_dataclass(split):
        return sorted(f.name for f in dataclasses.fields(split) if f.name not in ("skipped", "images"))
    return ["labels"] if getattr(split, "labels", None) is not None else []


def _update(digest, value: Any) -> None:
    """Feed a tensor (dtype, shape and bytes), a split (its files or its tensors) or plain data."""
    if isinstance(value, Tensor):
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(tensor_bytes(value))
    elif hasattr(value, "fingerprint"):  # a streamed split: the sha256 of its file names, and how they are read
        reader = getattr(value, "reader", None)
        how = [getattr(value, name, None) for name in ("size", "view")] + [
            getattr(reader, name, None) for name in ("side", "channels")]
        digest.update(f"files:{value.fingerprint()}:{len(value)}:{how}".encode())
    elif hasattr(value, "graph"):  # a graph's node set: the whole graph and which nodes
        for part in (value.graph.x, value.graph.edge_index, value.graph.labels, value.inputs):
            _update(digest, part)
    elif hasattr(value, "inputs"):  # an in-memory split: its images (or windows) and everything beside them
        _update(digest, value.inputs)
        # Labels, and the annotations some evaluations score (a video's masks, keypoints, times and videos; a
        # pair's second images and matches): a floor must be computed anew when any of them changes.
        for name in _fields(value):
            digest.update(f"field:{name}".encode())
            _update(digest, getattr(value, name))
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            digest.update(f"key:{key}".encode())
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"list:{len(value)}".encode())
        for item in value:
            _update(digest, item)
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())


def _plain(value: Any) -> bool:
    """A setting the key can read: None, a number, a string, a tensor, or a tuple or list of them."""
    if isinstance(value, (tuple, list)):
        return all(_plain(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str, Tensor))


def floor_key(encoder: nn.Module, data: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The cache key: sha256 of the encoder (its modules, their plain attributes and every weight and buffer), of each data
    split in ``data`` and of the evaluation ``settings``, with the protocols' texts and
    :data:`FLOOR_VERSION`."""
    digest = hashlib.sha256(f"floor v{FLOOR_VERSION}".encode())
    digest.update(repr(encoder).encode())
    # Settings a module keeps as plain attributes change its features without showing in its repr or its
    # weights (CPC's patch grid: patch and stride): every module's public attributes are read too.
    for path, module in encoder.named_modules():
        for name, value in sorted(vars(module).items()):
            if not name.startswith("_") and name != "training" and _plain(value):
                digest.update(f"attr:{path}.{name}".encode())
                _update(digest, value)
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        _update(digest, tensor)
    for name, split in sorted(data.items()):
        digest.update(f"data:{name}".encode())
        _update(digest, split)
    _update(digest, dict(settings))
    _update(digest, [LINEAR_PROTOCOL, KNN_PROTOCOL, FEWSHOT_PROTOCOL, RETRIEVAL_PROTOCOL, COLLAPSE_PROTOCOL])
    return digest.hexdigest()


def scores(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """The score fields of each evaluation entry (accuracy, ci95, linear, knn, feature_std, effective_rank, recall@k)."""
    return {name: {key: value for key, value in entry.items() if key in SCORE_KEYS or "@" in key}
            for name, entry in entries.items()}


def random_init_floor(encoder: nn.Module, evaluations: Callable[[nn.Module], dict[str, dict[str, Any]]], *,
                      data: Mapping[str, Any], settings: Mapping[str, Any], use_cache: bool = True
                      ) -> dict[str, dict[str, float]]:
    """The scores of ``evaluations(encoder)`` for an encoder at its random initialisation, cached.

    Args:
        encoder: the evaluation encoder, freshly initialised (the caller seeds it as the run was).
        evaluations: computes the results entries (``frozen_evaluations`` on its features, say).
        data: the splits the evaluations read, by name (part of the cache key).
        settings: everything else that changes the evaluations' results (k, episodes, shots...).
        use_cache: read and write the cache (off: always compute).

    Returns:
        ``{evaluation: {score: value}}``, e.g. ``{"linear": {"accuracy": 0.845}, ...}``.
    """
    path = cache_dir() / f"{floor_key(encoder, data, settings)}.json" if use_cache else None
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
            return {name: dict(values) for name, values in cached["scores"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged cache file is computed again and replaced
    found = scores(evaluations(encoder))
    if path is not None:
        text = json.dumps({"settings": dict(settings), "scores": found}, indent=2, default=str).encode()
        try:
            atomic_write(path, lambda file: file.write(text))
        except OSError:
            pass  # an unwritable cache costs the next run the same computation, nothing else
    return found


def with_floor(entries: dict[str, dict[str, Any]], floor: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """``entries`` with each evaluation's floor added as its ``random_init`` field (without the
    floor's own ``baselines``, which do not depend on the network)."""
    for name, entry in entries.items():
        if floor.get(name):
            entry["random_init"] = {key: value for key, value in floor[name].items() if key != "baselines"}
    return entries


def seeded_build(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
