"""selfsup._kernels: building the fused colour kernel safely (compiler, timeout, private cache, dtypes).

The numerical agreement of the kernel with the torch path is tested in tests/test_augment.py.
"""

import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from selfsup import _kernels


def _system_compiler() -> str:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler")
    return compiler


def _forget_library(monkeypatch):
    monkeypatch.setattr(_kernels, "_library", None)
    monkeypatch.setattr(_kernels, "_failed", False)


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """An empty kernel cache and a module that has not loaded (or given up on) its library yet."""
    _forget_library(monkeypatch)
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SELFSUP_KERNELS", raising=False)
    return tmp_path / "cache" / "kernels"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


_CHILD = textwrap.dedent("""
    import sys, torch
    from selfsup import _kernels
    inputs = torch.load(sys.argv[1], weights_only=True)
    torch.set_default_dtype(getattr(torch, sys.argv[2]))
    for _ in range(50):
        out = torch.empty_like(inputs["x"])
        assert _kernels.view(inputs["x"], out, *inputs["args"], 0.5)
        heap_traffic = [torch.empty(100, dtype=torch.uint8) for _ in range(100)]  # trips over a corrupted heap
    torch.save(out, sys.argv[3])
""")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_kernel_is_right_when_the_default_dtype_is_half_precision(tmp_path, dtype):
    # The kernel writes float32 scratch; a buffer sized in a 2-byte default dtype overflowed the
    # heap. A child process, so that the crash this causes fails the test instead of ending the run.
    if not _kernels.available():
        pytest.skip("no C compiler: the fused kernel is unavailable")
    n, size, k = 8, 64, 9
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    on = torch.ones(n, dtype=torch.bool)
    taps = torch.full((n, k), 1 / k, dtype=torch.float32)
    no_jitter = (torch.zeros(n, 3, 3, dtype=torch.float32), torch.zeros(n, dtype=torch.float32),
                 torch.full((n,), -1, dtype=torch.int64))
    torch.save({"x": x, "args": [*no_jitter, on, taps, taps, on, on]}, tmp_path / "inputs.pt")
    child = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "inputs.pt"), dtype, str(tmp_path / "out.pt")],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    # grayscale, then a k x k box blur (uniform taps) with reflect padding, then solarize, in torch
    gray = TF.rgb_to_grayscale(x, num_output_channels=3)
    box = torch.full((3, 1, k, k), 1 / k**2, dtype=torch.float32)
    blurred = F.conv2d(F.pad(gray, (k // 2,) * 4, mode="reflect"), box, groups=3)
    expected = TF.solarize(blurred, 0.5)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), expected, atol=1e-5, rtol=0)


def test_a_hanging_compiler_is_stopped_and_the_torch_path_used(fresh_cache, monkeypatch, tmp_path):
    compiler = tmp_path / "slow-cc"
    # sleep runs as a child of the shell: the timeout must stop the compiler's children as well.
    compiler.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "slow-cc 1.0"; exit 0; fi\nsleep 60\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setattr(_kernels, "_COMPILE_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match=rf"{re.escape(str(compiler))} .*0\.5 s"):
        assert not _kernels.available()
    assert time.monotonic() - start < 20


def test_cc_with_arguments_builds_the_real_kernel(fresh_cache, monkeypatch):
    # CC is a command line, as make reads it: "ccache gcc", "env gcc".
    monkeypatch.setenv("CC", f"env {_system_compiler()}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _kernels.available()
    assert [path.suffix for path in fresh_cache.iterdir()] == [".so"]


def test_a_new_cache_is_private_and_reloads_under_a_group_writable_umask(fresh_cache, monkeypatch, restore_umask):
    _system_compiler()
    os.umask(0o002)
    assert _kernels.available()
    assert _mode(fresh_cache) == 0o700
    (library,) = fresh_cache.iterdir()
    assert _mode(library) & 0o022 == 0
    _forget_library(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _kernels.available()


def test_a_cache_folder_others_can_write_is_refused(fresh_cache):
    _system_compiler()
    fresh_cache.mkdir(parents=True)
    fresh_cache.chmod(0o777)
    name = re.escape(str(fresh_cache))
    with pytest.warns(RuntimeWarning, match=rf"{name} has mode 0o777.*chmod go-w {name}"):
        assert not _kernels.available()
    assert list(fresh_cache.iterdir()) == []  # nothing built into it either


def test_a_cached_library_others_can_write_is_refused(fresh_cache, monkeypatch):
    _system_compiler()
    assert _kernels.available()
    (library,) = fresh_cache.iterdir()
    library.chmod(0o666)
    _forget_library(monkeypatch)
    name = re.escape(str(library))
    with pytest.warns(RuntimeWarning, match=rf"{name} has mode 0o666.*chmod go-w {name}"):
        assert not _kernels.available()


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="giving a folder away needs root")
def test_a_cache_folder_of_another_user_is_refused(fresh_cache):
    _system_compiler()
    fresh_cache.mkdir(parents=True, mode=0o700)
    os.chown(fresh_cache, os.getuid() + 1, -1)
    name = re.escape(str(fresh_cache))
    with pytest.warns(RuntimeWarning, match=rf"{name} is owned by uid {os.getuid() + 1}.*SELFSUP_CACHE"):
        assert not _kernels.available()
