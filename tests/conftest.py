"""Fixtures shared by several test files, and the ``vision`` marker."""

import importlib.util
import os
import signal
import time

import pytest

VISION = all(importlib.util.find_spec(name) is not None for name in ("torchvision", "timm"))
"""Whether torchvision and timm are installed: not in CI's lower-bound environment (torch 2.13's CPU
build, beside which the registries' torchvision does not import), where ``vision`` tests skip."""


def pytest_collection_modifyitems(config, items):
    if VISION:
        return
    skip = pytest.mark.skip(reason="needs torchvision and timm, absent in the lower-bound torch environment")
    for item in items:
        if "vision" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def restore_umask():
    """Put the process umask back after a test that sets its own."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def kill_after_checkpoint():
    """``kill(run, ckpt)``: wait until the running subprocess ``run`` has written ``ckpt``, then SIGKILL
    it, its whole process group when it leads one (DataLoader workers included)."""

    def kill(run, ckpt, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not ckpt.exists() and time.time() < deadline and run.poll() is None:
            time.sleep(0.05)
        assert run.poll() is None, "the run finished before it could be killed"
        if os.getpgid(run.pid) == run.pid:
            os.killpg(run.pid, signal.SIGKILL)
        else:
            run.send_signal(signal.SIGKILL)
        run.wait()

    return kill
