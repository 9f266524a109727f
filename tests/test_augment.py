"""Tests for selfsup.augment against torchvision.transforms.v2 and the recipes' distributions.

Tolerances: every op is compared on float32 images with torchvision applied
image by image with the same parameters. The crop, colour blends and flips do
the same arithmetic in a different order, so they agree to a few float32 ulps
(<= 1e-5 asserted). Hue goes through a closed form of the HSV sector table
instead of torchvision's lookup, and blur is separable instead of a 2-D
convolution: both agree to ~1e-6, asserted at 1e-5.
"""

import itertools
import math
import shutil

import pytest
import scipy.stats
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from selfsup import _kernels
from selfsup import augment as A
from selfsup.augment import runner
from selfsup.augment.blur import _blur_taps
from selfsup.augment.colour import _jitter_plan

TOL = 1e-5


def _images(batch=16, channels=3, height=32, width=32, seed=0):
    return torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def _require_kernel():
    if not _kernels.available():
        pytest.skip("no C compiler: the fused kernel is unavailable")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------- equivalence


@pytest.mark.parametrize("size", [32, 14, 48, (20, 40)])
def test_resized_crop_matches_torchvision_antialiased_bilinear(size):
    x = _images(batch=24, height=32, width=40)
    boxes = A.sample_crop_boxes(24, 32, 40, (0.05, 1.0), generator=_gen(1))
    flip = torch.rand(24, generator=_gen(2)) < 0.5
    out = A.resized_crop(x, boxes, size, flip)
    out_size = [size, size] if isinstance(size, int) else list(size)
    assert out.shape == (24, 3, *out_size)
    for i in range(24):
        top, left, height, width = boxes[i].tolist()
        expected = TF.resized_crop(x[i], top, left, height, width, out_size, antialias=True)
        if flip[i]:
            expected = TF.hflip(expected)
        torch.testing.assert_close(out[i], expected, atol=TOL, rtol=0)


def test_resized_crop_upscale_equals_plain_bilinear():
    # On upscales antialiasing has no effect: both torchvision modes agree with us.
    x = _images(batch=4)
    boxes = torch.tensor([[0, 0, 10, 12], [5, 3, 20, 20], [1, 1, 31, 31], [10, 0, 16, 8]])
    out = A.resized_crop(x, boxes, 32)
    for i in range(4):
        expected = TF.resized_crop(x[i], *boxes[i].tolist(), [32, 32], antialias=False)
        torch.testing.assert_close(out[i], expected, atol=TOL, rtol=0)


def test_uint8_input_is_scaled_float():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=_gen())
    boxes = A.sample_crop_boxes(6, 32, 32, generator=_gen(1))
    torch.testing.assert_close(A.resized_crop(x, boxes, 24), A.resized_crop(x.float() / 255, boxes, 24))
    assert A.to_float(x).max() <= 1.0 and A.to_float(x).dtype == torch.float32


def test_hflip_matches_torchvision():
    x = _images(batch=6)
    mask = torch.tensor([True, False, True, True, False, False])
    out = A.apply_hflip(x, mask)
    for i in range(6):
        torch.testing.assert_close(out[i], TF.hflip(x[i]) if mask[i] else x[i], atol=0, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_colour_adjustments_match_torchvision(name, channels):
    x = _images(batch=24, channels=channels)
    if name == "hue":
        factors = torch.rand(24, generator=_gen(3)) - 0.5
    else:
        factors = torch.rand(24, generator=_gen(3)) * 2.0
    out = getattr(A, f"adjust_{name}")(x, factors)
    reference = getattr(TF, f"adjust_{name}")
    for i in range(24):
        torch.testing.assert_close(out[i], reference(x[i], factors[i].item()), atol=TOL, rtol=0)


def test_hue_on_saturated_and_gray_pixels():
    # Pure hues and gray pixels exercise the max-channel ties and chroma == 0.
    pixels = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 1]]
    )
    x = pixels.T.reshape(1, 3, 1, 9).expand(5, 3, 1, 9).contiguous()
    factors = torch.tensor([-0.5, -0.2, 0.0, 1 / 6, 0.5])
    out = A.adjust_hue(x, factors)
    for i in range(5):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], factors[i].item()), atol=TOL, rtol=0)


def test_grayscale_matches_torchvision():
    x = _images(batch=4)
    mask = torch.tensor([True, False, True, False])
    out = A.apply_grayscale(x, mask)
    for i in range(4):
        expected = TF.rgb_to_grayscale(x[i], num_output_channels=3) if mask[i] else x[i]
        torch.testing.assert_close(out[i], expected, atol=TOL, rtol=0)
    single = _images(batch=2, channels=1)
    torch.testing.assert_close(A.apply_grayscale(single, torch.tensor([True, True])), single)


@pytest.mark.parametrize("kernel_size", [3, 7, (5, 3)])
def test_blur_matches_torchvision(kernel_size):
    x = _images(batch=12, height=20, width=24)
    sigma = 0.1 + 1.9 * torch.rand(12, generator=_gen(4))
    sigma[0] = 0.0  # sigma 0 means "not blurred"
    out = A.apply_blur(x, sigma, kernel_size)
    k_h, k_w = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    torch.testing.assert_close(out[0], x[0])
    for i in range(1, 12):
        s = sigma[i].item()
        expected = TF.gaussian_blur(x[i], [k_w, k_h], [s, s])  # torchvision takes (x, y)
        torch.testing.assert_close(out[i], expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_view_blur_kernel_follows_each_sides_length_on_a_non_square_view(channels):
    # A 40x12 (HxW) view blurred and nothing else: blur_kernel_size(40) = 5 taps down the columns,
    # blur_kernel_size(12) = 3 along the rows; torchvision takes the kernel size as [x, y] = [3, 5].
    view = A.View(size=(40, 12), scale=None, blur_p=1.0, jitter_p=0.0, gray_p=0.0, flip_p=0.0)
    x = _images(batch=4, channels=channels, height=40, width=12)
    out = A.augment_view(x, view, _gen(3))
    sigma = runner._plan_view(view, x.shape, x.device, _gen(3)).sigma  # the same draws
    assert (sigma > 0).all()
    for i in range(4):
        s = sigma[i].item()
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [3, 5], [s, s]), atol=TOL, rtol=0)


def test_solarize_matches_torchvision():
    x = _images(batch=4)
    mask = torch.tensor([True, True, False, True])
    out = A.apply_solarize(x, mask, threshold=0.5)
    for i in range(4):
        expected = TF.solarize(x[i], 0.5) if mask[i] else x[i]
        torch.testing.assert_close(out[i], expected, atol=0, rtol=0)


