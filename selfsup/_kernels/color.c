/* Fused per-sample colour jitter + grayscale for float32 RGB images on the CPU.
 *
 * One call processes a batch; each image (3 planes of hw floats, a few KB for small images) is
 * copied to the output once and every step then runs on it while it sits in L1 cache, instead of
 * one pass over the whole batch per elementwise op (about 60 of them) as the eager torch code does.
 * The arithmetic is that of selfsup.augment's _blend, _rotate_hue and _gray, i.e. torchvision's
 * adjust_brightness / adjust_contrast / adjust_saturation / adjust_hue / rgb_to_grayscale, in each
 * sample's own order. Loops over pixels are branch-free so that the compiler vectorises them.
 * No torch headers: the loader (selfsup/_kernels/__init__.py) compiles this file with the system C
 * compiler in about a second and calls it through ctypes on contiguous tensors.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <float.h>

#define L0 0.2989f
#define L1 0.587f
#define L2 0.114f

static inline float clamp01(float v) { return fminf(fmaxf(v, 0.0f), 1.0f); }

/* clamp(a * x + b * gray(x) + c * mean(gray(x)), 0, 1) on the three planes. */
static void blend(float *restrict r, float *restrict g, float *restrict b, long hw,
                  float a, float bw, float cw) {
    float offset = 0.0f;
    if (cw != 0.0f) {
        double sum = 0.0;
        for (long j = 0; j < hw; ++j) sum += (double)(r[j] * L0 + g[j] * L1 + b[j] * L2);
        offset = (float)(sum / (double)hw) * cw;
    }
    if (bw != 0.0f) {
        for (long j = 0; j < hw; ++j) {
            float gray = (r[j] * L0 + g[j] * L1 + b[j] * L2) * bw + offset;
            r[j] = clamp01(gray + r[j] * a);
            g[j] = clamp01(gray + g[j] * a);
            b[j] = clamp01(gray + b[j] * a);
        }
    } else {
        for (long j = 0; j < hw; ++j) {
            r[j] = clamp01(offset + r[j] * a);
            g[j] = clamp01(offset + g[j] * a);
            b[j] = clamp01(offset + b[j] * a);
        }
    }
}

static inline float ramp(float sixths, float own) {
    float d = fabsf(sixths - own);
    d = fminf(d, 6.0f - d);
    return fminf(fmaxf(d - 1.0f, 0.0f), 1.0f);
}

/* Rotate the hue by `turns` (HSV, value and chroma kept), as selfsup.augment._rotate_hue. */
static void rotate_hue(float *restrict r, float *restrict g, float *restrict b, long hw, float turns) {
    const float shift = turns * 6.0f;
    for (long j = 0; j < hw; ++j) {
        float red = r[j], green = g[j], blue = b[j];
        float high = fmaxf(fmaxf(red, green), blue);
        float chroma = high - fminf(fminf(red, green), blue);
        float red_max = high == red ? 1.0f : 0.0f;
        float green_max = high == green ? 1.0f - red_max : 0.0f;
        float blue_max = 1.0f - red_max - green_max;
        float sixths = red_max * (green - blue) + green_max * ((blue - red) + 2.0f * chroma)
                       + blue_max * ((red - green) + 4.0f * chroma);
        sixths = sixths / fmaxf(chroma, FLT_MIN) + shift;
        /* Wrap into [0, 6): sixths lies in [-4, 8) for |turns| <= 0.5, so one step either way
         * does it (floorf would keep gcc from vectorising the loop). */
        sixths += (sixths < 0.0f ? 6.0f : 0.0f) - (sixths >= 6.0f ? 6.0f : 0.0f);
        r[j] = high - ramp(sixths, 0.0f) * chroma;
        g[j] = high - ramp(sixths, 2.0f) * chroma;
        b[j] = high - ramp(sixths, 4.0f) * chroma;
    }
}

/* x, out: (n, 3, hw) contiguous float32. steps: (n, 3, 3) blends (a, b, c) in order.
 * hue: (n,) turns. hue_position: (n,) int64, -1 = no jitter, else the number of blend steps
 * before the hue rotation (0..3). gray: (n,) uint8, 1 = convert to grayscale afterwards. */
