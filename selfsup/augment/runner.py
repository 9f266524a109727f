"""The view runner: a :class:`View` recipe, its per-sample plan, and the paths that make it.

``_run_view`` (every step masked per sample, no synchronisation) is the
reference; the CPU paths ``_run_view_grouped`` and ``_run_view_fused`` and the
compiled path ``_run_view_compiled`` are tested against it.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from selfsup import _kernels
from selfsup.augment import _triton
from selfsup.augment._common import (_bernoulli, _check_p, _check_range, _gray, _pair, _randint, full_float32_products,
                                     to_float)
from selfsup.augment.blur import _blur_taps, _draw_sigmas, _separable_blur, blur_kernel_size
from selfsup.augment.colour import (
    _blend,
    _grouped_jitter,
    _jitter_plan,
    _masked_jitter,
    _solarize,
    _solarized,
    sample_jitter,
)
from selfsup.augment.geometry import _crop_matrices, _resample, sample_crop_boxes


@dataclass(frozen=True)
class View:
    """How one view is made; :func:`augment_view` applies it.

    Steps, in the order of the papers' torchvision pipelines: random resized
    crop (``scale`` None: resize the whole image) with horizontal flip, colour
    jitter with probability ``jitter_p``, grayscale, Gaussian blur, solarize.

    Attributes:
        size: output ``(height, width)``.
        scale: crop area range, or None for the whole image.
        ratio: crop aspect-ratio range.
        flip_p: horizontal flip probability.
        jitter: brightness, contrast, saturation, hue strengths.
        jitter_p: probability of applying the colour jitter.
        gray_p: grayscale probability.
        blur_p: Gaussian blur probability.
        blur_sigma: sigma range of the blur.
        solarize_p: solarize probability (threshold 0.5).
        pad: with ``scale`` None, shift the whole image by a whole number of pixels drawn uniformly in
            ``[-pad, pad]`` down and across, the uncovered border black: torchvision's
            ``RandomCrop(size, padding=pad)`` (zero padding), the CIFAR loaders' translation (RotNet:
            4 pixels at 32). 0: no shift.
    """

    size: tuple[int, int]
    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    pad: int = 0

    def __post_init__(self) -> None:
        # Checked here, where a recipe's or a YAML override's value enters, so that a bad value
        # fails when the run is configured rather than at the first batch. Lists (from YAML)
        # become tuples so that views stay hashable and comparable.
        def put(name: str, value) -> None:
            object.__setattr__(self, name, value)

        put("size", _pair(self.size, "size"))
        if self.scale is not None:
            put("scale", _check_range(self.scale, "scale"))
            if not 0 < self.scale[1] <= 1:
                raise ValueError(f"scale is a fraction of the image area, (min, max) in (0, 1], got {self.scale!r}")
        put("ratio", _check_range(self.ratio, "ratio"))
        if self.ratio[0] <= 0:
            raise ValueError(f"ratio must be a positive (min, max) range, got {self.ratio!r}")
        jitter = tuple(float(v) for v in self.jitter)
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError("jitter must be 4 strengths [brightness, contrast, saturation, hue], each >= 0 and "
                             f"hue <= 0.5, got {self.jitter!r}")
        put("jitter", jitter)
        put("blur_sigma", _check_range(self.blur_sigma, "blur_sigma"))
        if self.blur_sigma[0] <= 0:
            raise ValueError(f"blur_sigma must be a positive (min, max) range, got {self.blur_sigma!r}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            put(name, _check_p(getattr(self, name), name))
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0:
            raise ValueError(f"pad must be a whole number of pixels >= 0, got {self.pad!r}")
        if self.pad and self.scale is not None:
            raise ValueError("pad shifts the whole image (scale: whole); a random resized crop already moves it")


def augment_view(xf: Tensor, view: View, generator: torch.Generator | None = None, *,
                 compiled: bool = False, fused: bool = False, fused_draws: bool = False) -> Tensor:
    """Make one augmented view of a float batch, every parameter drawn per sample.

    Args:
        xf: ``(B, C, H, W)`` float32 batch in [0, 1] (see :func:`to_float`).
        view: the recipe of the view.
        generator: optional RNG.
        compiled: make the pixels with ``torch.compile`` of the reference arithmetic (one graph
            per view, batch shape and device; see ``_run_view_compiled``) instead of the eager
            paths, except for RGB on a CPU where the C kernel is built (the faster there). The
            parameters are drawn as without it, so the views are the same to float rounding (1e-5)
            and a resumed run draws what an uninterrupted one did.
        fused: on a CUDA GPU, make the pixels in one Triton kernel per view (:mod:`selfsup.augment._triton`:
            crop, jitter, grayscale, blur and solarize, one program per image) for images and views up
            to 64 pixels a side; the parameters are drawn as without it, the views the same to float
            rounding (1e-5). Elsewhere, or for larger images, the other paths (it takes precedence
            over ``compiled``).
        fused_draws: with ``fused``, the kernel also draws the parameters (Philox, seeded by one draw from
            ``generator``): one launch per view in all. The same distributions as the other paths
            (tested), not the same draws.

    Returns:
        ``(B, C, view.size[0], view.size[1])`` float32 in [0, 1].

    Examples:
        >>> augment_view(torch.rand(4, 3, 32, 32), View(size=(16, 16))).shape
        torch.Size([4, 3, 16, 16])
    """
    return _augment_view(xf, view, generator, compiled, fused, fused_draws)[0]


def _augment_view(xf: Tensor, view: View, generator: torch.Generator | None, compiled: bool, fused: bool = False,
                  fused_draws: bool = False, owned: bool = False) -> tuple[Tensor, _ViewPlan]:
    """:func:`augment_view` and the plan it drew (with ``fused_draws``, only its boxes and flips). ``owned``:
    ``xf`` is a conversion made for this call (not the caller's tensor), which a view without steps may return."""
    if fused and fused_draws and _triton.usable(xf, view):
        # One int64 seed from the run's RNG per view: the kernel's Philox draws follow from it, so a resumed
        # run (its RNG state restored) draws what an uninterrupted one did.
        seed = _randint(2**31 - 1, (1,), xf.device, generator)
        out, record = _triton.run_view(xf, view, seed=seed)
        empty = _ViewPlan(None, None, None, None, None, None, None, None)
        if record is None:
            return out, empty
        return out, empty._replace(boxes=record[:, :4].round().long(), flip=record[:, 4] > 0.5)
    plan = _plan_view(view, xf.shape, xf.device, generator)
    if fused and _triton.usable(xf, view):
        return _triton.run_view(xf, view, plan)[0], plan
    # RGB on the CPU: the fused C kernel where it could be built (1.5x the grouped path; 2.1x the
    # compiled one), else the grouped torch path, which skips the hue rotation and blur where a sample
    # has none (1.3-1.9x the masked path at one thread). One-channel views have only cheap blend
    # passes: there the masked path is 10-20% faster than grouping at 28x28, the kernel measured no
    # gain, and the compiled path is 1.3x the masked one. benchmarks/augment.py measures both shapes.
    rgb_cpu = xf.device.type == "cpu" and xf.shape[1] == 3
    with full_float32_products(xf.device):  # the crop's products in float32 on a GPU, not TF32
        if compiled and not (rgb_cpu and _kernels.available()):
            return _run_view_compiled(xf, view, plan), plan
        out = _run_view_fused(xf, view, plan) if rgb_cpu else None
        if out is None:
            out = _run_view_grouped(xf, view, plan) if rgb_cpu else _run_view(xf, view, plan)
    # Interpolation weights sum to 1 only up to rounding, so a saturated pixel can come out as
    # 1 + 1e-7; clamp so the promised range holds exactly (evaluation refuses values outside it).
    # A view without steps ("none", "eval" at the stored size) is xf itself: clamped in place only
    # where xf is a conversion of our own, never the caller's float32 batch.
    if out is xf and not owned:
        return out.clamp(0.0, 1.0), plan
    return out.clamp_(0.0, 1.0), plan


_CPU_CHUNK_BYTES = 1 << 21


class _ViewPlan(NamedTuple):
    """Per-sample parameters of one view, all with the batch as first dim."""

    boxes: Tensor | None  # (B, 4) crop boxes; None: keep the image
    flip: Tensor | None  # (B,) bool
    steps: Tensor | None  # (B, S, 3) jitter blends, see _jitter_plan
    hue: Tensor | None  # (B,) hue factors (3 channels only)
    group: Tensor | None  # (B,) int64 jitter group, see _jitter_plan
    gray: Tensor | None  # (B,) bool (3 channels only)
    sigma: Tensor | None  # (B,) blur sigma, 0 where not blurred
    solarize: Tensor | None  # (B,) bool


def _plan_view(
    view: View, shape: torch.Size, device: torch.device, generator: torch.Generator | None
) -> _ViewPlan:
    batch, channels, height, width = shape
    boxes = flip = None
    if view.scale is not None:
        boxes = sample_crop_boxes(batch, height, width, view.scale, view.ratio, generator=generator, device=device)
        flip = _bernoulli(batch, view.flip_p, device, generator)
    else:
        # The whole image, resized where the view's size differs and mirrored where drawn (the "flip"
        # recipe of the pretext tasks): its interpolation matrices are then exact identities or
        # exact mirrors, so an image that is neither resized nor flipped comes out bit for bit.
        if view.pad > 0:  # RandomCrop(padding=pad): the crop's corner in the padded image, as an offset
            shift = _randint(2 * view.pad + 1, (batch, 2), device, generator) - view.pad
            size = torch.tensor([[height, width]], device=device).expand(batch, 2)
            boxes = torch.cat([shift, size], dim=1)
        if view.flip_p > 0:
            flip = _bernoulli(batch, view.flip_p, device, generator)
        if boxes is None and (flip is not None or (height, width) != view.size):
            boxes = torch.tensor([[0, 0, height, width]], device=device).expand(batch, 4)
    steps = hue = group = gray = sigma = solarize = None
    if view.jitter_p > 0:
        params = sample_jitter(batch, *view.jitter, view.jitter_p, generator=generator, device=device)
        steps, hue, group = _jitter_plan(*params, colour=channels == 3)
    if view.gray_p > 0:
        # Not drawn for 1-channel images (the identity there): under one seed their crops and jitter
        # match an RGB batch's, every later draw (blur, solarize, the next view) does not.
        gray = _bernoulli(batch, view.gray_p, device, generator) if channels == 3 else None
    if view.blur_p > 0:
        sigma = _draw_sigmas(batch, view.blur_sigma, view.blur_p, device, generator)
    if view.solarize_p > 0:
        solarize = _bernoulli(batch, view.solarize_p, device, generator)
    return _ViewPlan(boxes, flip, steps, hue, group, gray, sigma, solarize)


def _run_view(xf: Tensor, view: View, plan: _ViewPlan) -> Tensor:
    """The view on the whole batch, every step masked per sample (no synchronisation)."""
    out = xf
    if plan.boxes is not None:
        out = _resample(xf, *_crop_matrices(plan.boxes, view.size, xf.shape[2], xf.shape[3], plan.flip))
    if plan.steps is not None and plan.group is not None:
        out = _masked_jitter(out, plan.steps, plan.hue, plan.group)
    if plan.gray is not None:
        keep = (~plan.gray).to(out.dtype).view(-1, 1, 1, 1)
        out = _blend(out, keep, 1.0 - keep, None)
    if plan.sigma is not None:
        out = _separable_blur(out, *_view_taps(plan.sigma, view))
    if plan.solarize is not None:
        out = _solarize(out, plan.solarize.to(out.dtype), 0.5)
    return out


def _view_taps(sigma: Tensor, view: View) -> tuple[Tensor, Tensor]:
    return _blur_taps(sigma, blur_kernel_size(view.size[0])), _blur_taps(sigma, blur_kernel_size(view.size[1]))


# A sample's key is 8 * jitter group + 4 * blurred + 2 * gray + solarized.
_KEYS = 5 * 8


def _chunk_rows(shape: torch.Size, view: View) -> int:
    """Samples per CPU chunk: about ``_CPU_CHUNK_BYTES`` of float32 in the larger of input and view."""
    _, channels, height, width = shape
    return max(1, _CPU_CHUNK_BYTES // (4 * channels * max(height * width, view.size[0] * view.size[1])))


def _run_view_grouped(xf: Tensor, view: View, plan: _ViewPlan) -> Tensor:
    """The view on the CPU: each step runs only on the samples it changes.

    The samples are sorted by what they need (jitter group, then blur, gray,
    solarize), so each step's samples are contiguous rows of the sorted batch:
    a jittered sample costs three blend passes and one hue rotation instead of
    six and one, a sample that is not blurred costs no blur, and so on. The
    sorted batch goes through in chunks of about ``_CPU_CHUNK_BYTES`` (2 MiB)
    per tensor, cut at jitter-group edges, so a chunk's temporaries stay in
    cache while the per-op overhead stays small: with the engine's malloc
    tuning (``selfsup.engine.allocator``) 2 MiB measured 1.1-1.2x faster than
    1 MiB and 512 KiB, and the whole batch at once (3x32x32 and 3x64x64) within
    noise of 2 MiB. Every sample gets exactly the arithmetic of ``_run_view``, whose
    identity passes are exact, so the output is the same bit for bit; the
    parameters are all drawn beforehand, so neither depends on the chunking.
    """
    batch, channels, height, width = xf.shape
    key = torch.zeros(batch, dtype=torch.int64)
    for flag, weight in ((plan.group, 8), (plan.sigma, 4), (plan.gray, 2), (plan.solarize, 1)):
        if flag is not None:
            key += (flag if flag.dtype == torch.int64 else (flag > 0).to(torch.int64)) * weight
    perm = torch.argsort(key, stable=True)
    edges = [0, *itertools.accumulate(torch.bincount(key, minlength=_KEYS).tolist())]
    plan = _ViewPlan(*(None if p is None else p[perm] for p in plan))

    def rows_where(bit: int) -> list[tuple[int, int]]:
        return [(edges[k], edges[k + 1]) for k in range(_KEYS) if k & bit and edges[k] < edges[k + 1]]

    blurred, grayed, solarized = rows_where(4), rows_where(2), rows_where(1)
    taps = None if plan.sigma is None else _view_taps(plan.sigma, view)
    # Per-sample tensors are built once for the sorted batch and sliced per chunk.
    crop = None if plan.boxes is None else _crop_matrices(plan.boxes, view.size, height, width, plan.flip)
    chunk = _chunk_rows(xf.shape, view)
    # Chunks are written in sorted order and the batch is put back in order with one row gather
    # at the end: index_select of whole rows runs at memcpy speed, while scattering each chunk
    # with index_put_ took about a quarter of the whole view (3x32x32, one thread).
    out = xf.new_empty(batch, channels, *view.size)
    for group in range(_KEYS // 8):
        first, last = edges[8 * group], edges[8 * group + 8]
        parts = -(-(last - first) // chunk)
        for part in range(parts):
            start = first + (last - first) * part // parts
            stop = first + (last - first) * (part + 1) // parts
            rows = slice(start, stop)
            work = xf.index_select(0, perm[rows])
            if crop is not None:
                work = _resample(work, crop[0][rows], crop[1][rows])
            if group > 0 and plan.steps is not None:
                work = _grouped_jitter(work, plan.steps[rows], None if plan.hue is None else plan.hue[rows], group - 1)
            for begin, end in _overlaps(grayed, start, stop):
                work[begin:end] = _gray(work[begin:end])
            if taps is not None:
                for begin, end in _overlaps(blurred, start, stop):
                    work[begin:end] = _separable_blur(
                        work[begin:end], taps[0][start + begin : start + end], taps[1][start + begin : start + end]
                    )
            for begin, end in _overlaps(solarized, start, stop):
                work[begin:end] = _solarized(work[begin:end], 0.5)
            out[rows] = work
    return out.index_select(0, torch.argsort(perm))


def _run_view_fused(xf: Tensor, view: View, plan: _ViewPlan) -> Tensor | None:
    """The view of an RGB batch on the CPU with the C kernel (``selfsup._kernels.view``).

    The crop runs as in the other paths (two ``bmm``), chunk by chunk in batch order so that its
    temporaries stay in cache; the kernel then takes each image of the chunk through its jitter (in
    its own order), grayscale, blur and solarize while the image sits in L1 cache, and writes it
    straight into the output. No sorting and no gathers; about 1.5x faster than the grouped torch
    path at 3x32x32. Returns None when the kernel is unavailable.
    """
    if not _kernels.available():
        return None
    batch, channels, height, width = xf.shape
    steps = xf.new_zeros(batch, 3, 3) if plan.steps is None else plan.steps
    hue = xf.new_zeros(batch) if plan.hue is None else plan.hue
    position = torch.full((batch,), -1) if plan.group is None else plan.group - 1
    off = torch.zeros(batch, dtype=torch.bool)
    gray = off if plan.gray is None else plan.gray
    blur = off if plan.sigma is None else plan.sigma > 0
    taps = (xf.new_ones(batch, 1), xf.new_ones(batch, 1)) if plan.sigma is None else _view_taps(plan.sigma, view)
    solarize = off if plan.solarize is None else plan.solarize
    crop = None if plan.boxes is None else _crop_matrices(plan.boxes, view.size, height, width, plan.flip)
    out = xf.new_empty(batch, channels, *view.size)
    chunk = _chunk_rows(xf.shape, view)
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        work = xf[rows] if crop is None else _resample(xf[rows], crop[0][rows], crop[1][rows])
        _kernels.view(work, out[rows], steps[rows], hue[rows], position[rows], gray[rows], taps[0][rows],
                      taps[1][rows], blur[rows], solarize[rows], 0.5)
    return out


def _clamped_view(view: View, xf: Tensor, *plan: Tensor | None) -> Tensor:
    return _run_view(xf, view, _ViewPlan(*plan)).clamp_(0.0, 1.0)


@functools.cache
def _compiled_view(view: View, device_type: str, shape: tuple[int, ...], present: tuple[bool, ...]):
    """``_run_view`` with its final clamp, compiled for one view, device type, batch shape and set of
    steps (the key; torch.compile specialises on the same things). Each gets a compiled function of
    its own (``isolate_recompiles``), so that the views of a run (DINO: two sizes) and of a process never
    share torch.compile's per-function recompile limit."""
    def run(xf: Tensor, *plan: Tensor | None) -> Tensor:
        return _clamped_view(view, xf, *plan)

    return torch.compile(run, dynamic=False, fullgraph=True, isolate_recompiles=True)


def _run_view_compiled(xf: Tensor, view: View, plan: _ViewPlan) -> Tensor:
    """The view through ``torch.compile`` of ``_run_view``: on a GPU, inductor fuses the crop
    matrices, the jitter's blends and hue rotation, grayscale, the blur's taps and solarize into a
    handful of Triton kernels around the crop's two ``bmm`` (the eager masked path launches one
    kernel per operation, some 150 per view: at 3x32x32 the view is launch-bound). The plan is
    drawn eagerly, by the same RNG calls as the other paths. On the CPU (``benchmarks/augment.py
    --compiled``, one thread) it makes 1.34x the masked path's views of 1x28x28 images and 0.49x the
    C kernel's of 3x32x32 ones, which therefore keep the kernel."""
    present = tuple(p is not None for p in plan)
    if not any(present):  # the image as it is ("none", "eval" at the stored size): nothing to fuse
        return xf.clamp(0.0, 1.0)
    run = _compiled_view(view, xf.device.type, tuple(xf.shape), present)
    return run(xf, *plan)


def _overlaps(ranges: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int]]:
    """The parts of ``ranges`` inside [start, stop), relative to start."""
    return [(max(a, start) - start, min(b, stop) - start) for a, b in ranges if a < stop and b > start]


class Augmentation(nn.Module):
    """The views made from one batch; call it as ``augment(images, generator=None)``.

    Global views come first, in order, then ``n_local`` local crops made with the one ``local``
    recipe (multi-crop, as in DINO). Holds no parameters, so it runs on whatever device the
    batch is on.

    Args:
        views: the :class:`View` recipes of the global views, in output order.
        local: the recipe of the local crops, or None.
        n_local: how many local crops (0 when ``local`` is None).
        compiled: make every view with ``torch.compile`` (see :func:`augment_view`); the engine sets
            it with ``train.compile``.
        fused: make every view in one Triton kernel on a CUDA GPU (see :func:`augment_view`); the
            engine sets it with ``train.fused_views``.
        fused_draws: with ``fused``, draw the parameters in the kernel too (``train.fused_draws``).

    Examples:
        >>> augment = Augmentation([View(size=(16, 16))], local=View(size=(8, 8), scale=(0.05, 0.4)), n_local=2)
        >>> [v.shape[-1] for v in augment(torch.rand(2, 3, 32, 32))]
        [16, 8, 8]
    """

    def __init__(self, views: list[View], local: View | None = None, n_local: int = 0, *,
                 compiled: bool = False, fused: bool = False, fused_draws: bool = False) -> None:
        super().__init__()
        if not views:
            raise ValueError("an Augmentation needs at least one View")
        if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 0:
            raise ValueError(f"n_local must be an int >= 0, got {n_local!r}")
        if n_local and local is None:
            raise ValueError(f"n_local={n_local} local crops need a local View")
        self.views = list(views)
        self.local = local
        self.n_local = n_local
        self.compiled = compiled
        self.fused = fused
        self.fused_draws = fused_draws

    @property
    def output_views(self) -> list[View]:
        """Every view in output order: the global views, then the local crops."""
        return self.views + [self.local] * self.n_local if self.local is not None else list(self.views)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """Return ``len(self.output_views)`` float32 views ``(B, C, h_i, w_i)`` in [0, 1] of ``x``.

        Args:
            x: ``(B, C, H, W)`` uint8 (0..255) or float (0..1) batch, C = 1 or 3.
            generator: optional RNG for reproducible views.
        """
        xf = to_float(x)
        # The first view may keep xf where to_float made it (a uint8 batch): no copy for "none" or "eval".
        return [_augment_view(xf, view, generator, self.compiled, self.fused, self.fused_draws,
                              owned=i == 0 and xf is not x)[0] for i, view in enumerate(self.output_views)]

    def views_and_geometry(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[
            list[Tensor], Tensor, Tensor]:
        """The views :meth:`forward` makes (the same draws from ``generator``) and where each came from.

        Returns:
            ``(views, boxes, flips)``: ``boxes`` ``(B, V, 4)`` float ``(top, left, height, width)`` of
            each view in its image and ``flips`` ``(B, V)`` bool, True where the view is mirrored, for
            the ``V`` views in output order; :func:`~selfsup.augment.geometry.view_to_image` maps a
            view's points into the image with them (dense methods that match positions by the views'
            geometry: DenseCL's ``match="geometry"``).
        """
        xf = to_float(x)
        batch, _, height, width = xf.shape
        views, boxes, flips = [], [], []
        for i, view in enumerate(self.output_views):
            out, plan = _augment_view(xf, view, generator, self.compiled, self.fused, self.fused_draws,
                                      owned=i == 0 and xf is not x)
            views.append(out)
            whole = torch.tensor([[0, 0, height, width]], device=xf.device).expand(batch, 4)
            boxes.append(whole if plan.boxes is None else plan.boxes)
            flips.append(torch.zeros(batch, dtype=torch.bool, device=xf.device) if plan.flip is None else plan.flip)
        return views, torch.stack(boxes, dim=1).float(), torch.stack(flips, dim=1)

    def extra_repr(self) -> str:
        lines = [repr(view) for view in self.views]
        if self.local is not None:
            lines.append(f"{self.n_local} x local {self.local!r}")
        return "\n".join(lines)
