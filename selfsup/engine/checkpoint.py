"""Atomic checkpoints: written to a temporary file in the same folder, then renamed; loaded without running code."""

from __future__ import annotations

import os
import pickle
import re
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
    """Load a selfsup checkpoint on the CPU, with a clear error for a missing or foreign file.

    Only tensors, numbers, strings and containers are unpickled (``weights_only=True``): a file
    that asks to call anything else is refused with a ValueError, never run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch reports a corrupt pickle and a hostile one alike, with advice to retry with
        # weights_only=False; only the global a file asks for tells them apart.
        wanted = re.search(r"GLOBAL ([\w.]+)", str(error))
        if wanted is None:
            raise ValueError(f"checkpoint {path} could not be read (not a valid pickle); "
                             "is it a complete selfsup checkpoint?") from None
        raise ValueError(f"checkpoint {path} is not a plain-tensor checkpoint: it asks to call {wanted.group(1)}, "
                         "and selfsup refuses to execute code from a file. A selfsup checkpoint holds only "
                         "tensors, numbers, strings and containers; save state_dict()s and plain values") from None
    except Exception as error:
        raise ValueError(f"checkpoint {path} could not be read ({type(error).__name__}: {error}); "
                         "is it a complete selfsup checkpoint?") from None
    missing = {"model", "config", "step"} - set(state) if isinstance(state, dict) else {"model"}
    if missing:
        raise ValueError(f"checkpoint {path} is not a selfsup checkpoint: missing keys {sorted(missing)}")
    return state
