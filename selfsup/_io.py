"""Atomic file writes and tensor bytes, shared by checkpoints (engine), floors and evaluation outputs;
imports nothing from selfsup."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary sibling, then rename it into place.

    A crash or an exception at any moment leaves the earlier file at ``path`` (if any) or the new
    one whole, never a mix, and no temporary behind after an exception. The file gets the mode a
    plainly created file would (``0o666`` less the umask), and both the file and its folder are
    fsynced, so the rename itself survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # os.open with 0o666 lets the kernel apply the umask (and any default ACL) as for any new file;
    # tempfile.mkstemp would force 0o600, and reading the umask means changing it process-wide.
    # O_EXCL: a concurrent writer of the same path never shares the temporary.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable: on POSIX the new name lives in the folder's own data."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows: a folder cannot be opened to fsync it
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (on the CPU, contiguous, any dtype, 0-d too), for digests: a view,
    not a copy, of a CPU tensor's memory."""
    return memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
