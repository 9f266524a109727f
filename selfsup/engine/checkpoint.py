"""Atomic checkpoints that prove their integrity, loaded without running code from the file.

Every checkpoint records, under ``integrity``, a CRC-32 of each tensor it holds (its dtype,
shape and bytes, by the tensor's path in the state: ``model/backbone.net.0.weight``) and of its
configuration; :func:`load` checks them and names the first tensor that differs, so a flipped
byte in a weight is an error, not a silently different number. CRC-32 because the record guards
against damage (a bad disk, a cut copy, a flipped bit), which it detects as surely as a
cryptographic hash, at 6 GB/s (zlib): about a tenth of the write time of a 100 MB checkpoint
(``benchmarks/integrity.py``), where sha256 costs half of it, or twice it on CPUs without SHA
instructions. Nothing written inside the same file could stop a deliberate edit anyway; exports
record the sha256 of each file (``selfsup.export``). Any file given as a checkpoint
gives either a checkpoint or a :class:`~selfsup.errors.DataError` naming the file and what is
wrong with it (tested by fuzzing: random bytes, every cut of a real checkpoint, flipped bytes).
"""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from selfsup._io import atomic_write, tensor_bytes
from selfsup.errors import DataError, UsageError

DIGEST = "crc32"


class DiskFullError(UsageError, OSError):
    """A checkpoint could not be written for lack of space (or a file-size limit); the previous
    checkpoint is intact."""


