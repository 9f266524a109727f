"""Deep InfoMax: local/global pairing on a 2-image batch by hand, the JSD bound, the prior term."""

import math

import pytest
import torch

from selfsup import losses
from selfsup.methods import Batch, DeepInfoMax, Progress
from selfsup.methods.dim import local_global_scores, prior_matching_losses
from selfsup.nn import build_backbone


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_local_global_pairing_on_two_images_by_hand():
    # Image 0 has positions (1, 0) and (0, 2); image 1 has (0, 1) and (3, 1). Globals g0 = (1, 1), g1 = (2, -1).
    local = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [3.0, 1.0]]])
    global_ = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    positives, negatives = local_global_scores(local, global_)
    # Own global: l00·g0 = 1, l01·g0 = 2; l10·g1 = -1, l11·g1 = 5.
    assert positives.tolist() == [[1.0, 2.0], [-1.0, 5.0]]
    # The other image's global: l00·g1 = 2, l01·g1 = -2; l10·g0 = 1, l11·g0 = 4.
    assert negatives.tolist() == [[[2.0, -2.0]], [[1.0, 4.0]]]
    # JSD (eq. 4): mean softplus(-T) over the 4 positive pairs + mean softplus(T) over the 4 negative ones.
    expected = (sum(_softplus(-t) for t in (1, 2, -1, 5)) / 4 + sum(_softplus(t) for t in (2, -2, 1, 4)) / 4)
    assert losses.jsd_mi(positives, negatives).item() == pytest.approx(expected, rel=1e-6)


def test_infonce_estimator_is_the_official_softmax_over_every_position_by_hand():
    """The official infonce_loss: for (i, p), softmax over [l_ip·g_i, l_jq·g_i for all j, q], own image's
    negatives replaced by -10 (kept in the denominator)."""
    local = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [3.0, 1.0]]])
    global_ = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    # Scores with g0: image 0's positions 1, 2 (positives), image 1's 1, 4. With g1: image 1's -1, 5, image 0's 2, -2.
    rows = [(1.0, [-10.0, -10.0, 1.0, 4.0]), (2.0, [-10.0, -10.0, 1.0, 4.0]),
            (-1.0, [2.0, -2.0, -10.0, -10.0]), (5.0, [2.0, -2.0, -10.0, -10.0])]
    expected = sum(math.log(math.exp(pos) + sum(math.exp(n) for n in neg)) - pos for pos, neg in rows) / 4
    assert losses.local_global_info_nce(local, global_).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="disagree"):
        losses.local_global_info_nce(local, torch.ones(3, 2))


