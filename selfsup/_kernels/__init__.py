"""Small fused CPU kernels in plain C, compiled on first use with the system C compiler.

Why: the colour jitter of a 3-channel view is about 60 elementwise passes in eager torch (the
exact HSV hue rotation alone is about 45), each a trip through memory over the whole chunk. In C
the image stays in L1 cache through every step and the pixel loops vectorise: jitter + grayscale
of 512 3x32x32 images take 1.2 ms instead of about 15 ms (grouped torch ops), and the whole SimCLR
recipe runs 1.5x faster on the CPU (``benchmarks/augment.py``). No torch headers are used, so compiling
takes about a second; the shared object is cached under ``~/.cache/selfsup/kernels`` (or
``$SELFSUP_CACHE/kernels``), keyed by the source, the compiler and the CPU, and written atomically
so that DDP ranks may race. Whoever can write that folder chooses the code selfsup loads, so it is
created private (mode 0o700), and a cache folder or library that is not the user's own, or that
group or others can write, is refused. The compiler is ``$CC`` (a command line, e.g. ``ccache gcc``)
or the first of cc, gcc and clang, stopped after ``_COMPILE_TIMEOUT_S``. Where no compiler works,
the cache is refused, or ``SELFSUP_KERNELS=0``, :func:`view` returns False (with a warning naming
the reason) and callers keep the eager torch path, which computes the same values (tested to 1e-6).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("color.c")
# -ffinite-math-only and -fno-signed-zeros let gcc vectorise fminf/fmaxf (inputs are finite by
# contract); -ffp-contract=off keeps a * b + c unfused, as torch computes it.
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffinite-math-only", "-fno-signed-zeros",
          "-ffp-contract=off", "-shared", "-fPIC"]
# Compiling takes about a second; a compiler that hangs (a stuck network file system, a wrapper
# waiting for a licence) must not hang the first training step with it.
_COMPILE_TIMEOUT_S = 120.0
_library: ctypes.CDLL | None = None
_failed = False


def _cache_dir() -> Path:
    root = os.environ.get("SELFSUP_CACHE")
    return Path(root) / "kernels" if root else Path.home() / ".cache" / "selfsup" / "kernels"


def _cpu_fingerprint() -> str:
    """The CPU's feature flags: a library built with -march=native must not move to another CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: the processor name is the best key there is
        lines = []
    flags = [line for line in lines if line.startswith(("flags", "Features"))]
    return flags[0] if flags else platform.processor() or platform.machine()


def _compiler() -> list[str]:
    command = shlex.split(os.environ.get("CC", ""))  # a command line, as make reads CC: "ccache gcc"
    if command:
        return command
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if found is None:
        raise RuntimeError("no C compiler found (cc, gcc or clang)")
    return [found]


def _run(compiler: list[str], args: list[str]) -> str:
    """The output of ``compiler`` run with ``args``; stopped, children too, after ``_COMPILE_TIMEOUT_S``."""
    # A session of its own, so that the timeout can kill the whole group: a compiler driver's
    # children (gcc's cc1) would otherwise keep the output pipes open and the wait going.
    with subprocess.Popen([*compiler, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=_COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            if hasattr(os, "killpg"):
                os.killpg(process.pid, signal.SIGKILL)
            else:  # Windows: no process groups
                process.kill()
            process.communicate()
            raise RuntimeError(f"{shlex.join(compiler)} did not finish within the timeout of "
                               f"{_COMPILE_TIMEOUT_S:g} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"{shlex.join(compiler)} failed: {stderr.strip()[-500:]}")
    return stdout


def _check_private(path: Path) -> None:
    """Raise unless only this user can change ``path``: whoever can, chooses the code selfsup loads."""
    if not hasattr(os, "getuid"):  # Windows: no POSIX owner and mode bits to check
        return
    info = path.stat()
    if info.st_uid != os.getuid():
        raise RuntimeError(f"kernel cache {path} is owned by uid {info.st_uid}, not by you (uid {os.getuid()}); "
                           "set SELFSUP_CACHE to a folder of your own")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise RuntimeError(f"kernel cache {path} has mode {mode:#o}: group or others could replace the code "
                           f"selfsup loads; run `chmod go-w {path}` or set SELFSUP_CACHE to a private folder")


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    version = _run(compiler, ["--version"])
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(_FLAGS).encode(),
                                     _cpu_fingerprint().encode()])).hexdigest()[:16]
    folder = _cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder)
    target = folder / f"color-{key}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            built = Path(tmp) / target.name
            _run(compiler, [*_FLAGS, str(_SOURCE), "-o", str(built), "-lm"])
            # The linker gives 0o777 less the umask; under a umask of 0o002 that is group-writable,
            # which the check below would rightly refuse.
            built.chmod(stat.S_IMODE(built.stat().st_mode) & ~0o022)
            os.replace(built, target)  # atomic: a concurrent rank sees the old state or the whole file
    _check_private(target)
    library = ctypes.CDLL(str(target))
    library.selfsup_color.restype = None
    library.selfsup_color.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    library.selfsup_view.restype = None
    library.selfsup_view.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 4,
                                     *[ctypes.c_void_p] * 5, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]
    return library


