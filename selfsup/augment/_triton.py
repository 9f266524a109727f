"""A view's pixels in one Triton kernel (``train.fused_views``): crop, resize and flip, colour
jitter, grayscale, blur, solarize and the final clamp, one program per image.

On a GPU the eager masked path (``runner._run_view``) launches some 150 small kernels per view, and
at 3x32x32 a view is launch-bound (issue 21: 126,000 views/s on an H200). Here every linear step is a
small matrix product on the image, held whole by its program: the crop is ``R @ X @ C^T`` with the
interpolation weights of :func:`~selfsup.augment.geometry._crop_matrices` (mirroring folded in), the
blur ``B_y @ Y @ B_x^T`` with the separable taps and reflect padding folded into ``(size, size)``
matrices (the identity where a sample is not blurred), both made in the kernel from the plan's boxes
and sigmas, so a view is one launch besides the plan's draws; the jitter's blends, hue rotation, grayscale and
solarize are the reference's arithmetic element by element, in each sample's own order. The per-sample
parameters are the plan the other paths draw (``runner._plan_view``), so the views equal the
reference's to float rounding (the order of the sums differs; tests: 1e-5), and a resumed run draws
what an uninterrupted one did. The products run in full float32 (``input_precision="ieee"``), not
TF32, which would move pixels by 1e-3.

Images up to 64 pixels a side (padded to powers of two) fit a program; larger ones keep the other
paths. Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set before the
kernel is first built), which is how the tests check it on a CPU.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor


MAX_SIDE = 64
"""The largest image side (input and view) a program holds."""


@functools.cache
def available() -> bool:
    """Whether Triton can be imported (it comes with torch's CUDA wheels on Linux)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # an import of a broken install fails in many ways; any of them means no
        return False
    return True


def interpreted() -> bool:
    """Whether kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _padded(side: int) -> int:
    """The power of two >= max(side, 16) a program's tiles have (``tl.dot`` needs 16 or more)."""
    return max(16, 1 << (side - 1).bit_length())


def fits(height: int, width: int, size: tuple[int, int]) -> bool:
    """Whether images of ``height x width`` and their views of ``size`` fit one program."""
    return max(height, width, *size) <= MAX_SIDE


def usable(x: Tensor, view) -> bool:
    """Whether :func:`run_view` takes this batch and view: Triton is there, the batch is on a CUDA
    GPU (or the interpreter is on), and the image and view fit a program."""
    return available() and (x.is_cuda or interpreted()) and fits(x.shape[2], x.shape[3], view.size)


@functools.cache
def _kernel(interpret: bool):
    """The kernel, loaded once per mode: Triton picks its interpreter when ``triton.jit`` runs, at the
    kernel module's import, so the interpreted one is a module object of its own."""
    if not interpret:
        from selfsup.augment._triton_kernel import view_kernel

        return view_kernel
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "_triton_kernel.py")
    spec = importlib.util.spec_from_file_location("selfsup.augment._triton_kernel_interpreted", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.view_kernel


def run_view(x: Tensor, view, plan) -> Tensor:
    """The view of ``x`` (``(B, C, H, W)`` uint8 or float in [0, 1]) for a drawn ``plan`` (runner's
    ``_ViewPlan``), as ``runner._run_view`` makes it with its final clamp, in one kernel launch (the
    crop's interpolation weights and the blur's taps are made in the kernel from the plan's boxes and
    sigmas). Needs :func:`available` and :func:`fits`."""
    from selfsup.augment.blur import blur_kernel_size

    batch, channels, height, width = x.shape
    out_h, out_w = view.size
    if not fits(height, width, view.size):
        raise ValueError(f"fused views hold images up to {MAX_SIDE} pixels a side, got {height}x{width} -> {view.size}")
    hp, wp, ohp, owp = _padded(height), _padded(width), _padded(out_h), _padded(out_w)
    device = x.device
    empty = torch.zeros(1, device=device)
    crop = plan.boxes is not None
    if not crop and (height, width) != (out_h, out_w):
        raise ValueError(f"a view without crop boxes keeps the image's size, got {height}x{width} -> {view.size}")
    boxes = plan.boxes.float().contiguous() if crop else empty
    jitter = plan.steps is not None and plan.group is not None
    steps = plan.steps.float().contiguous() if jitter else empty
    hue = plan.hue.float().contiguous() if jitter and plan.hue is not None else torch.zeros(batch, device=device)
    position = (plan.group - 1).to(torch.int32).contiguous() if jitter else empty
    flags = torch.zeros(batch, dtype=torch.int32, device=device)  # 1 gray, 2 solarize, 4 mirror
    for bit, drawn in ((1, plan.gray), (2, plan.solarize), (4, plan.flip)):
        if drawn is not None:
            flags |= drawn.to(torch.int32) * bit
    blur = plan.sigma is not None
    sigma = plan.sigma.float().contiguous() if blur else empty
    source = x.contiguous()
    scale = 1.0 / 255.0 if source.dtype == torch.uint8 else 1.0
    out = torch.empty(batch, channels, out_h, out_w, device=device, dtype=torch.float32)
    _kernel(interpreted())[(batch,)](
        source, boxes, sigma, steps, hue, position, flags, out, height, width, out_h, out_w, scale,
        float(out_h * out_w),
        C=channels, S=steps.shape[1] if jitter else 1, HP=hp, WP=wp, OHP=ohp, OWP=owp, CROP=crop, JITTER=jitter,
        GRAY=plan.gray is not None, BLUR=blur, SOLARIZE=plan.solarize is not None,
        KY=blur_kernel_size(out_h), KX=blur_kernel_size(out_w),
        num_warps=4 if max(hp, wp, ohp, owp) <= 32 else 8)  # 64-pixel tiles: more threads to hold them
    return out
