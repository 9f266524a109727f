"""InstDisc: the memory bank, NCE with the paper's fixed normaliser Z, the noise draws and the bank kNN,
against hand computations written out with numpy."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.engine.finish import bank_knn_entry
from selfsup.methods import METHODS, Batch, InstDisc, Method, Progress
from selfsup.nn import Backbone, MemoryBank


def at(step: int) -> Progress:
    return Progress(step, 100, 10)


def make(num_samples: int = 10, num_noise: int = 5, temperature: float = 0.5, bank_momentum: float = 0.5) -> InstDisc:
    torch.manual_seed(0)
    backbone = Backbone(nn.Sequential(nn.Flatten(), nn.Linear(12, 6)), 6, in_channels=1, mean=[0.0], std=[1.0])
    return InstDisc(backbone, num_samples=num_samples, proj_dim=4, num_noise=num_noise,
                    temperature=temperature, bank_momentum=bank_momentum).train()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 2, 6, generator=torch.Generator().manual_seed(seed))


def test_instdisc_is_registered_and_follows_the_protocol():
    method = make()
    assert METHODS["instdisc"] is InstDisc and isinstance(method, Method)
    assert InstDisc.views_needed == (1, 1) and InstDisc.needs_num_samples
    assert len(method.augmentation(28).output_views) == 1
    with pytest.raises(ValueError, match="views"):
        method.training_step(Batch([images(3, 0)] * 2, torch.arange(3)), at(0))
    for bad, match in (({"num_noise": -1}, "num_noise"), ({"temperature": 0.0}, "temperature"),
                       ({"bank_momentum": 1.5}, "bank_momentum")):
        with pytest.raises(ValueError, match=match):
            InstDisc(make().backbone, num_samples=10, **bad)


# m = 0.8 as well as the paper's 0.5, where m and 1 - m coincide: the old row keeps weight m.
@pytest.mark.parametrize("bank_momentum", [0.5, 0.8])
def test_first_step_by_hand_loss_normaliser_and_bank_update(bank_momentum):
    method = make(num_samples=10, num_noise=5, temperature=0.5, bank_momentum=bank_momentum)
    x, index = images(3, 1), torch.tensor([7, 2, 4])
    bank_before = method.bank.features.clone().double().numpy()
    noise = method.noise(0, 3, torch.device("cpu")).numpy()
    out = method.training_step(Batch([x], index), at(0))
    with torch.no_grad():
        f = F.normalize(method.projector(method.backbone(x)), dim=1).double().numpy()

    n, m, tau = 10, 5, 0.5
    own = np.array([f[i] @ bank_before[index[i]] for i in range(3)])
    noise_scores = np.array([[f[i] @ bank_before[noise[i, k]] for k in range(m)] for i in range(3)])
    z = n * np.exp(noise_scores / tau).mean()  # Z = n E[exp(v'·f / τ)], sec. 3.2
    assert method.log_z.item() == pytest.approx(math.log(z), rel=1e-5)
    p_own, p_noise = np.exp(own / tau) / z, np.exp(noise_scores / tau) / z
    h_own, h_noise = p_own / (p_own + m / n), p_noise / (p_noise + m / n)
    expected = (-np.log(h_own) - np.log(1 - h_noise).sum(axis=1)).mean()  # eq. 7
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)

    method.on_step_end(at(0))
    bank = method.bank.features.double().numpy()
    for i, row in enumerate(index.tolist()):  # lemniscate's NCEAverage: memory * m + x * (1 - m), renormalised
        moved = bank_momentum * bank_before[row] + (1 - bank_momentum) * f[i]
        np.testing.assert_allclose(bank[row], moved / np.linalg.norm(moved), atol=1e-6)
    untouched = [r for r in range(10) if r not in index.tolist()]
    np.testing.assert_array_equal(bank[untouched], bank_before[untouched])


def test_num_noise_zero_is_the_exact_softmax_over_the_bank_by_hand():
    """The official code's --nce-k 0: LinearAverage scores bank · f / τ and CrossEntropyLoss (eq. 2)."""
    method = make(num_samples=10, num_noise=0, temperature=0.5)
    x, index = images(3, 1), torch.tensor([7, 2, 4])
    bank_before = method.bank.features.clone().double().numpy()
    out = method.training_step(Batch([x], index), at(0))
    with torch.no_grad():
        f = F.normalize(method.projector(method.backbone(x)), dim=1).double().numpy()
    expected, log_z = 0.0, 0.0
    for i in range(3):
        scores = [f[i] @ bank_before[j] / 0.5 for j in range(10)]
        normaliser = math.log(sum(math.exp(s) for s in scores))
        expected += -(scores[index[i]] - normaliser) / 3
        log_z += normaliser / 3
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["log_z"].item() == pytest.approx(log_z, rel=1e-5)  # the exact normaliser, not an estimate
    out["loss"].backward()
    assert method.projector.weight.grad.abs().sum() > 0
    method.on_step_end(at(0))  # the bank moves as with NCE
    moved = 0.5 * bank_before[7] + 0.5 * f[0]
    np.testing.assert_allclose(method.bank.features[7].double().numpy(), moved / np.linalg.norm(moved), atol=1e-6)


