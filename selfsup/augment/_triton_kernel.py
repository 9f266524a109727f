"""The Triton kernel of :mod:`selfsup.augment._triton` (imported only where Triton is; the interpreter
is chosen when this module is loaded: see ``_triton._kernel``)."""

import triton
import triton.language as tl

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


@triton.jit
def view_kernel(x_ptr, boxes_ptr, sigma_ptr, steps_ptr, hue_ptr, position_ptr, flags_ptr, out_ptr,
                height, width, out_h, out_w, scale, count,
                C: tl.constexpr, S: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr, OHP: tl.constexpr,
                OWP: tl.constexpr, CROP: tl.constexpr, JITTER: tl.constexpr, GRAY: tl.constexpr,
                BLUR: tl.constexpr, SOLARIZE: tl.constexpr, KY: tl.constexpr, KX: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    oy = tl.arange(0, OHP)[:, None]
    ox = tl.arange(0, OWP)[None, :]
    valid = (oy < out_h) & (ox < out_w)
    plane_in = height * width
    source = x_ptr + n * C * plane_in
    flags = tl.load(flags_ptr + n)
    # 1. Crop, resize and mirror: R @ X @ C^T per channel, the weights made here from the box.
    if CROP:
        top = tl.load(boxes_ptr + n * 4)
        left = tl.load(boxes_ptr + n * 4 + 1)
        rows = _crop_weights(top, tl.load(boxes_ptr + n * 4 + 2), out_h, height, False, OHP, HP)
        cols_t = tl.trans(_crop_weights(left, tl.load(boxes_ptr + n * 4 + 3), out_w, width, (flags & 4) != 0, OWP, WP))
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
        position = tl.load(position_ptr + n)  # slots before the hue rotation; -1: no jitter
        applied = position >= 0
        for half in tl.static_range(2):
            if half == 1 and C == 3:
                hr, hg, hb = _rotate_hue(r, g, b, tl.load(hue_ptr + n))
                r = tl.where(applied, hr, r)
                g = tl.where(applied, hg, g)
                b = tl.where(applied, hb, b)
            for s in tl.static_range(S):
                if half == 0:
                    use = applied & (s < position)
                else:
                    use = applied & (s >= position)
                fa = tl.where(use, tl.load(steps_ptr + n * S * 3 + s * 3), 1.0)
                fb = tl.where(use, tl.load(steps_ptr + n * S * 3 + s * 3 + 1), 0.0)
                fc = tl.where(use, tl.load(steps_ptr + n * S * 3 + s * 3 + 2), 0.0)
                if C == 3:
                    gray = _gray(r, g, b)
                    offset = gray * fb + _mean(gray, valid, count) * fc
                    r = tl.minimum(tl.maximum(offset + r * fa, 0.0), 1.0)
                    g = tl.minimum(tl.maximum(offset + g * fa, 0.0), 1.0)
                    b = tl.minimum(tl.maximum(offset + b * fa, 0.0), 1.0)
                else:
                    offset = _mean(r, valid, count) * fc
                    r = tl.minimum(tl.maximum(offset + r * fa, 0.0), 1.0)
    # 3. Grayscale (3 channels): the blend with a = keep, b = 1 - keep.
    if GRAY and C == 3:
        keep = tl.where((flags & 1) != 0, 0.0, 1.0)
        offset = _gray(r, g, b) * (1.0 - keep)
        r = tl.minimum(tl.maximum(offset + r * keep, 0.0), 1.0)
        g = tl.minimum(tl.maximum(offset + g * keep, 0.0), 1.0)
        b = tl.minimum(tl.maximum(offset + b * keep, 0.0), 1.0)
    # 4. Blur: B_y @ Y @ B_x^T (the identity where the sample is not blurred).
    if BLUR:
        sigma = tl.load(sigma_ptr + n)
        by = _blur_weights(sigma, out_h, OHP, KY)
        bx_t = tl.trans(_blur_weights(sigma, out_w, OWP, KX))
        r = tl.dot(tl.dot(by, r, input_precision="ieee"), bx_t, input_precision="ieee")
        if C == 3:
            g = tl.dot(tl.dot(by, g, input_precision="ieee"), bx_t, input_precision="ieee")
            b = tl.dot(tl.dot(by, b, input_precision="ieee"), bx_t, input_precision="ieee")
    # 5. Solarize at 0.5: min(x, 1 - x) where drawn; then the final clamp.
    if SOLARIZE:
        sol = (flags & 2) != 0
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
