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

With ``fused_draws`` the kernel draws the parameters too (``_triton_kernel._draw``: Philox seeded by
one draw of the run's RNG per view, from the distributions ``_plan_view`` draws from), one launch per
view in all; the same distributions, not the same draws.

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
def _module(interpret: bool):
    """The kernel module, loaded once per mode: Triton picks its interpreter when ``triton.jit`` runs, at
    import, so the interpreted kernels (and the copy of ``triton.language.random`` they draw with) are
    module objects of their own."""
    if not interpret:
        from selfsup.augment import _triton_kernel

        return _triton_kernel
    import importlib.util

    import triton.language

    def fresh(name: str, path: str, package: str, **extra):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = package
        module.__dict__.update(extra)
        spec.loader.exec_module(module)
        return module

    random = fresh("triton.language._random_interpreted", os.path.join(os.path.dirname(triton.language.__file__),
                                                                       "random.py"), "triton.language")
    return fresh("selfsup.augment._triton_kernel_interpreted", os.path.join(os.path.dirname(__file__),
                 "_triton_kernel.py"), "selfsup.augment", _INTERPRETED_RAND=random.rand)


def _draw_arguments(view, channels: int, height: int, width: int) -> tuple[list[float], dict]:
    """The scalar arguments and constexprs of the kernels' ``_draw`` for a :class:`~selfsup.augment.View`:
    the distributions ``runner._plan_view`` draws from."""
    import math

    random_crop = view.scale is not None
    scale_lo, scale_hi = view.scale if random_crop else (1.0, 1.0)
    ratio_lo, ratio_hi = view.ratio
    aspect = width / height  # torchvision's central fallback crop, clamped to the ratio range
    if aspect < ratio_lo:
        fallback = (round(width / ratio_lo), width)
    elif aspect > ratio_hi:
        fallback = (height, round(height * ratio_hi))
    else:
        fallback = (height, width)
    b, c, sat, hue = view.jitter
    scalars = [scale_lo, scale_hi, math.log(ratio_lo), math.log(ratio_hi), float(fallback[0]), float(fallback[1]),
               view.flip_p, float(view.pad), max(0.0, 1 - b), 1 + b, max(0.0, 1 - c), 1 + c, max(0.0, 1 - sat), 1 + sat,
               -hue, hue, view.jitter_p, view.gray_p, view.blur_p, *view.blur_sigma, view.solarize_p]
    return scalars, dict(RANDOM_CROP=random_crop, SHIFT=not random_crop and view.pad > 0, C=channels)


def draw_parameters(seed: Tensor, view, channels: int, height: int, width: int, batch: int) -> Tensor:
    """The parameters the fused kernel draws with ``seed`` for ``batch`` images (``fused_draws``), as a
    ``(batch, 16)`` float tensor: top, left, height, width, flip, the four jitter factors, the slots of
    brightness, contrast and saturation, the hue rotation's position (-1: no jitter), gray, sigma,
    solarize. For tests and inspection; a run never needs them."""
    scalars, constants = _draw_arguments(view, channels, height, width)
    record = torch.empty(batch, 16, device=seed.device)
    block = 256
    _module(interpreted()).draw_kernel[(-(-batch // block),)](seed, record, batch, height, width, *scalars,
                                                                  BLOCK=block, **constants)
    return record


def plan_from_draws(record: Tensor, view, channels: int):
    """The runner plan (``runner._ViewPlan``) of the parameters the kernel drew, as :func:`draw_parameters`
    records them: what the other paths would need to make the same views (``benchmarks/fused_check.py``)."""
    from selfsup.augment.runner import _ViewPlan

    n = record.shape[0]
    factors, slots, position = record[:, 5:9], record[:, 9:12].long(), record[:, 12].long()
    steps = torch.zeros(n, 3 if channels == 3 else 2, 3, device=record.device)
    for op in range(3 if channels == 3 else 2):
        f = factors[:, op]
        steps[torch.arange(n, device=record.device), slots[:, op]] = torch.stack(
            (f, (1 - f) * (op == 2), (1 - f) * (op == 1)), dim=1)
    whole = tuple(record[0, 2:4].long().tolist()) if n else tuple(view.size)  # the image's size, where not cropped
    crop = view.scale is not None or view.pad > 0 or view.flip_p > 0 or whole != tuple(view.size)
    jitter = view.jitter_p > 0
    return _ViewPlan(
        record[:, :4].round().long() if crop else None, record[:, 4] > 0.5 if crop else None,
        steps if jitter else None, factors[:, 3] if jitter and channels == 3 else None,
        torch.where(position >= 0, position + 1, 0) if jitter else None,
        record[:, 13] > 0.5 if view.gray_p > 0 and channels == 3 else None,
        record[:, 14] if view.blur_p > 0 else None, record[:, 15] > 0.5 if view.solarize_p > 0 else None)


def run_view(x: Tensor, view, plan=None, seed: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The view of ``x`` (``(B, C, H, W)`` uint8 or float in [0, 1]) in one kernel launch, the crop's
    interpolation weights and the blur's taps made in the kernel.

    With a drawn ``plan`` (runner's ``_ViewPlan``), the view ``runner._run_view`` makes from it, with
    its final clamp. With ``seed`` instead (a one-element int64 tensor on the device), the kernel draws
    every parameter itself from the view's distributions (:func:`draw_parameters`) and also returns
    each image's crop box and flip ``(B, 5)`` (None when the view has no box). Needs :func:`available`
    and :func:`fits`.
    """
    from selfsup.augment.blur import blur_kernel_size

    batch, channels, height, width = x.shape
    out_h, out_w = view.size
    if not fits(height, width, view.size):
        raise ValueError(f"fused views hold images up to {MAX_SIDE} pixels a side, got {height}x{width} -> {view.size}")
    if (plan is None) == (seed is None):
        raise ValueError("run_view takes a drawn plan or a seed to draw with, one of them")
    hp, wp, ohp, owp = _padded(height), _padded(width), _padded(out_h), _padded(out_w)
    device = x.device
    empty = torch.zeros(1, device=device)
    scalars, constants = _draw_arguments(view, channels, height, width)
    record = None
    if plan is None:  # the kernel draws: which steps there are follows from the view, as in _plan_view
        crop = view.scale is not None or view.pad > 0 or view.flip_p > 0 or (height, width) != view.size
        jitter, gray, blur, solarize = view.jitter_p > 0, view.gray_p > 0 and channels == 3, view.blur_p > 0, view.solarize_p > 0
        boxes = steps = hue = position = flags = sigma = empty
        record = torch.empty(batch, 5, device=device) if crop else None
    else:
        crop = plan.boxes is not None
        if not crop and (height, width) != (out_h, out_w):
            raise ValueError(f"a view without crop boxes keeps the image's size, got {height}x{width} -> {view.size}")
        boxes = plan.boxes.float().contiguous() if crop else empty
        jitter = plan.steps is not None and plan.group is not None
        steps = plan.steps.float().contiguous() if jitter else empty
        hue = plan.hue.float().contiguous() if jitter and plan.hue is not None else empty
        position = (plan.group - 1).to(torch.int32).contiguous() if jitter else empty
        flags = torch.zeros(batch, dtype=torch.int32, device=device)  # 1 gray, 2 solarize, 4 mirror
        for bit, drawn in ((1, plan.gray), (2, plan.solarize), (4, plan.flip)):
            if drawn is not None:
                flags |= drawn.to(torch.int32) * bit
        gray, blur, solarize = plan.gray is not None, plan.sigma is not None, plan.solarize is not None
        sigma = plan.sigma.float().contiguous() if blur else empty
    source = x.contiguous()
    scale = 1.0 / 255.0 if source.dtype == torch.uint8 else 1.0
    out = torch.empty(batch, channels, out_h, out_w, device=device, dtype=torch.float32)
    _module(interpreted()).view_kernel[(batch,)](
        source, boxes, sigma, steps, hue, position, flags, out, height, width, out_h, out_w, scale,
        float(out_h * out_w), empty if seed is None else seed, empty if record is None else record, *scalars,
        S=3 if channels == 3 else 2, HP=hp, WP=wp, OHP=ohp, OWP=owp, CROP=crop, JITTER=jitter, GRAY=gray, BLUR=blur,
        SOLARIZE=solarize, KY=blur_kernel_size(out_h), KX=blur_kernel_size(out_w), DRAW=seed is not None,
        num_warps=4 if max(hp, wp, ohp, owp) <= 32 else 8, **constants)  # 64-pixel tiles: more threads to hold them
    return out, record
