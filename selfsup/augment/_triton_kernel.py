"""The Triton kernel of :mod:`selfsup.augment._triton` (imported only where Triton is; the interpreter
is chosen when this module is loaded: see ``_triton._kernel``)."""

import triton
import triton.language as tl
from triton.language.random import rand as _philox_rand

# Philox uniforms (tl.rand). In the interpreter, _triton._kernel hands in a copy of triton.language.random
# built in the interpreter's mode (a jit function built otherwise cannot be called from an interpreted one).
_uniform = globals().get("_INTERPRETED_RAND", _philox_rand)

# The luma weights of selfsup.augment._common._LUMA (a test checks that they agree).
LUMA_R = tl.constexpr(0.2989)
LUMA_G = tl.constexpr(0.587)
LUMA_B = tl.constexpr(0.114)
TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(torch.float32).tiny


@triton.jit
def _gray(r, g, b):
    return r * LUMA_R + g * LUMA_G + b * LUMA_B


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _mean(plane, valid, count):
    # tl.reduce with our own combine rather than tl.sum, whose combine is built when triton is first
    # imported: the interpreter (the tests, on a CPU) needs every jit function built in its mode.
    return tl.reduce(tl.reduce(tl.where(valid, plane, 0.0), 1, _add), 0, _add) / count


@triton.jit
def _hue_channel(sixths, own, high, chroma):
    distance = tl.abs(sixths - own)
    distance = tl.minimum(distance, 6.0 - distance)
    ramp = tl.minimum(tl.maximum(distance - 1.0, 0.0), 1.0)
    return high - ramp * chroma


@triton.jit
def _rotate_hue(r, g, b, factor):
    # runner's _rotate_hue (colour.py), element by element.
    high = tl.maximum(tl.maximum(r, g), b)
    chroma = high - tl.minimum(tl.minimum(r, g), b)
    red_max = (high == r).to(tl.float32)
    green_max = (high == g).to(tl.float32) * (1.0 - red_max)
    blue_max = 1.0 - red_max - green_max
    sixths = red_max * (g - b)
    sixths = sixths + green_max * ((b - r) + 2.0 * chroma)
    sixths = sixths + blue_max * ((r - g) + 4.0 * chroma)
    sixths = sixths / tl.maximum(chroma, TINY) + factor * 6.0
    sixths = sixths - tl.floor(sixths / 6.0) * 6.0
    return (_hue_channel(sixths, 0.0, high, chroma), _hue_channel(sixths, 2.0, high, chroma),
            _hue_channel(sixths, 4.0, high, chroma))


@triton.jit
def _resample(plane_ptr, rows, cols_t, height, width, HP: tl.constexpr, WP: tl.constexpr):
    iy = tl.arange(0, HP)[:, None]
    ix = tl.arange(0, WP)[None, :]
    plane = tl.load(plane_ptr + iy * width + ix, mask=(iy < height) & (ix < width), other=0.0).to(tl.float32)
    return tl.dot(tl.dot(rows, plane, input_precision="ieee"), cols_t, input_precision="ieee")


@triton.jit
def _load_plane(plane_ptr, height, width, OHP: tl.constexpr, OWP: tl.constexpr):
    iy = tl.arange(0, OHP)[:, None]
    ix = tl.arange(0, OWP)[None, :]
    return tl.load(plane_ptr + iy * width + ix, mask=(iy < height) & (ix < width), other=0.0).to(tl.float32)


@triton.jit
def _crop_weights(start, length, out_size, in_size, flip, OP: tl.constexpr, IP: tl.constexpr):
    """(OP, IP) resampling weights of [start, start + length) to out_size: geometry._interpolation_matrix
    (antialiased triangle filter, pixel centres at j + 0.5, rows normalised, mirrored where flip)."""
    o = tl.arange(0, OP)[:, None].to(tl.float32)
    i = tl.arange(0, IP)[None, :].to(tl.float32)
    scale = length / out_size
    index = tl.where(flip, out_size - 1.0 - o, o)
    centre = (index + 0.5) * scale + (start - 0.5)
    offset = i - start
    inside = (offset >= 0.0) & (offset < length) & (i < in_size) & (o < out_size)
    weights = tl.maximum(1.0 - tl.abs(i - centre) * (1.0 / tl.maximum(scale, 1.0)), 0.0)
    weights = tl.where(inside, weights, 0.0)
    total = tl.reduce(weights, 1, _add)[:, None]
    return weights / tl.where(total > 0.0, total, 1.0)


