"""Atomic checkpoints, loaded without running code from the file."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from selfsup._io import atomic_write
from selfsup.errors import DataError


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that a crash at any moment leaves the old file or the new one whole."""
    return atomic_write(path, lambda file: torch.save(obj, file))


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
            raise DataError(f"checkpoint {path} could not be read (not a valid pickle); "
                            "is it a complete selfsup checkpoint?") from None
        raise DataError(f"checkpoint {path} is not a plain-tensor checkpoint: it asks to call {wanted.group(1)}, "
                        "and selfsup refuses to execute code from a file. A selfsup checkpoint holds only "
                        "tensors, numbers, strings and containers; save state_dict()s and plain values") from None
    except (RuntimeError, EOFError, ValueError) as error:  # torch's errors for a truncated or foreign file
        raise DataError(f"checkpoint {path} could not be read ({type(error).__name__}: {error}); "
                        "is it a complete selfsup checkpoint?") from None
    missing = {"model", "config", "step", "data"} - set(state) if isinstance(state, dict) else {"model"}
    if missing:
        raise DataError(f"checkpoint {path} is not a selfsup checkpoint: missing keys {sorted(missing)}")
    return state
