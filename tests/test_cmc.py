"""CMC: the Lab split, the view pairs, and the pairwise objective against a double loop."""

import math

import numpy as np
import pytest
import torch

from selfsup.methods import CMC, Batch, Progress
from selfsup.methods.cmc import lab_merge, lab_split, view_pairs
from selfsup.nn import build_backbone


def _backbone(channels: int = 3):
    return build_backbone("convnet", in_channels=channels, image_size=16, width=4)


def test_lab_split_round_trip_within_one_level():
    # Every 5th level of each channel (9261 colours, corners included).
    levels = torch.arange(0, 256, 5, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(1, 3, -1, 1) / 255
    lightness, ab = lab_split(grid.float())
    assert lightness.shape == (1, 1, grid.shape[2], 1) and ab.shape == (1, 2, grid.shape[2], 1)
    assert 0 <= float(lightness.min()) and float(lightness.max()) <= 1 and 0 <= float(ab.min()) <= float(ab.max()) <= 1
    back = lab_merge(lightness, ab)
    assert float((back - grid.float()).abs().max()) <= 1 / 255


def test_lab_split_names_grayscale():
    with pytest.raises(ValueError, match="views=augment"):
        lab_split(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="views=augment"):
        CMC(_backbone(1), num_samples=10, views="lab")


def test_view_pairs():
    assert view_pairs(2, "core") == view_pairs(2, "full") == [(0, 1)]
    assert view_pairs(3, "core") == [(0, 1), (0, 2)]
    assert view_pairs(4, "full") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def _two_way(z: list[np.ndarray], pairs, tau: float, candidates) -> float:
    """Σ over pairs of L_{i->j} + L_{j->i}, each a mean over images of -log softmax, by loops."""
    total = 0.0
    for i, j in pairs:
        for a, b in ((i, j), (j, i)):
            terms = []
            for n in range(len(z[a])):
                positive, others = candidates(b, n)
                logits = [float(z[a][n] @ c) / tau for c in others]
                terms.append(-(float(z[a][n] @ positive) / tau - math.log(sum(math.exp(x) for x in logits))))
            total += sum(terms) / len(terms)
    return total


@pytest.mark.parametrize("objective", ["core", "full"])
def test_batch_objective_matches_double_loop(objective):
    torch.manual_seed(0)
    method = CMC(_backbone(), num_samples=10, views="augment", num_views=3, objective=objective, negatives="batch",
                 proj_dim=8, temperature=0.2)
    views = [torch.rand(5, 3, 16, 16) for _ in range(3)]
    loss = method.training_step(Batch(views, torch.arange(5)), Progress(0, 1, 1))["loss"]
    z = [v.detach().double().numpy() for v in method.embed(views)]
    expected = _two_way(z, view_pairs(3, objective), 0.2, lambda b, n: (z[b][n], z[b]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# m = 0.8 as well as the paper's 0.5, where m and 1 - m coincide: the old row keeps weight m.
@pytest.mark.parametrize("bank_momentum", [0.5, 0.8])
def test_bank_objective_matches_loop_and_banks_move(bank_momentum):
    torch.manual_seed(0)
    method = CMC(_backbone(), num_samples=12, views="lab", negatives="bank", proj_dim=8, temperature=0.1,
                 num_negatives=6, bank_momentum=bank_momentum)
    images, index = torch.rand(4, 3, 16, 16), torch.tensor([7, 0, 3, 11])
    before = [bank.features.clone().double().numpy() for bank in method.banks]
    loss = method.training_step(Batch([images], index), Progress(3, 10, 5))["loss"]
    z = [v.detach().double().numpy() for v in method.embed(list(lab_split(images)))]
    noise = method.noise(3, torch.device("cpu")).numpy()
    # Positive: the other view's bank entry of the same image; negatives: the drawn entries.
    expected = _two_way(z, [(0, 1)], 0.1, lambda b, n: (before[b][index[n]],
                                                         [before[b][index[n]], *before[b][noise]]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    method.on_step_end(Progress(3, 10, 5))
    for view, bank in enumerate(method.banks):
        # the official NCEAverage: memory * m + feature * (1 - m), renormalised
        moved = bank_momentum * before[view][index.numpy()] + (1 - bank_momentum) * z[view]
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        assert np.allclose(bank.features[index].numpy(), moved, atol=1e-6)
        untouched = np.setdiff1d(np.arange(12), index.numpy())
        assert np.array_equal(bank.features[untouched].numpy(), before[view][untouched].astype(np.float32))


def test_eval_encoder_concatenates_the_views_features():
    method = CMC(_backbone(), num_samples=10, views="lab")
    encoder = method.eval_encoder().eval()
    images = torch.rand(3, 3, 16, 16)
    lightness, ab = lab_split(images)
    with torch.no_grad():
        expected = torch.cat([method.backbone.encoders[0](lightness), method.backbone.encoders[1](ab)], dim=1)
        assert torch.allclose(encoder(images), expected)
    assert encoder.out_dim == 2 * 32 and method.backbone.encoders[0].in_channels == 1
    assert method.backbone.encoders[1].in_channels == 2
    # A fresh copy per view: not the same weights.
    first = [p for p in method.backbone.encoders[0].parameters() if p.ndim == 4][1]
    second = [p for p in method.backbone.encoders[1].parameters() if p.ndim == 4][1]
    assert not torch.equal(first, second)