def tensors_of(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts, lists and tuples, with its path (``model/net.0.weight``)."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_of(item, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from tensors_of(item, f"{prefix}/{index}" if prefix else str(index))


READABLE_DIGESTS = ("crc32", "sha256")
"""Records :func:`verify` checks: CRC-32 (written now) and sha256 (written by selfsup at ab69e0d)."""


def tensor_digest(tensor: torch.Tensor, algorithm: str = DIGEST) -> str:
    """CRC-32 (hex; or ``algorithm="sha256"``, the earlier record) of a tensor's dtype, shape and bytes."""
    head = f"{tensor.dtype}{tuple(tensor.shape)}".encode()
    if algorithm == "sha256":
        digest = hashlib.sha256(head)
        digest.update(tensor_bytes(tensor))
        return digest.hexdigest()
    return f"{zlib.crc32(tensor_bytes(tensor), zlib.crc32(head)):08x}"


def config_digest(config: Any, algorithm: str = DIGEST) -> str:
    """CRC-32 (hex; or sha256) of a configuration's canonical JSON."""
    text = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(text).hexdigest() if algorithm == "sha256" else f"{zlib.crc32(text):08x}"


def _without_tensors(value: Any) -> Any:
    """``value`` with every tensor replaced by a placeholder and every key a string: the rest of a state."""
    if isinstance(value, torch.Tensor):
        return "<tensor>"
    if isinstance(value, dict):
        return {str(key): _without_tensors(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_tensors(item) for item in value]
    return value


def digests(state: dict[str, Any]) -> dict[str, Any]:
    """The ``integrity`` record of a checkpoint's state (everything but ``integrity`` itself): each tensor's
    digest, the configuration's, and ``rest``: that of everything else (the data's shape, the step, the
    history, the run's plan), which the model is rebuilt and resumed from."""
    body = {key: value for key, value in state.items() if key != "integrity"}
    return {"algorithm": DIGEST, "tensors": {path: tensor_digest(t) for path, t in tensors_of(body)},
            "config": config_digest(state.get("config")), "rest": config_digest(_without_tensors(body))}


def verify(state: dict[str, Any], path: str | Path) -> int:
    """Check a loaded state against its recorded digests; returns how many tensors were checked
    (0 for a checkpoint written before digests were recorded).

    Raises:
        DataError: naming the first tensor (or the configuration) that does not match, or a tensor
            recorded but missing, or one present but never recorded.
    """
    record = state.get("integrity")
    if record is None:
        return 0
    if (not isinstance(record, dict) or record.get("algorithm") not in READABLE_DIGESTS
            or not isinstance(record.get("tensors"), dict)):
        raise DataError(f"checkpoint {path}: its integrity record is malformed ({str(record)[:120]})")
    algorithm = record["algorithm"]
    recorded = record["tensors"]
    body = {key: value for key, value in state.items() if key != "integrity"}
    found = dict(tensors_of(body))
    for name in recorded.keys() - found.keys():
        raise DataError(f"checkpoint {path}: tensor {name} is recorded in its integrity record but missing")
    for name, tensor in found.items():
        if name not in recorded:
            raise DataError(f"checkpoint {path}: tensor {name} is not in its integrity record (added after it "
                            f"was written?)")
        if tensor_digest(tensor, algorithm) != recorded[name]:
            raise DataError(f"checkpoint {path}: tensor {name} does not match its recorded {algorithm}: the file was "
                            f"changed or damaged after it was written; use an earlier checkpoint or retrain")
    if record.get("config") != config_digest(state.get("config"), algorithm):
        raise DataError(f"checkpoint {path}: its configuration does not match its recorded {algorithm}")
    # Written since 2026-12-07 (earlier records have no "rest"): the data's shape, step, history, plan.
    if "rest" in record and record["rest"] != config_digest(_without_tensors(body), algorithm):
        raise DataError(f"checkpoint {path}: its other contents (data, step, history) do not match its recorded "
                        f"{algorithm}: the file was changed or damaged after it was written")
    return len(found)


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that a crash at any moment leaves the old file or the new one
    whole; a dict gets its ``integrity`` record first. A full disk (or a file-size limit) leaves the
    previous file intact and raises :class:`DiskFullError` saying how much was needed and where."""
    if isinstance(obj, dict):
        obj = {**obj, "integrity": digests(obj)}
    try:
        return atomic_write(path, lambda file: torch.save(obj, file))
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        need = sum(t.numel() * t.element_size() for _, t in tensors_of(obj)) / 2 ** 20
        raise DiskFullError(f"could not write checkpoint {path} ({error.strerror}): it needs about {need:,.0f} MB "
                            f"in {Path(path).parent}; the previous checkpoint there is intact. Free space, then "
                            f"continue with --resume") from None


_REQUIRED = {"model": dict, "config": dict, "step": int, "data": dict}


def load(path: str | Path, *, check: bool = True) -> dict[str, Any]:
    """Load a selfsup checkpoint on the CPU, with a clear error for a missing, foreign, damaged or
    hostile file.

    Only tensors, numbers, strings and containers are unpickled (``weights_only=True``): a file
    that asks to call anything else is refused, never run. With ``check`` the recorded digests are
    verified (:func:`verify`).

    Raises:
        FileNotFoundError: no such file.
        DataError: anything else that is wrong with the file, naming it.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"checkpoint {path} is a folder; give the checkpoint file (<run>/checkpoints/last.ckpt)")
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
    except MemoryError:
        raise DataError(f"checkpoint {path} could not be read: it asks for more memory than there is "
                        f"(a damaged or foreign file?)") from None
    except Exception as error:  # noqa: BLE001 - any parse failure of a file a user gave is a data error
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise DataError(f"checkpoint {path} could not be read ({type(error).__name__}{': ' + first if first else ''}); "
                        "is it a complete selfsup checkpoint?") from None
    if not isinstance(state, dict):
        raise DataError(f"checkpoint {path} is not a selfsup checkpoint: it holds a {type(state).__name__}, "
                        f"not a dict of model, config, step and data")
    missing = sorted(set(_REQUIRED) - set(state))
    if missing:
        raise DataError(f"checkpoint {path} is not a selfsup checkpoint: missing keys {missing}")
    for key, kind in _REQUIRED.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise DataError(f"checkpoint {path}: {key!r} must be a {kind.__name__}, got {type(state[key]).__name__}")
    if check:
        verify(state, path)
    return state