def test_solarize_inverts_pixels_equal_to_the_threshold():
    # torchvision: torch.where(img >= threshold, 1 - img, img); 0.25 and 0.75 are exact in float32.
    x = torch.tensor([0.0, 0.2, 0.25, 0.3, 0.75, 1.0]).view(1, 1, 2, 3)
    out = A.apply_solarize(x, torch.tensor([True]), threshold=0.25)
    torch.testing.assert_close(out, TF.solarize(x, 0.25), atol=0, rtol=0)
    assert out[0, 0, 0, 2].item() == 0.75


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_follows_each_samples_order(channels):
    x = _images(batch=96, channels=channels)
    params = A.sample_jitter(96, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=_gen(5))
    # Every one of the 24 orders and every hue position must be exercised.
    assert len({tuple(o) for o in params.order.tolist()}) >= 20
    out = A.apply_color_jitter(x, params)
    steps = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(96):
        expected = x[i]
        if params.applied[i]:
            for op in params.order[i].tolist():
                expected = steps[op](expected, params.factors[i, op].item())
        torch.testing.assert_close(out[i], expected, atol=TOL, rtol=0)


# ------------------------------------------------------------ distributions


def test_crop_boxes_match_torchvision_sampler():
    n, height, width = 3000, 32, 40
    torch.manual_seed(0)
    reference = T.RandomResizedCrop(16)
    probe = [torch.zeros(3, height, width)]
    ref = torch.tensor(
        [[p["top"], p["left"], p["height"], p["width"]] for p in (reference.make_params(probe) for _ in range(n))]
    ).double()
    ours = A.sample_crop_boxes(n, height, width, generator=_gen(6)).double()
    assert (ours[:, 2:] > 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 1] + ours[:, 3] <= width).all() and (ours[:, :2] >= 0).all()
    statistics = {
        "area": lambda b: b[:, 2] * b[:, 3],
        "log_ratio": lambda b: torch.log(b[:, 3] / b[:, 2]),
        "top": lambda b: b[:, 0] / (height - b[:, 2] + 1),
        "left": lambda b: b[:, 1] / (width - b[:, 3] + 1),
    }
    for name, stat in statistics.items():
        pvalue = scipy.stats.ks_2samp(stat(ours).numpy(), stat(ref).numpy()).pvalue
        assert pvalue > 1e-3, f"{name}: KS p = {pvalue}"


def test_crop_area_and_log_ratio_are_uniform_when_nothing_is_rejected():
    # On a large image with small crops no draw is rejected and rounding is
    # negligible: area fraction ~ U(scale), log(w / h) ~ U(log ratio).
    scale, ratio = (0.01, 0.05), (3 / 4, 4 / 3)
    boxes = A.sample_crop_boxes(4000, 2000, 2000, scale, ratio, generator=_gen(7)).double()
    area = boxes[:, 2] * boxes[:, 3] / 2000**2
    log_ratio = torch.log(boxes[:, 3] / boxes[:, 2])
    assert scipy.stats.kstest(area.numpy(), scipy.stats.uniform(0.01, 0.04).cdf).pvalue > 1e-3
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    assert scipy.stats.kstest(log_ratio.numpy(), scipy.stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3


def test_crop_falls_back_to_central_crop():
    # A 1x100 strip cannot hold any crop of ratio in [3/4, 4/3]: torchvision's
    # fallback keeps the height and clamps the width to the largest ratio.
    boxes = A.sample_crop_boxes(5, 1, 100, generator=_gen())
    expected_w = round(1 * 4 / 3)
    assert boxes.tolist() == [[0, (100 - expected_w) // 2, 1, expected_w]] * 5


def test_crop_of_a_tall_image_falls_back_as_torchvision():
    # A 200x10 (HxW) image holds no crop of ratio in [3/4, 4/3] and area >= 8% (width >= 11 pixels), so every
    # draw falls back: the full width, the height clamped to the smallest ratio, round(10 / (3/4)) = 13, centred.
    expected = list(T.RandomResizedCrop.get_params(torch.zeros(1, 200, 10), [0.08, 1.0], [3 / 4, 4 / 3]))
    assert expected == [93, 0, 13, 10]
    assert A.sample_crop_boxes(4, 200, 10, generator=_gen()).tolist() == [expected] * 4


def _rate_ok(rate, p, n):
    return abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_flip_rate():
    n = 4000
    ramp = torch.linspace(0, 1, 8).view(1, 1, 1, 8).expand(n, 1, 4, 8)
    out = A.random_resized_crop(ramp, (4, 8), scale=(1.0, 1.0), ratio=(2.0, 2.0), flip_p=0.5, generator=_gen())
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert _rate_ok(flipped.double().mean().item(), 0.5, n)
    assert _rate_ok(A.horizontal_flip(ramp, 0.3, generator=_gen(1))[:, 0, 0, 0].gt(0.5).double().mean().item(), 0.3, n)


def test_jitter_parameter_distributions():
    n = 4000
    params = A.sample_jitter(n, 0.4, 0.3, 0.2, 0.1, p=0.8, generator=_gen(8))
    assert _rate_ok(params.applied.double().mean().item(), 0.8, n)
    for column, (lo, hi) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1)]):
        pvalue = scipy.stats.kstest(params.factors[:, column].numpy(), scipy.stats.uniform(lo, hi - lo).cdf).pvalue
        assert pvalue > 1e-3, f"factor {column}: KS p = {pvalue}"
    # Every sample gets a permutation, and the 24 permutations are equally likely.
    assert (params.order.sort(dim=1).values == torch.arange(4)).all()
    index = {perm: i for i, perm in enumerate(itertools.permutations(range(4)))}
    counts = torch.bincount(torch.tensor([index[tuple(o)] for o in params.order.tolist()]), minlength=24)
    assert scipy.stats.chisquare(counts.numpy()).pvalue > 1e-3