@triton.jit
def _blur_weights(sigma, size, NP: tl.constexpr, K: tl.constexpr):
    """(NP, NP) matrix M with M @ v the blur of v by K Gaussian taps exp(-t^2 / (2 sigma^2)) (normalised)
    with reflect padding, blur._separable_blur along one axis; the identity where sigma <= 0."""
    o = tl.arange(0, NP)[:, None]
    j = tl.arange(0, NP)[None, :]
    blurred = sigma > 0.0
    width = tl.where(blurred, sigma, 1.0)
    total = 0.0
    for t in tl.static_range(K):
        distance = (t - K // 2) / width
        total += tl.exp(-distance * distance * 0.5)
    matrix = (o + j).to(tl.float32) * 0.0  # zeros (tl.zeros is a jit function: see _mean)
    for t in tl.static_range(K):
        distance = (t - K // 2) / width
        tap = tl.where(blurred, tl.exp(-distance * distance * 0.5) / total, 1.0 if t == K // 2 else 0.0)
        source = o + (t - K // 2)
        source = tl.where(source < 0, -source, source)
        source = tl.where(source >= size, 2 * (size - 1) - source, source)
        matrix += tl.where((j == source) & (o < size), tap, 0.0)
    return matrix


# Where each sample's draws sit in its block of Philox counters (sample n uses n * DRAWS + k).
DRAWS = tl.constexpr(40)


@triton.jit
def _draw(seed, n, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi, fallback_h, fallback_w, flip_p, pad,
          b_lo, b_hi, c_lo, c_hi, s_lo, s_hi, hue_lo, hue_hi, jitter_p, gray_p, blur_p, sigma_lo, sigma_hi,
          solarize_p, RANDOM_CROP: tl.constexpr, SHIFT: tl.constexpr, C: tl.constexpr):
    """One sample's view parameters (or a block's: ``n`` may be a block of sample indices), drawn from
    the distributions runner._plan_view draws from: the crop box by torchvision's ten tries of area and
    log aspect ratio, then a uniform position (or a whole-image shift of up to ``pad`` pixels), the flip,
    ColorJitter's factors and a uniform order (ranks of four uniforms), applied with ``jitter_p``,
    grayscale, the blur's sigma, solarize. Returns the box, flip, four factors, the three non-hue
    adjustments' slots and the hue rotation's position (-1: no jitter), gray, sigma, solarize."""
    base = n * DRAWS
    hf = height * 1.0
    wf = width * 1.0
    if RANDOM_CROP:
        found = n < 0  # False, of n's shape
        box_h = hf * 0.0 + fallback_h
        box_w = wf * 0.0 + fallback_w + box_h * 0.0
        for attempt in tl.static_range(10):
            area = (scale_lo + (scale_hi - scale_lo) * _uniform(seed, base + 2 * attempt)) * (hf * wf)
            aspect = tl.exp(log_ratio_lo + (log_ratio_hi - log_ratio_lo) * _uniform(seed, base + 2 * attempt + 1))
            w = tl.floor(tl.sqrt(area * aspect) + 0.5)
            h = tl.floor(tl.sqrt(area / aspect) + 0.5)
            fits = (w > 0.0) & (w <= wf) & (h > 0.0) & (h <= hf)
            take = fits & (found == 0)
            box_w = tl.where(take, w, box_w)
            box_h = tl.where(take, h, box_h)
            found = found | fits
        top = tl.where(found, tl.floor(_uniform(seed, base + 20) * (hf - box_h + 1.0)), tl.floor((hf - fallback_h) * 0.5))
        left = tl.where(found, tl.floor(_uniform(seed, base + 21) * (wf - box_w + 1.0)), tl.floor((wf - fallback_w) * 0.5))
        top = tl.minimum(top, hf - box_h)
        left = tl.minimum(left, wf - box_w)
    else:
        box_h = hf + _uniform(seed, base + 20) * 0.0
        box_w = wf + box_h * 0.0
        top = box_h * 0.0
        left = box_h * 0.0
        if SHIFT:  # RandomCrop(size, padding=pad): the corner's offset, uniform in [-pad, pad]
            top = tl.floor(_uniform(seed, base + 20) * (2.0 * pad + 1.0)) - pad
            left = tl.floor(_uniform(seed, base + 21) * (2.0 * pad + 1.0)) - pad
    flip = _uniform(seed, base + 22) < flip_p
    f0 = b_lo + (b_hi - b_lo) * _uniform(seed, base + 23)
    f1 = c_lo + (c_hi - c_lo) * _uniform(seed, base + 24)
    f2 = s_lo + (s_hi - s_lo) * _uniform(seed, base + 25)
    f3 = hue_lo + (hue_hi - hue_lo) * _uniform(seed, base + 26)
    k0 = _uniform(seed, base + 27)
    k1 = _uniform(seed, base + 28)
    k2 = _uniform(seed, base + 29)
    k3 = _uniform(seed, base + 30)
    applied = _uniform(seed, base + 31) < jitter_p
    if C == 3:  # the order: each adjustment's rank among the four keys; the non-hue ones' slots skip the hue's
        rank0 = (k1 < k0).to(tl.int32) + (k2 < k0).to(tl.int32) + (k3 < k0).to(tl.int32)
        rank1 = (k0 < k1).to(tl.int32) + (k2 < k1).to(tl.int32) + (k3 < k1).to(tl.int32)
        rank2 = (k0 < k2).to(tl.int32) + (k1 < k2).to(tl.int32) + (k3 < k2).to(tl.int32)
        rank3 = (k0 < k3).to(tl.int32) + (k1 < k3).to(tl.int32) + (k2 < k3).to(tl.int32)
        slot0 = rank0 - (rank3 < rank0).to(tl.int32)
        slot1 = rank1 - (rank3 < rank1).to(tl.int32)
        slot2 = rank2 - (rank3 < rank2).to(tl.int32)
        position = tl.where(applied, rank3, -1)
    else:  # one channel: brightness and contrast in their drawn order, no saturation or hue
        slot0 = (k1 < k0).to(tl.int32)
        slot1 = 1 - slot0
        slot2 = slot0 * 0 + 2
        position = tl.where(applied, 2, -1)
    gray = _uniform(seed, base + 32) < gray_p
    sigma = tl.where(_uniform(seed, base + 33) < blur_p, sigma_lo + (sigma_hi - sigma_lo) * _uniform(seed, base + 34), 0.0)
    solarize = _uniform(seed, base + 35) < solarize_p
    return top, left, box_h, box_w, flip, f0, f1, f2, f3, slot0, slot1, slot2, position, gray, sigma, solarize


@triton.jit
def _slot(s, f0, f1, f2, slot0, slot1, slot2):
    """Blend coefficients (a, b, c) of jitter slot s: brightness (f, 0, 0), contrast (f, 0, 1 - f),
    saturation (f, 1 - f, 0), as colour._jitter_plan."""
    fa = tl.where(slot0 == s, f0, tl.where(slot1 == s, f1, f2))
    fb = tl.where(slot2 == s, 1.0 - f2, 0.0)
    fc = tl.where(slot1 == s, 1.0 - f1, 0.0)
    return fa, fb, fc


@triton.jit
def draw_kernel(seed_ptr, record_ptr, batch, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi,
                fallback_h, fallback_w, flip_p, pad, b_lo, b_hi, c_lo, c_hi, s_lo, s_hi, hue_lo, hue_hi, jitter_p,
                gray_p, blur_p, sigma_lo, sigma_hi, solarize_p, RANDOM_CROP: tl.constexpr, SHIFT: tl.constexpr,
                C: tl.constexpr, BLOCK: tl.constexpr):
    """The parameters view_kernel draws, written out (RECORD columns per sample) for a block of samples."""
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = n < batch
    values = _draw(tl.load(seed_ptr), n, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi, fallback_h,
                   fallback_w, flip_p, pad, b_lo, b_hi, c_lo, c_hi, s_lo, s_hi, hue_lo, hue_hi, jitter_p, gray_p,
                   blur_p, sigma_lo, sigma_hi, solarize_p, RANDOM_CROP, SHIFT, C)
    for column in tl.static_range(16):
        tl.store(record_ptr + n * 16 + column, values[column].to(tl.float32), mask=keep)


@triton.jit
def view_kernel(x_ptr, boxes_ptr, sigma_ptr, steps_ptr, hue_ptr, position_ptr, flags_ptr, out_ptr,
                height, width, out_h, out_w, scale, count,
                seed_ptr, record_ptr, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi, fallback_h, fallback_w, flip_p,
                pad, b_lo, b_hi, c_lo, c_hi, s_lo, s_hi, hue_lo, hue_hi, jitter_p, gray_p, blur_p, sigma_lo, sigma_hi,
                solarize_p,
                C: tl.constexpr, S: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr, OHP: tl.constexpr,
                OWP: tl.constexpr, CROP: tl.constexpr, JITTER: tl.constexpr, GRAY: tl.constexpr,
                BLUR: tl.constexpr, SOLARIZE: tl.constexpr, KY: tl.constexpr, KX: tl.constexpr,
                DRAW: tl.constexpr, RANDOM_CROP: tl.constexpr, SHIFT: tl.constexpr):
    """One image's view. The parameters come from the plan's tensors, or with DRAW are drawn here (_draw;
    then the crop box and flip are written to record_ptr, 5 columns, for views_and_geometry)."""
    n = tl.program_id(0).to(tl.int64)
    oy = tl.arange(0, OHP)[:, None]
    ox = tl.arange(0, OWP)[None, :]
    valid = (oy < out_h) & (ox < out_w)
    plane_in = height * width
    source = x_ptr + n * C * plane_in
    if DRAW:
        (top, left, box_h, box_w, flip, f0, f1, f2, hue, slot0, slot1, slot2, position, gray, sigma,
         solarize) = _draw(tl.load(seed_ptr), n.to(tl.int32), height, width, scale_lo, scale_hi, log_ratio_lo,
                           log_ratio_hi, fallback_h, fallback_w, flip_p, pad, b_lo, b_hi, c_lo, c_hi, s_lo, s_hi,
                           hue_lo, hue_hi, jitter_p, gray_p, blur_p, sigma_lo, sigma_hi, solarize_p, RANDOM_CROP,
                           SHIFT, C)
        if CROP:
            tl.store(record_ptr + n * 5, top)
            tl.store(record_ptr + n * 5 + 1, left)
            tl.store(record_ptr + n * 5 + 2, box_h)
            tl.store(record_ptr + n * 5 + 3, box_w)
            tl.store(record_ptr + n * 5 + 4, flip.to(tl.float32))
    else:
        flags = tl.load(flags_ptr + n)
        flip = (flags & 4) != 0
        gray = (flags & 1) != 0
        solarize = (flags & 2) != 0
        if CROP:
            top = tl.load(boxes_ptr + n * 4)
            left = tl.load(boxes_ptr + n * 4 + 1)
            box_h = tl.load(boxes_ptr + n * 4 + 2)
            box_w = tl.load(boxes_ptr + n * 4 + 3)
        if JITTER:
            position = tl.load(position_ptr + n)  # slots before the hue rotation; -1: no jitter
            if C == 3:
                hue = tl.load(hue_ptr + n)
        if BLUR:
            sigma = tl.load(sigma_ptr + n)
    # 1. Crop, resize and mirror: R @ X @ C^T per channel, the weights made here from the box.
    if CROP:
        rows = _crop_weights(top, box_h, out_h, height, False, OHP, HP)
        cols_t = tl.trans(_crop_weights(left, box_w, out_w, width, flip, OWP, WP))
        r = _resample(source, rows, cols_t, height, width, HP, WP) * scale
        if C == 3:
            g = _resample(source + plane_in, rows, cols_t, height, width, HP, WP) * scale
            b = _resample(source + 2 * plane_in, rows, cols_t, height, width, HP, WP) * scale
    else:
        r = _load_plane(source, height, width, OHP, OWP) * scale
        if C == 3:
            g = _load_plane(source + plane_in, height, width, OHP, OWP) * scale
            b = _load_plane(source + 2 * plane_in, height, width, OHP, OWP) * scale
    if C == 1:
        g = r
        b = r
    # 2. Colour jitter: S blends before the hue rotation's slot, the rotation, S after it.
    if JITTER:
        applied = position >= 0
        for half in tl.static_range(2):
            if half == 1 and C == 3:
                hr, hg, hb = _rotate_hue(r, g, b, hue)
                r = tl.where(applied, hr, r)
                g = tl.where(applied, hg, g)
                b = tl.where(applied, hb, b)
            for s in tl.static_range(S):
                if half == 0:
                    use = applied & (s < position)
                else:
                    use = applied & (s >= position)
                if DRAW:
                    fa, fb, fc = _slot(s, f0, f1, f2, slot0, slot1, slot2)
                else:
                    fa = tl.load(steps_ptr + n * S * 3 + s * 3)
                    fb = tl.load(steps_ptr + n * S * 3 + s * 3 + 1)
                    fc = tl.load(steps_ptr + n * S * 3 + s * 3 + 2)
                fa = tl.where(use, fa, 1.0)
                fb = tl.where(use, fb, 0.0)
                fc = tl.where(use, fc, 0.0)
                if C == 3:
                    luma = _gray(r, g, b)
                    offset = luma * fb + _mean(luma, valid, count) * fc
                    r = tl.minimum(tl.maximum(offset + r * fa, 0.0), 1.0)
                    g = tl.minimum(tl.maximum(offset + g * fa, 0.0), 1.0)
                    b = tl.minimum(tl.maximum(offset + b * fa, 0.0), 1.0)
                else:
                    offset = _mean(r, valid, count) * fc
                    r = tl.minimum(tl.maximum(offset + r * fa, 0.0), 1.0)
    # 3. Grayscale (3 channels): the blend with a = keep, b = 1 - keep.
    if GRAY and C == 3:
        keep = tl.where(gray, 0.0, 1.0)
        offset = _gray(r, g, b) * (1.0 - keep)
        r = tl.minimum(tl.maximum(offset + r * keep, 0.0), 1.0)
        g = tl.minimum(tl.maximum(offset + g * keep, 0.0), 1.0)
        b = tl.minimum(tl.maximum(offset + b * keep, 0.0), 1.0)
    # 4. Blur: B_y @ Y @ B_x^T (the identity where the sample is not blurred).
    if BLUR:
        by = _blur_weights(sigma, out_h, OHP, KY)
        bx_t = tl.trans(_blur_weights(sigma, out_w, OWP, KX))
        r = tl.dot(tl.dot(by, r, input_precision="ieee"), bx_t, input_precision="ieee")
        if C == 3:
            g = tl.dot(tl.dot(by, g, input_precision="ieee"), bx_t, input_precision="ieee")
            b = tl.dot(tl.dot(by, b, input_precision="ieee"), bx_t, input_precision="ieee")
    # 5. Solarize at 0.5: min(x, 1 - x) where drawn; then the final clamp.
    if SOLARIZE:
        sol = solarize
        r = tl.where(sol, tl.minimum(r, 1.0 - r), r)
        if C == 3:
            g = tl.where(sol, tl.minimum(g, 1.0 - g), g)
            b = tl.where(sol, tl.minimum(b, 1.0 - b), b)
    plane_out = out_h * out_w
    target = out_ptr + n * C * plane_out + oy * out_w + ox
    tl.store(target, tl.minimum(tl.maximum(r, 0.0), 1.0), mask=valid)
    if C == 3:
        tl.store(target + plane_out, tl.minimum(tl.maximum(g, 0.0), 1.0), mask=valid)
        tl.store(target + 2 * plane_out, tl.minimum(tl.maximum(b, 0.0), 1.0), mask=valid)
