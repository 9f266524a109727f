"""Deep InfoMax: local/global pairing on a 2-image batch by hand, the JSD bound, the prior term."""

import math

import pytest
import torch

from selfsup import losses
from selfsup.methods import Batch, DeepInfoMax, Progress
from selfsup.methods.dim import local_global_scores, prior_matching_loss
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


def test_local_pairs_count():
    positives, negatives = local_global_scores(torch.randn(5, 9, 4), torch.randn(5, 4))
    assert positives.shape == (5, 9) and negatives.shape == (5, 4, 9)  # B·P positives, B·(B-1)·P negatives


def test_prior_term_reverses_the_encoders_gradient():
    torch.manual_seed(0)
    disc = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    codes = torch.randn(6, 3, requires_grad=True)
    generator = torch.Generator().manual_seed(1)
    prior_matching_loss(disc, codes, generator).backward()
    reversed_grad = codes.grad.clone()
    # The discriminator's own cross-entropy on the fake codes, without the reversal.
    plain = codes.detach().clone().requires_grad_()
    logits = disc(torch.sigmoid(plain))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
    assert torch.allclose(reversed_grad, -plain.grad, atol=1e-7)
    assert disc[0].weight.grad is not None  # the discriminator itself descends


def test_training_step_terms_and_gradients():
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    method = DeepInfoMax(backbone, code_dim=8, embed_dim=16, global_weight=0.5, local_weight=1.0, prior_weight=0.1)
    out = method.training_step(Batch([torch.rand(4, 1, 16, 16)], torch.arange(4)), Progress(0, 1, 1))
    expected = 0.5 * out["global_mi"] + out["local_mi"] + 0.1 * out["prior"]
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