@pytest.mark.parametrize(
    "op, p",
    [
        (lambda x, g: A.color_jitter(x, p=0.8, generator=g), 0.8),
        (lambda x, g: A.grayscale(x, p=0.2, generator=g), 0.2),
        (lambda x, g: A.gaussian_blur(x, p=0.5, generator=g), 0.5),
        (lambda x, g: A.solarize(x, p=0.2, generator=g), 0.2),
    ],
)
def test_application_rates(op, p):
    n = 3000
    x = _images(batch=n, height=8, width=8, seed=9)
    changed = (op(x, _gen(10)) - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert _rate_ok(changed.double().mean().item(), p, n)


def test_blur_sigma_is_uniform():
    # The centre tap of a 3-tap Gaussian is 1 / (1 + 2 exp(-1 / (2 sigma^2))):
    # invert it on a delta image to recover each sample's sigma.
    n = 3000
    delta = torch.zeros(n, 1, 5, 5)
    delta[:, :, 2, 2] = 1.0
    centre = A.gaussian_blur(delta, 3, sigma=(0.5, 2.0), p=1.0, generator=_gen(11))[:, 0, 2, 2].double()
    tap = centre.sqrt()  # separable: centre = tap_y * tap_x
    sigma = torch.sqrt(-1 / (2 * torch.log((1 / tap - 1) / 2)))
    assert scipy.stats.kstest(sigma.numpy(), scipy.stats.uniform(0.5, 1.5).cdf).pvalue > 1e-3


def test_samples_get_independent_parameters():
    x = _images(batch=1).expand(64, 3, 32, 32)
    view1, view2 = A.recipe("simclr", 32)(x, generator=_gen(12))
    distinct = {tuple(v.flatten()[:64].tolist()) for v in view1}
    assert len(distinct) == 64
    assert not torch.allclose(view1, view2)
    boxes = A.sample_crop_boxes(64, 32, 32, generator=_gen(13))
    assert len({tuple(b) for b in boxes.tolist()}) > 50


# ------------------------------------------------------------- the recipes


@pytest.mark.parametrize("name, n_views", [("simclr", 2), ("moco_v1", 2), ("moco_v2", 2), ("byol", 2), ("dino", 10), ("none", 1)])
@pytest.mark.parametrize("channels, side", [(3, 32), (1, 28)])
@pytest.mark.parametrize("batch", [8, 0])  # an empty batch (a rank's empty shard) gives empty views, not a crash
def test_recipe_outputs(name, n_views, channels, side, batch):
    x = torch.randint(0, 256, (batch, channels, side, side), dtype=torch.uint8, generator=_gen())
    views = A.recipe(name, side)(x, generator=_gen(1))
    assert isinstance(views, list) and len(views) == n_views
    local = round(side * 96 / 224)
    for i, view in enumerate(views):
        expected_side = side if i < 2 or name != "dino" else local
        assert view.shape == (batch, channels, expected_side, expected_side)
        assert view.dtype == torch.float32 and view.device == x.device
        assert batch == 0 or (view.min() >= 0.0 and view.max() <= 1.0)


def test_full_float32_products_lifts_tf32_on_cuda_only_and_restores_it():
    # The crop's products on a GPU run under the run's matmul precision ("high" = TF32 for the network):
    # inside the block they are full float32 on a CUDA device, and the run's setting comes back after,
    # also after an error. Elsewhere nothing changes. (The devices are only named: no GPU is needed.)
    from selfsup.augment._common import full_float32_products
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with full_float32_products(torch.device("cuda", 0)):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
        with pytest.raises(RuntimeError, match="inside"):
            with full_float32_products(torch.device("cuda")):
                raise RuntimeError("inside")
        assert torch.get_float32_matmul_precision() == "high"
        with full_float32_products(torch.device("cpu")):
            assert torch.get_float32_matmul_precision() == "high"
        torch.set_float32_matmul_precision("medium")
        with full_float32_products(torch.device("cuda")):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


def test_eval_recipe_is_float_image_resized():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=_gen())
    (same,) = A.recipe("eval", 32)(x)
    torch.testing.assert_close(same, x.float() / 255)
    (small,) = A.recipe("none", (16, 24))(x)
    for i in range(4):
        torch.testing.assert_close(small[i], TF.resize(x[i].float() / 255, [16, 24], antialias=True), atol=TOL, rtol=0)


@pytest.mark.parametrize("path", ["default", "torch", "masked"])
@pytest.mark.parametrize("channels", [1, 3])
def test_views_neither_change_nor_return_the_callers_float_batch(channels, path, monkeypatch):
    # A float32 batch is its own to_float; a view without steps ("none", "eval") is that tensor, and the
    # runner clamps its output in place. Values above 1 make any write to the batch show.
    if path != "default":  # RGB on the grouped torch path; "masked": the path an eager GPU run takes
        monkeypatch.setattr(_kernels, "available", lambda: False)
    if path == "masked":
        monkeypatch.setattr(runner, "_run_view_grouped", runner._run_view)
    x = _images(batch=4, channels=channels, height=8, width=8) * 1.5
    before = x.clone()
    for name in A.RECIPES:
        augment = A.recipe(name, 8)
        views = augment(x, generator=_gen()) + augment.views_and_geometry(x, generator=_gen())[0]
        for view in views:
            assert view.untyped_storage().data_ptr() != x.untyped_storage().data_ptr(), name
            assert view.min() >= 0 and view.max() <= 1, name
        assert torch.equal(x, before), name
    (same,) = A.recipe("none", 8)(x)
    torch.testing.assert_close(same, before.clamp(0, 1), atol=0, rtol=0)


def test_lab_round_trip_holds_under_bf16_autocast():
    # sRGB -> Lab -> sRGB is the identity (to float32 rounding, ~3e-6); autocast must not run either
    # direction's matrix product in bf16 (8 bits of mantissa: errors of ~5e-2).
    x = _images(batch=2, height=8, width=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        back = A.lab_to_rgb(A.rgb_to_lab(x))
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, x, atol=1e-4, rtol=0)


def _simclr_distortion(s: float) -> tuple[float, float, float, float]:
    # SimCLR appendix A: "color distortion" of strength s is ColorJitter(0.8s, 0.8s, 0.8s, 0.2s).
    return (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)


def test_simclr_recipe_follows_the_papers_cifar_and_imagenet_settings():
    # CIFAR-10 (appendix B.9): strength 0.5 and no Gaussian blur; ImageNet: strength 1.0, blur p 0.5.
    for side, strength, blur_p in ((28, 0.5, 0.0), (32, 0.5, 0.0), (224, 1.0, 0.5)):
        first, second = A.recipe("simclr", side).views
        assert first == second
        assert first.jitter == pytest.approx(_simclr_distortion(strength))
        assert (first.jitter_p, first.gray_p, first.blur_p, first.flip_p) == (0.8, 0.2, blur_p, 0.5)
        assert first.scale == (0.08, 1.0) and first.ratio == pytest.approx((3 / 4, 4 / 3))
    assert A.blur_kernel_size(224) == 23  # "10% of the image height/width", odd