def _load() -> ctypes.CDLL | None:
    global _library, _failed
    if _library is None and not _failed:
        if os.environ.get("SELFSUP_KERNELS", "1") == "0":
            _failed = True
            return None
        try:
            _library = _build()
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _failed = True
            warnings.warn(f"selfsup: fused CPU colour kernel unavailable, using the torch path ({error})",
                          RuntimeWarning, stacklevel=3)
    return _library


def available() -> bool:
    """True when the compiled colour kernel can be used in this process."""
    return _load() is not None


def _checked(name: str, tensor: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    tensor = tensor.to(dtype).contiguous()
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    return tensor


def view(x: Tensor, out: Tensor, steps: Tensor, hue: Tensor, hue_position: Tensor, gray: Tensor,
         taps_y: Tensor, taps_x: Tensor, blur: Tensor, solarize: Tensor, threshold: float = 0.5) -> bool:
    """The colour part of a view, after the crop, written into ``out``: per sample, colour jitter,
    grayscale, Gaussian blur (reflect padding, separable taps) and solarize, as the torch path.

    Args:
        x: ``(n, 3, H, W)`` float32 CPU images (the cropped batch).
        out: ``(n, 3, H, W)`` contiguous float32 CPU tensor, not overlapping ``x``; receives the result.
        steps: ``(n, 3, 3)`` blend coefficients ``(a, b, c)`` of the three non-hue jitter steps, in
            order (see ``selfsup.augment._jitter_plan``).
        hue: ``(n,)`` hue rotation in turns.
        hue_position: ``(n,)`` int64: -1 where the jitter is skipped, else how many blend steps
            come before the hue rotation.
        gray: ``(n,)`` bool, True where the image becomes grayscale after the jitter.
        taps_y, taps_x: ``(n, ky)`` and ``(n, kx)`` normalised Gaussian taps (odd ky, kx).
        blur: ``(n,)`` bool, True where the image is blurred.
        solarize: ``(n,)`` bool, True where pixels >= ``threshold`` become ``1 - x``.

    Returns:
        False (``out`` untouched) when the kernel is unavailable.
    """
    library = _load()
    if library is None:
        return False
    n, channels, height, width = x.shape
    if channels != 3 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"view expects (n, 3, H, W) float32 CPU images, got {tuple(x.shape)} {x.dtype} {x.device}")
    if out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {tuple(x.shape)} float32 tensor, got {tuple(out.shape)}")
    ky, kx = taps_y.shape[-1], taps_x.shape[-1]
    if ky % 2 == 0 or kx % 2 == 0 or ky // 2 >= height or kx // 2 >= width:
        raise ValueError(f"blur taps must be odd and shorter than twice the image side, got {ky} x {kx} "
                         f"for {height} x {width}")
    x = x.contiguous()
    args = [_checked("steps", steps, (n, 3, 3), torch.float32), _checked("hue", hue, (n,), torch.float32),
            _checked("hue_position", hue_position, (n,), torch.int64), _checked("gray", gray, (n,), torch.uint8),
            _checked("taps_y", taps_y, (n, ky), torch.float32), _checked("taps_x", taps_x, (n, kx), torch.float32),
            _checked("blur", blur, (n,), torch.uint8), _checked("solarize", solarize, (n,), torch.uint8)]
    scratch = torch.empty(height * width + width + kx, dtype=torch.float32)  # the C code's type, whatever the default
    steps, hue, hue_position, gray, taps_y, taps_x, blur, solarize = args
    library.selfsup_view(x.data_ptr(), out.data_ptr(), n, channels, height, width, steps.data_ptr(),
                         hue.data_ptr(), hue_position.data_ptr(), gray.data_ptr(), taps_y.data_ptr(), ky,
                         taps_x.data_ptr(), kx, blur.data_ptr(), solarize.data_ptr(), threshold,
                         scratch.data_ptr())
    return True