def test_first_visit_fills_an_entry_with_its_feature_and_leaves_unseen_entries_out_of_the_softmax():
    method = make(num_samples=10, num_noise=0, temperature=0.5)
    method = InstDisc(method.backbone, num_samples=10, proj_dim=4, num_noise=0, temperature=0.5,
                      bank_init="first_visit").train()
    bank_before = method.bank.features.clone().double().numpy()
    x, index = images(3, 1), torch.tensor([7, 2, 4])
    out = method.training_step(Batch([x], index), at(0))
    with torch.no_grad():
        f = F.normalize(method.projector(method.backbone(x)), dim=1).double().numpy()
    np.testing.assert_allclose(method.bank.features[[7, 2, 4]].double().numpy(), f, atol=1e-6)
    np.testing.assert_array_equal(method.bank.features[[0, 1, 3]].double().numpy(), bank_before[[0, 1, 3]])
    assert method.visited.tolist() == [i in (2, 4, 7) for i in range(10)]
    expected = 0.0  # the softmax runs over the three seen entries only, each image's own feature its positive
    for i in range(3):
        scores = [f[i] @ f[j] / 0.5 for j in range(3)]
        expected += -(scores[i] - math.log(sum(math.exp(s) for s in scores))) / 3
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    x2, index2 = images(2, 2), torch.tensor([7, 5])  # 7 seen: left as it was until the momentum update
    seen = method.bank.features[7].clone()
    method.training_step(Batch([x2], index2), at(1))
    assert torch.equal(method.bank.features[7], seen) and method.visited[5]
    with pytest.raises(ValueError, match="num_noise=0"):
        InstDisc(method.backbone, num_samples=10, num_noise=5, bank_init="first_visit")


def test_proximal_term_adds_lambda_times_the_distance_to_the_bank_entry_by_hand():
    plain, proximal = make(), make()
    proximal.proximal = 0.3
    x, index = images(3, 1), torch.tensor([7, 2, 4])
    bank = proximal.bank.features.clone().double()
    base = plain.training_step(Batch([x], index), at(0))["loss"].item()
    out = proximal.training_step(Batch([x], index), at(0))
    with torch.no_grad():
        f = F.normalize(proximal.projector(proximal.backbone(x)), dim=1).double()
    distance = sum(float(((f[i] - bank[index[i]]) ** 2).sum()) for i in range(3)) / 3  # ||v(t) - v(t-1)||^2
    assert out["proximal"].item() == pytest.approx(distance, rel=1e-5)
    assert out["loss"].item() == pytest.approx(base + 0.3 * distance, rel=1e-5)
    with pytest.raises(ValueError, match="proximal"):
        InstDisc(make().backbone, num_samples=10, proximal=-1.0)


def test_z_is_estimated_once_and_kept_through_a_checkpoint():
    method = make()
    method.training_step(Batch([images(3, 1)], torch.tensor([0, 1, 2])), at(0))
    log_z = method.log_z.item()
    method.on_step_end(at(0))
    method.training_step(Batch([images(3, 2)], torch.tensor([3, 4, 5])), at(1))
    assert method.log_z.item() == log_z  # fixed after the first batch, as the paper's code
    restored = make()
    restored.load_state_dict(method.state_dict())
    restored.training_step(Batch([images(3, 3)], torch.tensor([6, 7, 8])), at(2))
    assert restored.log_z.item() == log_z
    fresh = make()
    fresh.training_step(Batch([images(3, 3)], torch.tensor([6, 7, 8])), at(2))
    assert fresh.log_z.item() != log_z  # a new run estimates its own


def test_noise_depends_only_on_the_step_and_covers_the_bank_uniformly():
    method = make(num_samples=10, num_noise=2000)
    first = method.noise(5, 4, torch.device("cpu"))
    assert first.shape == (4, 2000)
    assert torch.equal(first, method.noise(5, 4, torch.device("cpu")))
    assert not torch.equal(first, method.noise(6, 4, torch.device("cpu")))
    counts = torch.bincount(first.flatten(), minlength=10).double()
    assert counts.numel() == 10 and (counts / counts.sum() - 0.1).abs().max() < 0.02