def test_other_recipes_follow_the_papers():
    # MoCo v1 (main_moco.py without --aug-plus): crop 0.2-1, RandomGrayscale 0.2, ColorJitter(0.4, 0.4, 0.4, 0.4)
    # on every image, flip, no blur.
    v1 = A.recipe("moco_v1", 32).views[0]
    assert (v1.scale, v1.jitter, v1.jitter_p, v1.gray_p, v1.blur_p, v1.flip_p, v1.solarize_p) == (
        (0.2, 1.0), (0.4, 0.4, 0.4, 0.4), 1.0, 0.2, 0.0, 0.5, 0.0)
    # MoCo v2 (main_moco.py --aug-plus): crop 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, gray 0.2, blur p 0.5.
    moco = A.recipe("moco_v2", 32).views[0]
    assert (moco.scale, moco.jitter, moco.jitter_p, moco.gray_p, moco.blur_p) == (
        (0.2, 1.0), (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.5)
    # BYOL table 6: blur 1.0 / 0.1, solarize 0.0 / 0.2, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8.
    first, second = A.recipe("byol", 32).views
    assert (first.blur_p, second.blur_p, first.solarize_p, second.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    assert first.jitter == (0.4, 0.4, 0.2, 0.1) and first.scale == (0.08, 1.0)
    # DINO (main_dino.py): global crops 0.4-1 at 224, 8 local crops 0.05-0.4 at 96, blur 0.5 on them.
    dino = A.recipe("dino", 224)
    assert len(dino.views) == 2 and dino.n_local == 8 and len(dino.output_views) == 10
    assert dino.views[0].scale == (0.4, 1.0) and dino.local.scale == (0.05, 0.4)
    assert dino.local.size == (96, 96) and dino.local.blur_p == 0.5
    assert (dino.views[0].blur_p, dino.views[1].blur_p, dino.views[1].solarize_p) == (1.0, 0.1, 0.2)
    assert len(A.recipe("dino", 224, n_local=3).output_views) == 5


def test_override_sets_view_parameters_key_by_key():
    base = A.recipe("dino", 28)
    changed = A.override(base, view={"jitter": [0.2, 0.2, 0.1, 0.05]}, views=[{"blur_p": 0.3}],
                         n_local=2, local={"size": 10, "scale": [0.1, 0.3]})
    assert [v.jitter for v in changed.views] == [(0.2, 0.2, 0.1, 0.05)] * 2
    assert (changed.views[0].blur_p, changed.views[1].blur_p) == (0.3, base.views[1].blur_p)
    assert changed.local.size == (10, 10) and changed.local.scale == (0.1, 0.3) and changed.n_local == 2
    assert changed.local.jitter == base.local.jitter  # `view` applies to the global views only
    views = changed(torch.rand(3, 1, 28, 28))
    assert [v.shape[-1] for v in views] == [28, 28, 10, 10]


@pytest.mark.parametrize("kwargs, match", [
    ({"view": {"blur_p": 1.5}}, r"view.blur_p: blur_p is a probability"),
    ({"views": [{}, {"scale": [0.5, 0.2]}]}, r"views\[1\].scale: scale"),
    ({"views": [{}, {}, {}]}, r"views: 3 entries, but this augmentation has 2"),
    ({"view": {"jitter": [0.4, 0.4]}}, r"view.jitter: jitter must be 4 strengths"),
    ({"view": {"flip_p": "0.5"}}, r"view.flip_p: "),
    ({"view": {"colour": 1}}, r"view: unknown view parameters \['colour'\]"),
    ({"local": {"size": 8}}, r"local: this augmentation has no local crops"),
    ({"n_local": 4}, r"n_local: this augmentation has no local crops"),
])
def test_override_rejects_bad_keys_and_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.override(A.recipe("byol", 32), **kwargs)


def test_generator_makes_views_reproducible():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=_gen())
    augment = A.recipe("byol", 32)
    first = augment(x, generator=_gen(42))
    again = augment(x, generator=_gen(42))
    other = augment(x, generator=_gen(43))
    for a, b, c in zip(first, again, other):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert not torch.equal(a, c)
    torch.manual_seed(3)
    global1 = augment(x)
    torch.manual_seed(3)
    global2 = augment(x)
    torch.testing.assert_close(global1, global2, atol=0, rtol=0)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.zeros(3, 32, 32), "B, C, H, W"),
        (torch.zeros(2, 2, 8, 8), "1 or 3 channels"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "uint8"),
    ],
)
def test_bad_input_is_rejected(x, match):
    with pytest.raises(ValueError, match=match):
        A.recipe("simclr", 8)(x)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        A.recipe("simclr", 0)
    with pytest.raises(ValueError, match="positive"):
        A.recipe("simclr", (32, -1))
    with pytest.raises(ValueError, match="simclr.*moco_v2.*byol.*dino"):
        A.recipe("simclr2", 32)
    with pytest.raises(ValueError, match="n_local"):
        A.recipe("simclr", 32, n_local=2)
    with pytest.raises(ValueError, match="boxes"):
        A.resized_crop(_images(batch=2), torch.tensor([[0, 0, 40, 8], [0, 0, 8, 8]]), 8)
    with pytest.raises(ValueError, match="hue"):
        A.adjust_hue(_images(batch=2), 0.7)
    with pytest.raises(ValueError, match="kernel_size"):
        A.apply_blur(_images(batch=2), 1.0, 4)
    with pytest.raises(ValueError, match="p is a probability"):
        A.grayscale(_images(batch=2), p=1.5)