void selfsup_color(const float *restrict x, float *restrict out, int64_t n, int64_t hw,
                   const float *restrict steps, const float *restrict hue,
                   const int64_t *restrict hue_position, const uint8_t *restrict gray) {
    for (int64_t i = 0; i < n; ++i) {
        float *r = out + i * 3 * hw, *g = r + hw, *b = g + hw;
        memcpy(r, x + i * 3 * hw, (size_t)(3 * hw) * sizeof(float));
        int64_t position = hue_position[i];
        if (position >= 0) {
            for (int64_t s = 0; s < 3; ++s) {
                if (s == position) rotate_hue(r, g, b, hw, hue[i]);
                const float *k = steps + (i * 3 + s) * 3;
                blend(r, g, b, hw, k[0], k[1], k[2]);
            }
            if (position >= 3) rotate_hue(r, g, b, hw, hue[i]);
        }
        if (gray[i]) {
            for (int64_t j = 0; j < hw; ++j) {
                float luma = r[j] * L0 + g[j] * L1 + b[j] * L2;
                r[j] = luma;
                g[j] = luma;
                b[j] = luma;
            }
        }
    }
}


static inline int64_t reflect(int64_t i, int64_t length) {
    return i < 0 ? -i : (i >= length ? 2 * length - 2 - i : i);
}

/* Separable blur of one plane with reflect padding: along H with taps_y, then along W with taps_x,
 * each output pixel sum_t tap[t] * in[. + t - k/2] accumulated in tap order, as _separable_blur.
 * scratch: h * w + w + kx floats. */
static void blur_plane(float *restrict p, int64_t h, int64_t w, const float *restrict ty, int64_t ky,
                       const float *restrict tx, int64_t kx, float *restrict scratch) {
    float *restrict tmp = scratch, *restrict row = scratch + h * w;
    int64_t py = ky / 2, px = kx / 2;
    for (int64_t y = 0; y < h; ++y) {
        float *restrict t_row = tmp + y * w;
        const float *restrict src = p + reflect(y - py, h) * w;
        for (int64_t x = 0; x < w; ++x) t_row[x] = src[x] * ty[0];
        for (int64_t t = 1; t < ky; ++t) {
            src = p + reflect(y + t - py, h) * w;
            for (int64_t x = 0; x < w; ++x) t_row[x] = t_row[x] + src[x] * ty[t];
        }
    }
    for (int64_t y = 0; y < h; ++y) {
        const float *restrict t_row = tmp + y * w;
        for (int64_t x = 0; x < w + 2 * px; ++x) row[x] = t_row[reflect(x - px, w)];
        float *restrict dst = p + y * w;
        for (int64_t x = 0; x < w; ++x) dst[x] = row[x] * tx[0];
        for (int64_t t = 1; t < kx; ++t)
            for (int64_t x = 0; x < w; ++x) dst[x] = dst[x] + row[x + t] * tx[t];
    }
}

/* The whole colour part of a view after the crop, per sample and in place in `out`:
 * colour jitter and grayscale (as selfsup_color), then the Gaussian blur where blur[i], then
 * solarize (x >= threshold -> 1 - x) where solarize[i]. taps_y: (n, ky), taps_x: (n, kx).
 * scratch: h * w + w + kx floats. */
void selfsup_view(const float *restrict x, float *restrict out, int64_t n, int64_t channels,
                  int64_t h, int64_t w, const float *restrict steps, const float *restrict hue,
                  const int64_t *restrict hue_position, const uint8_t *restrict gray,
                  const float *restrict taps_y, int64_t ky, const float *restrict taps_x, int64_t kx,
                  const uint8_t *restrict blur, const uint8_t *restrict solarize, float threshold,
                  float *restrict scratch) {
    int64_t hw = h * w;
    for (int64_t i = 0; i < n; ++i) {
        float *image = out + i * channels * hw;
        if (channels == 3) {
            selfsup_color(x + i * 3 * hw, image, 1, hw, steps + i * 9, hue + i, hue_position + i, gray + i);
        } else if (image != x + i * channels * hw) {
            memcpy(image, x + i * channels * hw, (size_t)(channels * hw) * sizeof(float));
        }
        if (blur[i])
            for (int64_t c = 0; c < channels; ++c)
                blur_plane(image + c * hw, h, w, taps_y + i * ky, ky, taps_x + i * kx, kx, scratch);
        if (solarize[i])
            for (int64_t j = 0; j < channels * hw; ++j) image[j] = image[j] >= threshold ? 1.0f - image[j] : image[j];
    }
}