def test_memory_bank_update_checks_shapes_and_momentum():
    bank = MemoryBank(5, 3)
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(5))
    with pytest.raises(ValueError, match=r"features must have shape \(B, 3\)"):
        bank.update(torch.tensor([0]), torch.ones(1, 4))
    with pytest.raises(ValueError, match="index must have shape"):
        bank.update(torch.tensor([0, 1]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="momentum"):
        bank.update(torch.tensor([0]), torch.ones(1, 3), momentum=2.0)
    bank.update(torch.tensor([4]), torch.tensor([[3.0, 0.0, 4.0]]), momentum=0.0)
    assert torch.allclose(bank.features[4], torch.tensor([0.6, 0.0, 0.8]))
    assert "bank.features" in {f"bank.{k}" for k in bank.state_dict()}


def test_bank_knn_votes_with_the_bank_entries_by_hand():
    # Bank: two class-0 entries near e1, one class-1 entry near e2. A test image whose feature is
    # closest to e2 gets class 1 with k=1; with k=3 the two class-0 votes exp(s/τ) win only if
    # their summed weight is larger, which we work out by hand.
    bank = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.2, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])

    class Fixed(nn.Module):
        def forward(self, x):
            return F.normalize(x.flatten(1)[:, :2], dim=1)

    test = type("Test", (), {})()
    test.images = torch.tensor([[[[0.5, 0.6]]]])  # feature direction (0.5, 0.6)
    test.labels = torch.tensor([1])
    entry = bank_knn_entry((bank, Fixed(), 0.1), labels, test, data="toy", k=1, device=torch.device("cpu"))
    assert entry["accuracy"] == 1.0 and "memory bank" in entry["protocol"]
    f = F.normalize(torch.tensor([0.5, 0.6]), dim=0)
    s = bank @ f
    class0, class1 = torch.exp(s[:2] / 0.1).sum(), torch.exp(s[2] / 0.1)
    entry = bank_knn_entry((bank, Fixed(), 0.1), labels, test, data="toy", k=3, device=torch.device("cpu"))
    assert entry["accuracy"] == float(class1 > class0)
    with pytest.raises(ValueError, match="memory bank has 3 rows"):
        bank_knn_entry((bank, Fixed(), 0.1), torch.tensor([0, 1]), test, data="toy", k=1, device="cpu")


def test_dense_and_gathered_scores_agree_and_auto_picks_by_bank_size():
    gathered, dense = make(num_samples=10, num_noise=5), make(num_samples=10, num_noise=5)
    gathered.scoring, dense.scoring = "gather", "dense"
    dense.load_state_dict(gathered.state_dict())
    x, index = images(3, 4), torch.tensor([1, 5, 9])
    losses_ = []
    for method in (gathered, dense):
        loss = method.training_step(Batch([x], index), at(0))["loss"]
        loss.backward()
        losses_.append((loss.item(), method.projector.weight.grad.clone()))
    assert losses_[0][0] == pytest.approx(losses_[1][0], rel=1e-6)
    torch.testing.assert_close(losses_[0][1], losses_[1][1])
    assert make(num_samples=10, num_noise=5).scoring == "dense"
    backbone = make().backbone
    assert InstDisc(backbone, num_samples=32 * 17, num_noise=16).scoring == "dense"
    assert InstDisc(backbone, num_samples=32 * 17 + 1, num_noise=16).scoring == "gather"  # a bank >> the noise
    with pytest.raises(ValueError, match="scoring"):
        InstDisc(backbone, num_samples=10, scoring="sparse")


def test_every_batch_normaliser_is_re_estimated_on_each_batch():
    method = InstDisc(make().backbone, num_samples=10, proj_dim=4, num_noise=5, temperature=0.5,
                      normalizer="every_batch").train()
    estimates = []
    for step, seed in enumerate((1, 2)):
        x, index = images(3, seed), torch.tensor([0, 1, 2]) + 3 * step
        bank = method.bank.features.clone().double()
        noise = method.noise(step, 3, torch.device("cpu"))
        out = method.training_step(Batch([x], index), at(step))
        with torch.no_grad():
            f = F.normalize(method.projector(method.backbone(x)), dim=1).double()
        noise_scores = torch.stack([bank[noise[i]] @ f[i] for i in range(3)])
        assert out["log_z"].item() == pytest.approx(math.log(10 * torch.exp(noise_scores / 0.5).mean().item()),
                                                    rel=1e-5)
        estimates.append(out["log_z"].item())
        method.on_step_end(at(step))
    assert estimates[0] != estimates[1]
    with pytest.raises(ValueError, match="normalizer"):
        InstDisc(make().backbone, num_samples=10, normalizer="running")