def test_the_estimator_option_picks_the_local_term():
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    images = Batch([torch.rand(4, 1, 16, 16)], torch.arange(4))
    jsd = DeepInfoMax(backbone, code_dim=8, embed_dim=16, prior_weight=0.0)
    nce = DeepInfoMax(backbone, code_dim=8, embed_dim=16, prior_weight=0.0, estimator="nce")
    nce.load_state_dict(jsd.state_dict())
    out = nce.training_step(images, Progress(0, 1, 1))
    maps, features = nce.features(images.views[0])
    local = nce.local_embed(maps).flatten(2).transpose(1, 2)
    expected = losses.local_global_info_nce(local, nce.global_embed(nce.code(features)))
    assert out["local_mi"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["local_mi"].item() != pytest.approx(jsd.training_step(images, Progress(0, 1, 1))["local_mi"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="estimator"):
        DeepInfoMax(backbone, estimator="dv")


def test_local_pairs_count():
    positives, negatives = local_global_scores(torch.randn(5, 9, 4), torch.randn(5, 4))
    assert positives.shape == (5, 9) and negatives.shape == (5, 4, 9)  # B·P positives, B·(B-1)·P negatives


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_prior_losses_are_the_official_non_saturating_game_by_hand():
    # A linear discriminator D(z) = w·z + b, so every term has a closed form: ∇ₓD = w.
    disc = torch.nn.Linear(2, 1)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([[0.5, -1.5]]))
        disc.bias.fill_(0.25)
    codes = torch.tensor([[0.3, -0.7], [2.0, 0.1]], requires_grad=True)
    real = torch.rand(2, 2, generator=torch.Generator().manual_seed(1))
    disc_loss, encoder_loss = prior_matching_losses(disc, codes, gradient_penalty=1.0,
                                                    generator=torch.Generator().manual_seed(1))
    w, b = [0.5, -1.5], 0.25

    def d(z):
        return w[0] * z[0] + w[1] * z[1] + b

    fakes = [[_sigmoid(v) for v in row] for row in codes.tolist()]
    expected_disc = (sum(_softplus(-d(r)) for r in real.tolist()) / 2 + sum(_softplus(d(f)) for f in fakes) / 2
                     + 0.5 * (2 * (w[0] ** 2 + w[1] ** 2)))  # ½ (E‖w‖² + E‖w‖²)
    assert disc_loss.item() == pytest.approx(expected_disc, rel=1e-6)
    expected_encoder = sum(_softplus(-d(f)) for f in fakes) / 2
    assert encoder_loss.item() == pytest.approx(expected_encoder, rel=1e-6)
    # The encoder's gradient: d/dy softplus(−D(σ(y))) / 2 = −σ(−D) · w_k · σ'(y_k) / 2; none reaches D's weights.
    encoder_loss.backward()
    expected_grad = [[-_sigmoid(-d(f)) * w[k] * f[k] * (1 - f[k]) / 2 for k in range(2)] for f in fakes]
    assert torch.allclose(codes.grad, torch.tensor(expected_grad), atol=1e-6)
    assert disc.weight.grad is None
    # The discriminator's loss trains D alone: no gradient reaches the codes.
    codes.grad = None
    disc_loss.backward()
    assert codes.grad is None and disc.weight.grad is not None


def test_prior_encoder_loss_does_not_saturate_when_the_discriminator_wins():
    # D sure that every code is fake (D(σ(y)) ≈ −20): the minimax form's gradient vanishes (σ(D) ≈ 2e-9), the
    # non-saturating one's stays about |w σ'(y)|.
    disc = torch.nn.Linear(1, 1)
    with torch.no_grad():
        disc.weight.fill_(1.0)
        disc.bias.fill_(-20.0)
    codes = torch.zeros(1, 1, requires_grad=True)
    prior_matching_losses(disc, codes, gradient_penalty=0.0)[1].backward()
    assert codes.grad.abs().item() == pytest.approx(0.25, rel=1e-3)  # σ'(0) = 1/4, σ(−D) ≈ 1


def test_gamma_weighs_the_encoders_prior_term_only():
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    images = torch.rand(4, 1, 16, 16)
    grads = {}
    for gamma in (0.1, 0.5):
        torch.manual_seed(0)
        method = DeepInfoMax(backbone, code_dim=8, embed_dim=16, prior_weight=gamma)
        torch.manual_seed(1)  # the same prior samples
        out = method.training_step(Batch([images], torch.arange(4)), Progress(0, 1, 1))
        out["loss"].backward()
        grads[gamma] = ([p.grad.clone() for p in method.prior_disc.parameters()], method.code.weight.grad.clone(),
                        out)
    for a, b in zip(grads[0.1][0], grads[0.5][0]):
        assert torch.allclose(a, b, atol=1e-6)  # the discriminator's own loss is never scaled by γ
    assert not torch.allclose(grads[0.1][1], grads[0.5][1], atol=1e-6)  # the encoder's is
    out = grads[0.5][2]
    expected = out["local_mi"] + out["prior"] + 0.5 * out["prior_encoder"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_global_term_pairs_each_image_with_its_own_code_and_the_previous_images_by_hand():
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    method = DeepInfoMax(backbone, code_dim=8, embed_dim=16, global_weight=1.0, local_weight=0.0,
                         prior_weight=0.0).eval()
    images = torch.rand(3, 1, 16, 16)
    out = method.training_step(Batch([images], torch.arange(3)), Progress(0, 1, 1))
    with torch.no_grad():
        maps, features = method.features(images)
        y = method.code(features)
        flat = torch.nn.functional.adaptive_avg_pool2d(maps, 3).flatten(1)
        terms = []
        for i in range(3):  # positive: image i with y_i; negative: image i with the previous image's y
            positive = method.global_disc(torch.cat([flat[i], y[i]])[None]).item()
            negative = method.global_disc(torch.cat([flat[i], y[i - 1]])[None]).item()
            terms.append((_softplus(-positive), _softplus(negative)))
    expected = sum(p for p, _ in terms) / 3 + sum(n for _, n in terms) / 3
    assert out["global_mi"].item() == pytest.approx(expected, rel=1e-5)


def test_training_step_terms_and_gradients():
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    method = DeepInfoMax(backbone, code_dim=8, embed_dim=16, global_weight=0.5, local_weight=1.0, prior_weight=0.1)
    out = method.training_step(Batch([torch.rand(4, 1, 16, 16)], torch.arange(4)), Progress(0, 1, 1))
    expected = 0.5 * out["global_mi"] + out["local_mi"] + out["prior"] + 0.1 * out["prior_encoder"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in method.parameters())  # no unused parameters under DDP
    assert not hasattr(DeepInfoMax(backbone), "global_disc")  # α = 0 (the default) builds no global net
    with pytest.raises(ValueError, match="global_weight or local_weight"):
        DeepInfoMax(backbone, global_weight=0.0, local_weight=0.0)


def test_local_features_are_an_intermediate_layer():
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4).eval()
    images = torch.rand(2, 1, 28, 28)
    method = DeepInfoMax(backbone).eval()
    maps, features = method.features(images)
    assert maps.shape == (2, 16, 7, 7)                        # the third stage, before the last pooling
    assert torch.allclose(features, backbone(images), atol=1e-6)
    maps, features = DeepInfoMax(backbone, local_layer="last").eval().features(images)
    assert maps.shape == (2, 32, 3, 3)


def test_the_official_embedding_is_mi1x1convnet_by_hand():
    """rdevon/DIM cortex_DIM/nn_modules/mi_networks.py MI1x1ConvNet: LayerNorm_channels(block(x) + shortcut(x)),
    block = conv1x1 (no bias) - BatchNorm - ReLU - conv1x1, the shortcut bias-free with ones on its diagonal and
    the rest in [-0.01, 0.01]; a (B, C) code read as a 1x1 map. Computed here with plain tensor arithmetic."""
    from selfsup.methods.dim import OfficialEmbedding

    torch.manual_seed(0)
    net = OfficialEmbedding(3, 5).train()
    w = net.shortcut.weight[:, :, 0, 0]
    assert torch.equal(w[torch.arange(3), torch.arange(3)], torch.ones(3)) and net.shortcut.bias is None
    off = w.clone()
    off[torch.arange(3), torch.arange(3)] = 0
    assert off.abs().max() <= 0.01 and net.block[0].bias is None and net.block[3].bias is not None
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 1.5)
        net.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 2, 2)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 3)  # (B*h*w, C): a 1x1 conv is a matrix product per pixel
    first = pixels @ net.block[0].weight[:, :, 0, 0].T
    first = (first - first.mean(0)) / torch.sqrt(first.var(0, unbiased=False) + 1e-5)
    first = torch.relu(first * net.block[1].weight + net.block[1].bias)
    summed = first @ net.block[3].weight[:, :, 0, 0].T + net.block[3].bias + pixels @ w.T
    normed = (summed - summed.mean(1, keepdim=True)) / torch.sqrt(summed.var(1, unbiased=False, keepdim=True) + 1e-5)
    expected = (normed * net.norm.weight + net.norm.bias).reshape(4, 2, 2, 5).permute(0, 3, 1, 2)
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)
    code = torch.randn(4, 3)
    torch.testing.assert_close(net(code), net(code[:, :, None, None])[:, :, 0, 0])


def test_the_official_embedding_option_trains_and_a_wide_code_passes_through():
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    method = DeepInfoMax(backbone, code_dim=8, embed_dim=16, embedding="official")
    out = method.training_step(Batch([torch.rand(4, 1, 16, 16)], torch.arange(4)), Progress(0, 1, 1))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in method.parameters())
    assert isinstance(DeepInfoMax(backbone, code_dim=16, embed_dim=16, embedding="official").global_embed,
                      torch.nn.Identity)  # the official NopNet
    with pytest.raises(ValueError, match="embedding must be"):
        DeepInfoMax(backbone, embedding="code")