def test_one_channel_views_ignore_saturation_hue_and_grayscale():
    # As in torchvision, these three are identities on 1-channel images, so a
    # view with only them must return the image unchanged.
    x = _images(batch=32, channels=1)
    view = A.View(size=(32, 32), scale=None, flip_p=0.0, jitter=(0.0, 0.0, 0.9, 0.5), jitter_p=1.0, gray_p=1.0, blur_p=0.0)
    torch.testing.assert_close(A.augment_view(x, view, _gen()), x, atol=0, rtol=0)
    # Brightness and contrast still act.
    view = A.View(size=(32, 32), scale=None, flip_p=0.0, jitter=(0.4, 0.4, 0.0, 0.0), jitter_p=1.0, gray_p=0.0, blur_p=0.0)
    assert (A.augment_view(x, view, _gen()) - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("channels", [1, 3])
def test_the_flip_recipe_mirrors_about_half_the_images_and_leaves_the_rest_exact(channels):
    # The pretext tasks' view (rotation, jigsaw, relative location, DIM, CPC, colorization): the whole
    # image, mirrored with probability 0.5 and nothing else. (Until 2026-12-06 a view without a crop
    # never drew its flip, so this recipe never mirrored anything.)
    x = torch.randint(0, 256, (400, channels, 12, 10), dtype=torch.uint8, generator=_gen())
    (out,) = A.recipe("flip", (12, 10))(x, generator=_gen(4))
    xf = A.to_float(x)
    same = (out == xf).flatten(1).all(1)
    mirrored = (out == xf.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())  # every image exactly itself or exactly its mirror
    flipped = int((mirrored & ~same).sum())
    assert 200 - 3 * 10 < flipped < 200 + 3 * 10  # Binomial(400, 0.5): sd 10
    # The same recipe at another size resizes the whole image (no crop) and mirrors the same way.
    (small,) = A.recipe("flip", 6)(x, generator=_gen(4))
    assert small.shape == (400, channels, 6, 6)
    # Views without a flip draw nothing more than before (the "none" view: the image itself).
    (plain,) = A.recipe("none", (12, 10))(x, generator=_gen(4))
    assert torch.equal(plain, xf)


@pytest.mark.parametrize("channels", [1, 3])
def test_pad_shifts_whole_images_as_torchvision_random_crop_with_zero_padding(channels):
    # View.pad: torchvision's RandomCrop(size, padding=pad) (the CIFAR loaders' translation, RotNet's
    # included): pad every side with zeros, take an image-sized crop at a random corner. For the drawn
    # corner of each sample, our view equals torchvision's crop of the zero-padded image, mirrored
    # where the flip was drawn, pixel for pixel.
    x = torch.randint(0, 256, (300, channels, 10, 12), dtype=torch.uint8, generator=_gen())
    view = runner.View(size=(10, 12), scale=None, flip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0, pad=3)
    xf = A.to_float(x)
    plan = runner._plan_view(view, xf.shape, xf.device, _gen(2))
    out = runner._run_view(xf, view, plan)
    shifts = plan.boxes[:, :2]
    assert set(shifts.flatten().tolist()) == set(range(-3, 4))  # uniform over [-pad, pad], 2 x 300 draws
    assert torch.equal(plan.boxes[:, 2:], torch.tensor([[10, 12]]).expand(300, 2))
    for i in range(300):
        top, left = (int(v) + 3 for v in shifts[i])  # the corner in the padded image
        want = TF.crop(TF.pad(x[i], [3, 3, 3, 3], fill=0), top, left, 10, 12)
        if plan.flip[i]:
            want = TF.horizontal_flip(want)
        torch.testing.assert_close(out[i], A.to_float(want[None])[0], atol=1e-6, rtol=0)
    # The engine's paths draw the same and give the same views.
    (again,) = A.Augmentation([view])(x, generator=_gen(2))
    torch.testing.assert_close(again, out, atol=1e-6, rtol=0)
    # Bad values fail where they are set.
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="pad must be a whole number"):
            runner.View(size=(8, 8), scale=None, pad=bad)
    with pytest.raises(ValueError, match="pad shifts the whole image"):
        runner.View(size=(8, 8), pad=2)


def test_shift_flip_is_rotnets_cifar_loader_and_rotations_views():
    # RotNet's CIFAR loader: RandomCrop(32, padding=4), RandomHorizontalFlip(): 4 pixels at 32, an eighth.
    from selfsup.methods import Rotation

    for side, pad in ((32, 4), (28, 4), (64, 8), (16, 2)):
        (view,) = A.recipe("shift_flip", side).views
        assert (view.pad, view.scale, view.flip_p, view.jitter_p, view.gray_p, view.blur_p) == (pad, None, 0.5, 0, 0, 0)
    assert Rotation.augment_recipe == "shift_flip"


def test_cpu_chunking_does_not_change_views(monkeypatch):
    # Parameters are drawn for the whole batch before the chunked image work.
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=_gen())
    augment = A.recipe("dino", 32, n_local=1)
    whole = augment(x, generator=_gen(5))
    assert len(whole) == 3
    monkeypatch.setattr(runner, "_CPU_CHUNK_BYTES", 3 * 32 * 32 * 4 * 7)  # chunks of 7 samples
    chunked = augment(x, generator=_gen(5))
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name, channels, path", [
    ("simclr", 3, "grouped"), ("simclr", 1, "grouped"), ("byol", 3, "grouped"), ("eval", 3, "grouped"),
    ("simclr", 3, "fused"), ("byol", 3, "fused"), ("eval", 3, "fused"), ("shift_flip", 3, "grouped"),
    ("shift_flip", 3, "fused")])
def test_cpu_paths_equal_masked_path(name, channels, path, monkeypatch):
    # The grouped CPU path sorts the samples and runs each step only on the rows
    # it changes; the masked path runs every step on every row with exact
    # identities. Same plan, so the views must agree bit for bit, and small
    # chunks (cut inside jitter groups and blur/gray/solarize runs) change nothing.
    # The fused C kernel (RGB only) runs the same arithmetic in another order of
    # float operations (the image mean), so it agrees to float rounding.
    if path == "fused":
        _require_kernel()
    run = runner._run_view_fused if path == "fused" else runner._run_view_grouped
    x = A.to_float(torch.randint(0, 256, (64, channels, 32, 32), dtype=torch.uint8, generator=_gen()))
    monkeypatch.setattr(runner, "_CPU_CHUNK_BYTES", channels * 32 * 32 * 4 * 5)
    for view in A.recipe(name, (32, 24) if name == "eval" else 32).views:
        plan = runner._plan_view(view, x.shape, x.device, _gen(7))
        if plan.group is not None:
            assert set(plan.group.tolist()) == ({0, 3} if channels == 1 else {0, 1, 2, 3, 4})
        tol = 2e-6 if path == "fused" else 0.0
        torch.testing.assert_close(run(x, view, plan), runner._run_view(x, view, plan), atol=tol, rtol=0)


@pytest.mark.slow  # compiles three graphs, 5-15 s each on a CPU
def test_compiled_views_equal_the_reference_arithmetic():
    # train.compile makes the views through torch.compile of the masked path's arithmetic (inductor
    # fuses it into a few kernels). The parameters are drawn by the same RNG calls, so a seeded
    # Augmentation gives the same views with and without it, to float rounding.
    x = torch.randint(0, 256, (48, 1, 28, 28), dtype=torch.uint8, generator=_gen())
    augment = A.recipe("simclr", 28)  # two views of one recipe: one graph
    eager = augment(x, generator=_gen(3))
    before = runner._compiled_view.cache_info().currsize
    augment.compiled = True
    compiled = augment(x, generator=_gen(3))
    assert runner._compiled_view.cache_info().currsize == before + 1
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # RGB: every step (BYOL's second view: crop, flip, jitter, grayscale, blur 0.1, solarize 0.2), and a
    # view that only resizes (no crop boxes drawn), against the masked path itself.
    xf = A.to_float(torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=_gen()))
    for view in [A.recipe("byol", 32).views[1], A.recipe("eval", (24, 20)).views[0]]:
        assert view.scale is None or (view.blur_p > 0 and view.solarize_p > 0 and view.gray_p > 0)
        plan = runner._plan_view(view, xf.shape, xf.device, _gen(7))
        out = runner._run_view_compiled(xf, view, plan)
        torch.testing.assert_close(out, runner._run_view(xf, view, plan).clamp(0, 1), atol=1e-5, rtol=0)
        assert out.min() >= 0 and out.max() <= 1
    # RGB on a CPU with the C kernel built keeps the kernel (2.1x the compiled path, benchmarks/augment.py).
    if _kernels.available():
        rgb = A.recipe("byol", 32)
        rgb.compiled = True
        count = runner._compiled_view.cache_info().currsize
        rgb(x.expand(-1, 3, -1, -1), generator=_gen(3))
        assert runner._compiled_view.cache_info().currsize == count


