"""Atomic checkpoints: written to a temporary file in the same folder, then renamed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that a crash at any moment leaves the old file or the new one whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Load a selfsup checkpoint on the CPU, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"checkpoint {path} could not be read ({type(error).__name__}: {error}); "
                         "is it a complete selfsup checkpoint?") from None
    missing = {"model", "config", "step"} - set(state) if isinstance(state, dict) else {"model"}
    if missing:
        raise ValueError(f"checkpoint {path} is not a selfsup checkpoint: missing keys {sorted(missing)}")
    return state
