"""Small fused CPU kernels in plain C, compiled on first use with the system C compiler.

Why: the colour jitter of a 3-channel view is about 60 elementwise passes in eager torch (the
exact HSV hue rotation alone is about 45), each a trip through memory over the whole chunk. In C
the image stays in L1 cache through every step and the pixel loops vectorise: jitter + grayscale
of 512 3x32x32 images take 1.2 ms instead of about 15 ms (grouped torch ops), and the whole SimCLR
recipe runs 1.5x faster on the CPU (``benchmarks/augment.py``). No torch headers are used, so compiling
takes about a second; the shared object is cached under ``~/.cache/selfsup/kernels`` (or
``$SELFSUP_CACHE``), keyed by the source, the compiler and the CPU, and written atomically so that
DDP ranks may race. Where no compiler works, or ``SELFSUP_KERNELS=0``, :func:`view` returns False
and callers keep the eager torch path, which computes the same values (tested to 1e-6).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
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


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler found (cc, gcc or clang)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(_FLAGS).encode(),
                                     _cpu_fingerprint().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"color-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", str(built), "-lm"],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{compiler} failed on {_SOURCE}: {result.stderr.strip()[-500:]}")
            os.replace(built, target)  # atomic: a concurrent rank sees the old state or the whole file
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
    scratch = torch.empty(height * width + width + kx)
    steps, hue, hue_position, gray, taps_y, taps_x, blur, solarize = args
    library.selfsup_view(x.data_ptr(), out.data_ptr(), n, channels, height, width, steps.data_ptr(),
                         hue.data_ptr(), hue_position.data_ptr(), gray.data_ptr(), taps_y.data_ptr(), ky,
                         taps_x.data_ptr(), kx, blur.data_ptr(), solarize.data_ptr(), threshold,
                         scratch.data_ptr())
    return True