def test_fused_kernel_matches_torchvision_ops_in_each_samples_order():
    _require_kernel()
    n, k = 96, 5
    x = _images(batch=n, height=12, width=10)
    x[:4] = x[:4].round()  # saturated pixels and ties between channels
    x[4:8] = x[4:8, :1].expand(-1, 3, -1, -1)  # gray pixels: zero chroma
    params = A.sample_jitter(n, 0.4, 0.4, 0.4, 0.1, p=0.8, generator=_gen(5))
    gray, blur, solarize = (torch.rand(n, generator=_gen(seed)) < 0.4 for seed in (6, 7, 8))
    sigma = 0.1 + 1.9 * torch.rand(n, generator=_gen(9))
    taps = _blur_taps(sigma, k)
    steps, hue, group = _jitter_plan(*params, colour=True)
    out = torch.empty_like(x)
    assert _kernels.view(x, out, steps, hue, group - 1, gray, taps, taps, blur, solarize, 0.5)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(n):
        expected = x[i]
        if params.applied[i]:
            for op in params.order[i].tolist():
                expected = ops[op](expected, params.factors[i, op].item())
        if gray[i]:
            expected = TF.rgb_to_grayscale(expected, num_output_channels=3)
        if blur[i]:
            expected = TF.gaussian_blur(expected, [k, k], [sigma[i].item()] * 2)
        if solarize[i]:
            expected = TF.solarize(expected, 0.5)
        torch.testing.assert_close(out[i], expected, atol=TOL, rtol=0)


def test_fused_kernel_rejects_bad_shapes():
    _require_kernel()
    x, off = _images(batch=2), torch.zeros(2, dtype=torch.bool)
    args = (torch.zeros(2, 3, 3), torch.zeros(2), torch.zeros(2), off, torch.ones(2, 1), torch.ones(2, 1), off, off)
    with pytest.raises(ValueError, match="steps must have shape"):
        _kernels.view(x, torch.empty_like(x), torch.zeros(3, 3, 3), *args[1:])
    with pytest.raises(ValueError, match="out must be"):
        _kernels.view(x, torch.empty(2, 3, 8, 8), *args)
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        _kernels.view(x[:, :1], torch.empty_like(x[:, :1]), *args)


def test_fused_kernel_builds_into_an_empty_cache(monkeypatch, tmp_path):
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler")
    monkeypatch.setattr(_kernels, "_library", None)
    monkeypatch.setattr(_kernels, "_failed", False)
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    assert _kernels.available()
    assert [p.suffix for p in (tmp_path / "kernels").iterdir()] == [".so"]  # no temporary left behind


def test_fused_kernel_falls_back_when_it_cannot_be_built(monkeypatch, tmp_path):
    monkeypatch.setattr(_kernels, "_library", None)
    monkeypatch.setattr(_kernels, "_failed", False)
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="no-such-compiler"):
        assert not _kernels.available()
    # The views still come out, through the grouped torch path.
    views = A.recipe("simclr", 16)(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(4, 3, 16, 16)] * 2


def test_fused_kernel_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(_kernels, "_library", None)
    monkeypatch.setattr(_kernels, "_failed", False)
    monkeypatch.setenv("SELFSUP_KERNELS", "0")
    assert not _kernels.available()


@pytest.mark.parametrize("name", ["simclr", "moco_v1", "moco_v2", "byol", "dino"])
def test_views_stay_exactly_in_unit_range_for_saturated_images(name):
    torch.manual_seed(0)
    images = torch.where(torch.rand(64, 3, 32, 32) < 0.5, 255, 0).to(torch.uint8)
    for view in A.recipe(name, 32)(images):
        assert view.min().item() >= 0.0 and view.max().item() <= 1.0


def test_view_geometry_carries_each_views_pixels_back_to_where_they_came_from():
    # Each image is black with one bright 3x3 dot at a known place; every view (random resized crops
    # with flips, a whole-image view shifted with a black border, a resized whole image) is made by the
    # engine's path, the dot found in it by its centroid, and carried back with the view's box and flip:
    # it must land on the dot's true centre (to the antialiasing's blur, 0.1 pixel) wherever the dot
    # lies wholly inside the view's box. The views themselves are forward's, draw for draw.
    n, side = 200, 28
    gen = _gen(5)
    ys, xs = torch.randint(4, 24, (n,), generator=gen), torch.randint(4, 24, (n,), generator=gen)
    x = torch.zeros(n, 1, side, side)
    for i in range(n):
        x[i, 0, ys[i] - 1:ys[i] + 2, xs[i] - 1:xs[i] + 2] = 1.0
    plain = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    augmentation = A.Augmentation([runner.View(size=(28, 28), scale=(0.3, 1.0), **plain),
                                   runner.View(size=(20, 24), scale=(0.3, 1.0), **plain),
                                   runner.View(size=(28, 28), scale=None, pad=5, **plain),
                                   runner.View(size=(14, 14), scale=None, flip_p=0.0, **plain)])
    views, boxes, flips = augmentation.views_and_geometry(x, generator=_gen(6))
    for view, again in zip(views, augmentation(x, generator=_gen(6))):
        assert torch.equal(view, again)
    assert boxes.shape == (n, 4, 4) and flips.shape == (n, 4) and flips[:, 0].any() and not flips[:, 0].all()
    assert torch.equal(boxes[:, 3], torch.tensor([[0.0, 0.0, 28.0, 28.0]]).expand(n, 4))
    truth = torch.stack((ys.float() + 0.5, xs.float() + 0.5), dim=1)
    for v, view in enumerate(views):
        mass = view[:, 0]
        rows = torch.arange(mass.shape[1], dtype=torch.float32) + 0.5
        cols = torch.arange(mass.shape[2], dtype=torch.float32) + 0.5
        total = mass.sum(dim=(1, 2)).clamp(min=1e-6)
        centroid = torch.stack(((mass.sum(2) * rows).sum(1) / total, (mass.sum(1) * cols).sum(1) / total), dim=1)
        back = A.geometry.view_to_image(centroid[:, None], boxes[:, v], flips[:, v], tuple(view.shape[-2:]))[:, 0]
        box = boxes[:, v]
        inside = ((truth[:, 0] - 2 >= box[:, 0]) & (truth[:, 0] + 2 <= box[:, 0] + box[:, 2])
                  & (truth[:, 1] - 2 >= box[:, 1]) & (truth[:, 1] + 2 <= box[:, 1] + box[:, 3])
                  & (truth[:, 0] - 2 >= 0) & (truth[:, 1] - 2 >= 0))
        assert inside.sum() > n // 3, (v, int(inside.sum()))
        assert (back - truth)[inside].abs().max() < 0.1, v
        # And the inverse carries the true centre into the view.
        there = A.geometry.image_to_view(truth[:, None], boxes[:, v], flips[:, v], tuple(view.shape[-2:]))[:, 0]
        assert (there - centroid)[inside].abs().max() < 0.1, v


