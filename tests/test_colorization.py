"""Colorization: Lab against scikit-image and the CIE formulas, the ab quantisation, soft encoding and
class rebalancing by hand, and the method's loss, prior and colour-blind evaluation encoder."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.augment import lab_to_rgb, rgb_to_lab
from selfsup.config import load_config
from selfsup.engine import build_method
from selfsup.errors import ConfigError
from selfsup.methods import METHODS, Batch, Colorization, Progress
from selfsup.methods.colorization import ab_bins, rebalancing_weights, soft_encode
from selfsup.nn import build_backbone

skimage_color = pytest.importorskip("skimage.color")


def test_lab_matches_scikit_image_and_round_trips_within_one_level():
    x = torch.randint(0, 256, (3, 3, 17, 9), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    lab = rgb_to_lab(x)
    reference = skimage_color.rgb2lab(x.permute(0, 2, 3, 1).numpy() / 255.0)
    np.testing.assert_allclose(lab.permute(0, 2, 3, 1).numpy(), reference, atol=1e-3)
    back = lab_to_rgb(rgb_to_lab(x.double() / 255))
    assert (back * 255 - x.double()).abs().max() < 1.0  # within 1/255
    np.testing.assert_allclose(lab_to_rgb(torch.from_numpy(reference).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy(),
                               skimage_color.lab2rgb(reference), atol=1e-6)


def test_lab_of_white_and_pure_red_by_the_cie_formula():
    white, red = rgb_to_lab(torch.tensor([[[[1.0]], [[1.0]], [[1.0]]], [[[1.0]], [[0.0]], [[0.0]]]]).double())
    np.testing.assert_allclose(white.flatten().numpy(), [100.0, 0.0, 0.0], atol=0.02)
    # sRGB red: linear (1, 0, 0) -> XYZ = first column of the sRGB matrix, then f(t) = t^(1/3)
    x, y, z = 0.412453 / 0.95047, 0.212671, 0.019334 / 1.08883
    f = [t ** (1 / 3) for t in (x, y, z)]
    expected = [116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])]
    np.testing.assert_allclose(red.flatten().numpy(), expected, rtol=1e-6)
    assert expected[0] == pytest.approx(53.24, abs=0.01)
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_lab(torch.rand(1, 1, 4, 4))


def test_ab_bins_are_the_cells_that_srgb_colours_reach():
    bins = ab_bins(10)
    axis = np.linspace(0, 1, 64)
    cube = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(1, -1, 3)
    ab = skimage_color.rgb2lab(cube)[0, :, 1:]
    # richzhang/colorization's pts_in_hull.npy: centres on multiples of 10, each the middle of a 10x10 cell.
    reached = {tuple(cell) for cell in np.round(ab / 10).astype(int)}
    assert {tuple(cell) for cell in (bins.numpy() / 10).astype(int)} == reached
    assert torch.equal(bins, bins.round(decimals=-1))
    assert (bins == torch.tensor([0.0, 0.0])).all(dim=1).any()  # neutral gray is a centre
    assert not (bins == torch.tensor([-90.0, -90.0])).all(dim=1).any()  # a saturated cyan-blue no sRGB colour has


def test_soft_encoding_spreads_each_pixel_over_its_five_nearest_bins():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [20.0, 0.0], [-10.0, 0.0],
                            [50.0, 50.0]])
    targets = soft_encode(torch.tensor([[2.0, 1.0]]), centres, neighbours=5, sigma=5.0)
    d2 = ((centres - torch.tensor([2.0, 1.0])) ** 2).sum(1)
    weights = torch.exp(-d2 / 50)
    weights[[4, 6]] = 0  # the two farthest bins (20, 0) and (50, 50) are not among the five nearest
    torch.testing.assert_close(targets[0], weights / weights.sum())


def test_rebalancing_weights_by_eq_4():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [40.0, 0.0]])
    prior = torch.tensor([0.7, 0.2, 0.1])
    kernel = np.exp(-np.array([[0, 100, 1600], [100, 0, 900], [1600, 900, 0]]) / 50)
    smoothed = kernel @ prior.numpy()
    smoothed /= smoothed.sum()
    w = 1 / (0.5 * smoothed + 0.5 / 3)
    w /= (smoothed * w).sum()
    np.testing.assert_allclose(rebalancing_weights(prior, centres, 0.5, 5.0).numpy(), w, rtol=1e-5)
    assert w[2] > w[0]  # the rare colour weighs more


def test_rebalancing_mixes_the_uniform_over_the_bins_the_prior_has_as_priorfactor():
    # PriorFactor: uni_probs[prior_probs != 0] = 1, normalised. A bin 1000 ab units away keeps a smoothed
    # prior of exactly 0, so the uniform share is 1/2 over the two others, not 1/3 over all three.
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1000.0, 0.0]])
    prior = torch.tensor([0.6, 0.4, 0.0])
    kernel = np.exp(-np.array([[0, 100], [100, 0]]) / 50)
    smoothed = kernel @ prior.numpy()[:2]
    smoothed /= smoothed.sum()
    w = 1 / (0.5 * smoothed + 0.5 / 2)
    w /= (smoothed * w).sum()
    weights = rebalancing_weights(prior, centres, 0.5, 5.0).numpy()
    np.testing.assert_allclose(weights[:2], w, rtol=1e-5)
    assert weights[2] == pytest.approx(w.max())  # never seen: the largest finite weight, not infinity


def make(side: int = 16) -> Colorization:
    torch.manual_seed(0)
    return Colorization(build_backbone("convnet", in_channels=3, image_size=side, width=4)).train()


def test_loss_is_the_rebalanced_soft_cross_entropy_at_a_quarter_resolution():
    method = make()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = method.training_step(Batch([x], torch.arange(2)), Progress(0, 10, 5))
    lab = rgb_to_lab(x)
    with torch.no_grad():
        gray = (lab[:, :1] / 100).repeat(1, 3, 1, 1)
        net = method.backbone.net
        features = net[:-2]((gray - method.backbone.mean) / method.backbone.std)
        logits = F.interpolate(method.head(features), size=(4, 4), mode="bilinear", align_corners=False)
    ab = F.avg_pool2d(lab[:, 1:], 4).permute(0, 2, 3, 1).reshape(-1, 2)  # the mean ab of each 4x4 block
    targets = soft_encode(ab, method.centres)
    prior = targets.sum(0) / targets.sum()
    torch.testing.assert_close(method.prior, prior)  # set from this first batch
    w = rebalancing_weights(prior, method.centres)[targets.argmax(1)]
    log_p = F.log_softmax(logits.permute(0, 2, 3, 1).reshape(-1, len(method.centres)), dim=1)
    expected = (-(targets * log_p).sum(1) * w).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # task_accuracy: the share of quarter-resolution pixels whose most probable bin is the target's
    # nearest. A head that always names the commonest nearest bin scores that bin's share.
    nearest = targets.argmax(1)
    common = int(nearest.mode().values)
    biased = make()
    with torch.no_grad():
        biased.head.weight.zero_()
        biased.head.bias.zero_()
        biased.head.bias[common] = 5.0
    scored = biased.training_step(Batch([x], torch.arange(2)), Progress(0, 10, 5))["task_accuracy"].item()
    assert scored == pytest.approx(float((nearest == common).float().mean()), abs=1e-6) and scored > 0

    restored = make()
    restored.load_state_dict(method.state_dict())
    restored.training_step(Batch([torch.rand(2, 3, 16, 16)], torch.arange(2)), Progress(1, 10, 5))
    torch.testing.assert_close(restored.prior, prior)  # kept, not re-estimated


def test_official_targets_take_every_fourth_pixel_and_gray_images_weigh_nothing():
    # colorization_train_val_v2.prototxt: data_ab_ss is a stride-4 1x1 convolution of weight 1 (pixels 0, 4, 8, ...),
    # NNEncLayer soft-encodes it over its nearest bins (here 5, the paper's, by scikit-learn's neighbour search as
    # NNEncode's), and NonGrayMaskLayer zeroes the rebalancing weight of an image with no |ab| > 5 among them.
    from sklearn.neighbors import NearestNeighbors

    cfg = load_config(None, ["method=colorization", "data.name=photos", "backbone.width=4",
                             "method_args.targets=sampled", "method_args.gray_mask=true"])
    torch.manual_seed(0)
    method = build_method(cfg, in_channels=3, image_size=16, mean=[0.5] * 3, std=[0.25] * 3).train()
    assert (method.targets, method.gray_mask) == ("sampled", True)
    g = torch.Generator().manual_seed(4)
    gray = torch.rand(1, 1, 16, 16, generator=g).expand(1, 3, 16, 16)        # R = G = B: no colour anywhere
    x = torch.cat([gray, torch.rand(1, 3, 16, 16, generator=g)])
    out = method.training_step(Batch([x], torch.arange(2)), Progress(0, 10, 5))
    lab = rgb_to_lab(x).double()
    ab = lab[:, 1:, 0:16:4, 0:16:4].permute(0, 2, 3, 1).reshape(-1, 2).numpy()  # 2 images x 4 x 4 pixels
    centres = method.centres.double().numpy()
    distances, index = NearestNeighbors(n_neighbors=5).fit(centres).kneighbors(ab)
    weights = np.exp(-distances ** 2 / (2 * 5.0 ** 2))
    targets = np.zeros((len(ab), len(centres)))
    np.put_along_axis(targets, index, weights / weights.sum(1, keepdims=True), axis=1)
    np.testing.assert_allclose(method.prior.double().numpy(), targets.sum(0) / targets.sum(), atol=1e-6)
    mask = np.repeat([float(np.abs(image).max() > 5) for image in ab.reshape(2, 16, 2)], 16)
    assert list(mask[::16]) == [0.0, 1.0]
    with torch.no_grad():
        features = method.backbone.net[:-2]((((lab[:, :1] / 100).repeat(1, 3, 1, 1)).float() - method.backbone.mean)
                                            / method.backbone.std)
        logits = F.interpolate(method.head(features), size=(4, 4), mode="bilinear", align_corners=False)
    log_p = F.log_softmax(logits.permute(0, 2, 3, 1).reshape(-1, len(centres)), dim=1).double().numpy()
    w = rebalancing_weights(method.prior, method.centres).double().numpy()[targets.argmax(1)]
    expected = np.mean(-(targets * log_p).sum(1) * w * mask)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-4)
    pooled = make()
    assert (pooled.targets, pooled.gray_mask) == ("pooled", False)  # the measured defaults
    with pytest.raises(ValueError, match="targets must be 'pooled' or 'sampled'"):
        Colorization(build_backbone("convnet", in_channels=3, image_size=16, width=4), targets="strided")


def test_evaluation_encoder_is_colour_blind():
    method = make().eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25
    lab = rgb_to_lab(x.double())
    recoloured = lab.clone()
    recoloured[:, 1:] = recoloured[:, 1:] * 0.3 + 5  # other colours, same lightness
    y = lab_to_rgb(recoloured).float()
    encoder = method.eval_encoder()
    with torch.no_grad():
        torch.testing.assert_close(encoder(y), encoder(x), atol=2e-3, rtol=2e-3)
        assert not torch.allclose(method.backbone(y), method.backbone(x), atol=2e-3)  # the raw backbone sees colour
    assert torch.equal(encoder.mean, method.backbone.mean)


def test_grayscale_data_is_refused_in_one_line():
    assert METHODS["colorization"] is Colorization
    cfg = load_config(None, ["method=colorization", "data.name=digits"])
    with pytest.raises(ConfigError, match="colorization needs colour images, but the data has 1 channel"):
        build_method(cfg, in_channels=1, image_size=16, mean=[0.5], std=[0.5])
    assert math.isfinite(make().head.weight.sum().item())


def test_lab_stays_float32_under_bf16_autocast():
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = rgb_to_lab(x)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, rgb_to_lab(x))
