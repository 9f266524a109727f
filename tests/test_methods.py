"""selfsup.methods: SimCLR and MoCo against hand computations of their papers' pseudocode."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import METHODS, Batch, Method, MoCo, SimCLR
from selfsup.nn import Backbone


def linear_backbone(in_dim: int = 12, out_dim: int = 6) -> Backbone:
    """A BN-free backbone over 1x2x6 'images', so every output is a plain matrix product."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, out_dim))
    return Backbone(net, out_dim, in_channels=1, mean=[0.0], std=[1.0])


def views(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 2, 6, generator=g) for _ in range(2)]


def test_methods_follow_the_protocol_and_are_registered():
    for cls in (SimCLR, MoCo):
        method = cls(linear_backbone(), proj_hidden_dim=8, proj_dim=4)
        assert isinstance(method, Method)
        assert METHODS[cls.__name__.lower()] is cls


def test_simclr_loss_is_nt_xent_of_its_projections():
    method = SimCLR(linear_backbone(), proj_hidden_dim=8, proj_dim=4, temperature=0.5).train()
    v1, v2 = views(5, 0)
    loss = method.training_step(Batch([v1, v2], torch.arange(5)))["loss"]
    z = F.normalize(method.projector(method.backbone(torch.cat([v1, v2]))).double(), dim=1)
    n = 5
    total = 0.0
    for i in range(2 * n):  # hand-written NT-Xent: positive is the other view of the same image
        pos = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        logits = torch.stack([z[i] @ z[j] / 0.5 for j in others])
        total += -(z[i] @ z[pos] / 0.5 - torch.logsumexp(logits, 0))
    assert loss.item() == pytest.approx(total.item() / (2 * n), abs=1e-4)


def test_simclr_rejects_the_wrong_number_of_views():
    method = SimCLR(linear_backbone(), proj_hidden_dim=8, proj_dim=4)
    with pytest.raises(ValueError, match="expects 2 views"):
        method.training_step(Batch(views(3, 0)[:1], torch.arange(3)))


def make_moco(queue_size: int = 5, momentum: float = 0.9) -> MoCo:
    return MoCo(linear_backbone(), proj_hidden_dim=8, proj_dim=4, queue_size=queue_size,
                momentum=momentum, temperature=0.2, shuffle_bn=False).train()


def test_moco_loss_and_queue_after_one_step():
    moco = make_moco()
    queue_before = moco.queue.keys.clone()
    x_q, x_k = views(2, 1)
    loss = moco.training_step(Batch([x_q, x_k], torch.arange(2)))["loss"]
    q = F.normalize(moco.projector(moco.backbone(x_q)).double(), dim=1)
    k = F.normalize(moco.key_encoder(x_k).double(), dim=1)
    expected = 0.0
    for i in range(2):  # InfoNCE with the positive at index 0 and K queue negatives
        logits = torch.cat([(q[i] @ k[i]).view(1), queue_before.double() @ q[i]]) / 0.2
        expected += -(logits[0] - torch.logsumexp(logits, 0))
    assert loss.item() == pytest.approx(expected.item() / 2, abs=1e-4)
    assert torch.allclose(moco.queue.keys[:2].double(), k, atol=1e-6)
    assert torch.equal(moco.queue.keys[2:], queue_before[2:])


def test_moco_state_over_several_steps_matches_hand_computation():
    """Three SGD steps, batch 2, queue 5: the key encoder's weights and the queue by hand."""
    moco = make_moco(queue_size=5, momentum=0.9)
    optimizer = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.5)
    key_weights = [p.detach().clone().double() for p in moco.key_encoder.parameters()]
    expected_queue = moco.queue.keys.clone()
    slot = 0
    for step in range(3):
        x_q, x_k = views(2, 10 + step)
        with torch.no_grad():  # the keys this step must be made by the key encoder as it stands
            k = F.normalize(moco.key_encoder(x_k), dim=1)
        loss = moco.training_step(Batch([x_q, x_k], torch.arange(2)))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        moco.on_step_end(step, 3)
        online = [p.detach().double() for p in (*moco.backbone.parameters(), *moco.projector.parameters())]
        key_weights = [0.9 * w + 0.1 * o for w, o in zip(key_weights, online)]
        for row in k:
            expected_queue[slot % 5] = row
            slot += 1
    for w, p in zip(key_weights, moco.key_encoder.parameters()):
        assert torch.allclose(p.double(), w, atol=1e-6)
    assert torch.allclose(moco.queue.keys, expected_queue, atol=1e-6)
    assert int(moco.queue.ptr) == 6 % 5
    # the key encoder received no gradient
    assert all(p.grad is None for p in moco.key_encoder.parameters())


def test_moco_key_encoder_starts_as_a_copy_and_is_frozen():
    moco = make_moco()
    online = [*moco.backbone.parameters(), *moco.projector.parameters()]
    for a, b in zip(online, moco.key_encoder.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr() and not b.requires_grad


def test_moco_v1_head_and_bad_hyperparameters():
    v1 = MoCo(linear_backbone(), proj_dim=4, mlp=False, temperature=0.07, queue_size=8)
    assert isinstance(v1.projector, nn.Linear)
    with pytest.raises(ValueError, match="momentum"):
        MoCo(linear_backbone(), momentum=1.5)
    with pytest.raises(ValueError, match="temperature"):
        MoCo(linear_backbone(), temperature=0.0)


def test_moco_with_shuffle_bn_trains_a_convnet_step():
    from selfsup.nn import build_backbone

    torch.manual_seed(0)
    moco = MoCo(build_backbone("convnet", in_channels=1, image_size=28, width=4), proj_hidden_dim=16,
                proj_dim=8, queue_size=37, shuffle_splits=4)
    batch = Batch([torch.rand(16, 1, 28, 28), torch.rand(16, 1, 28, 28)], torch.arange(16))
    loss = moco.training_step(batch)["loss"]
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in moco.backbone.parameters())
    assert all(p.grad is None for p in moco.key_encoder.parameters())
    assert int(moco.queue.ptr) == 16
