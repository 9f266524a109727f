"""Fixtures shared by several test files."""

import os
import signal
import time

import pytest


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