def _interpreted_triton(monkeypatch):
    """Triton's CPU interpreter for the fused views (the kernel is loaded per mode)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from selfsup.augment import _triton

    assert _triton.available() and _triton.interpreted()
    return _triton


@pytest.mark.parametrize("channels, side, views", [
    (1, 28, [("simclr", 0), ("moco_v2", 0), ("shift_flip", 0), ("none", 0)]),
    (3, 32, [("byol", 0), ("byol", 1), ("dino", 2)]),
])
def test_fused_views_equal_the_reference_arithmetic_in_tritons_interpreter(monkeypatch, channels, side, views):
    # train.fused_views: one Triton program per image makes the whole view (crop, resize and flip as
    # two matrix products, the jitter in each sample's order with its hue rotation, grayscale, the blur
    # as two more products, solarize, the clamp). For the same drawn plan its pixels are the masked
    # reference path's to float rounding, for every step (BYOL's two views between them draw every
    # one, solarize included; DINO's local crops are 12-pixel views; the pretext tasks' views have no
    # crop or only a shift), from uint8 and float input alike; an Augmentation with fused=True draws
    # what one without does. The interpreter runs about 0.3 s per image, hence 4 images.
    _triton = _interpreted_triton(monkeypatch)
    x = torch.randint(0, 256, (4, channels, side, side), dtype=torch.uint8, generator=_gen())
    xf = A.to_float(x)
    steps_seen = set()
    for name, index in views:
        view = A.recipe(name, side).output_views[index]
        plan = runner._plan_view(view, xf.shape, xf.device, _gen(3))
        steps_seen |= {field for field, value in plan._asdict().items() if value is not None}
        want = runner._run_view(xf, view, plan).clamp(0.0, 1.0)
        torch.testing.assert_close(_triton.run_view(x, view, plan)[0], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(_triton.run_view(xf, view, plan)[0], want, atol=1e-5, rtol=0)
    every = {"boxes", "flip", "steps", "group", "sigma"} | ({"hue", "gray", "solarize"} if channels == 3 else set())
    assert steps_seen >= every
    augmentation = A.recipe(views[0][0], side)
    fused = A.Augmentation(augmentation.views, fused=True)(x, generator=_gen(4))
    for a, b in zip(augmentation(x, generator=_gen(4)), fused, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # A view the kernel cannot hold (over 64 pixels a side) keeps the other paths.
    big = torch.rand(2, channels, 80, 80)
    assert not _triton.usable(big, runner.View(size=(72, 72)))
    (out,) = A.Augmentation([runner.View(size=(72, 72))], fused=True)(big, generator=_gen(5))
    (ref,) = A.Augmentation([runner.View(size=(72, 72))])(big, generator=_gen(5))
    assert torch.equal(out, ref)


def test_the_fused_kernel_uses_the_references_luma_weights():
    pytest.importorskip("triton")
    from selfsup.augment import _common, _triton_kernel

    assert (_triton_kernel.LUMA_R.value, _triton_kernel.LUMA_G.value, _triton_kernel.LUMA_B.value) == _common._LUMA


@pytest.mark.slow  # the real compiler and ptxas, 5-10 s per specialisation
@pytest.mark.parametrize("channels, side, out, draw", [(3, 32, 32, False), (3, 32, 32, True), (1, 28, 12, True)])
def test_the_fused_kernel_compiles_for_a_hopper_gpu_without_one(channels, side, out, draw):
    # The interpreter checks the arithmetic; this checks that Triton's compiler and ptxas accept the
    # kernel for an H100/H200 (sm_90), ahead of time and without a GPU, for the branches a run meets: RGB
    # CIFAR-size views with every step (parameters given, or drawn in the kernel), one-channel views (no
    # hue) drawn in the kernel at a 12-pixel size (DINO's local crops: 16-wide tiles).
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from selfsup.augment import _triton
    from selfsup.augment._triton_kernel import view_kernel

    pointers = {"x_ptr": "*u8", "position_ptr": "*i32", "flags_ptr": "*i32", "seed_ptr": "*i64"}
    constants = dict(C=channels, S=3 if channels == 3 else 2, HP=_triton._padded(side), WP=_triton._padded(side),
                     OHP=_triton._padded(out), OWP=_triton._padded(out), CROP=True, JITTER=True, GRAY=True, BLUR=True,
                     SOLARIZE=True, KY=A.blur_kernel_size(out), KX=A.blur_kernel_size(out), DRAW=draw,
                     RANDOM_CROP=True, SHIFT=False)
    signature = {name: "constexpr" if name in constants else pointers.get(name, "*fp32") if name.endswith("_ptr")
                 else "i32" if name in ("height", "width", "out_h", "out_w") else "fp32"
                 for name in view_kernel.arg_names}
    assert set(constants) <= set(signature) and sum(t == "constexpr" for t in signature.values()) == len(constants)
    source = ASTSource(fn=view_kernel, signature=signature,
                       constexprs={(list(signature).index(name),): value for name, value in constants.items()})
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    except FileNotFoundError as missing:  # a Triton without its bundled ptxas
        pytest.skip(f"no ptxas: {missing}")
    assert ".entry view_kernel" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 0


def _plan_from_draws(record: torch.Tensor, view, channels: int):
    """A runner plan from the fused kernel's recorded draws (_triton.draw_parameters' columns)."""
    n = record.shape[0]
    f = record[:, 5:9]
    slots = record[:, 9:12].long()
    position = record[:, 12].long()
    steps = torch.zeros(n, 3 if channels == 3 else 2, 3)
    ops = range(3 if channels == 3 else 2)
    for o in ops:  # brightness (f, 0, 0), contrast (f, 0, 1 - f), saturation (f, 1 - f, 0) at the op's slot
        coefficients = torch.stack((f[:, o], (1 - f[:, o]) * (o == 2), (1 - f[:, o]) * (o == 1)), dim=1)
        steps[torch.arange(n), slots[:, o]] = coefficients
    group = torch.where(position >= 0, position + 1, 0)
    crop = view.scale is not None or view.pad > 0 or view.flip_p > 0
    return runner._ViewPlan(
        record[:, :4].round().long() if crop else None, record[:, 4] > 0.5 if crop else None,
        steps if view.jitter_p > 0 else None, f[:, 3] if view.jitter_p > 0 and channels == 3 else None,
        group if view.jitter_p > 0 else None, record[:, 13] > 0.5 if view.gray_p > 0 and channels == 3 else None,
        record[:, 14] if view.blur_p > 0 else None, record[:, 15] > 0.5 if view.solarize_p > 0 else None)


@pytest.mark.slow  # Triton's interpreter draws 2,000 samples' parameters and makes 12 views: 15-20 s
def test_fused_draws_come_from_the_papers_distributions_and_make_the_reference_views(monkeypatch):
    # train.fused_draws: the kernel also draws every parameter (Philox, seeded by one draw of the run's
    # RNG). Not the other paths' draws, so the test is of distributions, against independent references:
    # the crop boxes against torchvision's RandomResizedCrop.get_params (area, aspect ratio, position),
    # the jitter factors against their uniform ranges, the order uniform over the 24 permutations, every
    # probability within 4.5 binomial standard deviations. Then the pixels: the views the kernel makes
    # with its own draws equal the reference path's for those draws (recorded by draw_parameters with the
    # same seed) to 1e-5, and one seed always gives the same views.
    _triton = _interpreted_triton(monkeypatch)
    n, side = 2000, 32
    view = A.recipe("byol", side).views[1]  # every step: crop, flip, jitter, gray, blur, solarize
    record = _triton.draw_parameters(torch.tensor([2024]), view, 3, side, side, n)
    top, left, height, width = record[:, :4].T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= side).all() and (left + width <= side).all()
    torch.manual_seed(0)
    image = torch.zeros(1, side, side)
    reference = torch.tensor([T.RandomResizedCrop.get_params(image, list(view.scale), list(view.ratio))
                              for _ in range(n)], dtype=torch.float32)  # (top, left, height, width)
    ours = torch.stack((height * width, width / height, top / (side - height + 1), left / (side - width + 1)), dim=1)
    theirs = torch.stack((reference[:, 2] * reference[:, 3], reference[:, 3] / reference[:, 2],
                          reference[:, 0] / (side - reference[:, 2] + 1), reference[:, 1] / (side - reference[:, 3] + 1)), dim=1)
    for column in range(4):
        assert scipy.stats.ks_2samp(ours[:, column].numpy(), theirs[:, column].numpy()).pvalue > 1e-4, column

    def rate(values, p):
        assert abs(float(values.float().mean()) - p) < 4.5 * math.sqrt(p * (1 - p) / n) + 1e-9

    rate(record[:, 4] > 0.5, view.flip_p)
    b, c, s, h = view.jitter
    for column, (low, high) in zip(range(5, 9), [(1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s), (-h, h)]):
        assert scipy.stats.kstest(record[:, column].numpy(), "uniform", args=(low, high - low)).pvalue > 1e-4
    applied = record[:, 12] >= 0
    rate(applied, view.jitter_p)
    ranks = record[applied][:, 9:13].long()  # slots of the three blends and the hue's position: a permutation
    hue_rank = ranks[:, 3:]
    full = torch.cat((ranks[:, :3] + (ranks[:, :3] >= hue_rank).long(), hue_rank), dim=1)
    assert torch.equal(full.sort(dim=1).values, torch.arange(4).expand(len(full), 4))
    counts = torch.unique(full, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and scipy.stats.chisquare(counts.numpy()).pvalue > 1e-4
    rate(record[:, 13] > 0.5, view.gray_p)
    blurred = record[:, 14] > 0
    rate(blurred, view.blur_p)
    assert scipy.stats.kstest(record[blurred, 14].numpy(), "uniform", args=(0.1, 1.9)).pvalue > 1e-4
    rate(record[:, 15] > 0.5, view.solarize_p)
    # RotNet's shifted views (View.pad = 4 at 28 pixels): RandomCrop(28, padding=4)'s corner offsets, uniform
    # over -4..4 on each axis, the box the image's size.
    shifted = A.recipe("shift_flip", 28).views[0]
    record = _triton.draw_parameters(torch.tensor([5]), shifted, 1, 28, 28, n)
    assert torch.equal(record[:, 2:4], torch.full((n, 2), 28.0))
    for column in (0, 1):
        values, counts = torch.unique(record[:, column], return_counts=True)
        assert values.tolist() == list(range(-4, 5)) and scipy.stats.chisquare(counts.numpy()).pvalue > 1e-4
    rate(record[:, 4] > 0.5, shifted.flip_p)

    for channels, name in ((3, "byol"), (1, "moco_v2")):
        x = torch.randint(0, 256, (3, channels, side, side), dtype=torch.uint8, generator=_gen(channels))
        for view in A.recipe(name, side).views:
            seed = torch.tensor([7])
            out, boxes = _triton.run_view(x, view, seed=seed)
            drawn = _triton.draw_parameters(seed, view, channels, side, side, 3)
            want = runner._run_view(A.to_float(x), view, _plan_from_draws(drawn, view, channels)).clamp(0.0, 1.0)
            torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
            assert torch.equal(boxes, drawn[:, :5])
    assert torch.equal(_triton.run_view(x, view, seed=seed)[0], out)  # one seed, one set of views


def test_fused_draws_report_where_each_view_came_from(monkeypatch):
    # views_and_geometry with the kernel drawing: the boxes and flips it reports carry each view's bright
    # dot back to the dot's place in its image (as for the other paths, above).
    _interpreted_triton(monkeypatch)
    n, side = 12, 28
    gen = _gen(8)
    ys, xs = torch.randint(6, 22, (n,), generator=gen), torch.randint(6, 22, (n,), generator=gen)
    x = torch.zeros(n, 1, side, side)
    for i in range(n):
        x[i, 0, ys[i] - 1:ys[i] + 2, xs[i] - 1:xs[i] + 2] = 1.0
    view = runner.View(size=(28, 28), scale=(0.5, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    augmentation = A.Augmentation([view], fused=True, fused_draws=True)
    (out,), boxes, flips = augmentation.views_and_geometry(x, generator=_gen(9))
    truth = torch.stack((ys.float() + 0.5, xs.float() + 0.5), dim=1)
    mass = out[:, 0]
    centre = torch.arange(side, dtype=torch.float32) + 0.5
    total = mass.sum(dim=(1, 2)).clamp(min=1e-6)
    centroid = torch.stack(((mass.sum(2) * centre).sum(1) / total, (mass.sum(1) * centre).sum(1) / total), dim=1)
    back = A.geometry.view_to_image(centroid[:, None], boxes[:, 0], flips[:, 0], (side, side))[:, 0]
    box = boxes[:, 0]
    inside = ((truth[:, 0] - 2 >= box[:, 0]) & (truth[:, 0] + 2 <= box[:, 0] + box[:, 2])
              & (truth[:, 1] - 2 >= box[:, 1]) & (truth[:, 1] + 2 <= box[:, 1] + box[:, 3]))
    assert inside.sum() >= 3 and (back - truth)[inside].abs().max() < 0.1
    assert flips[:, 0].any() and not flips[:, 0].all()  # both kinds, so the mirror is exercised
