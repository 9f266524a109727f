"""MoCo v3, InvaSpread, SupCon, triplet and N-pair training against hand computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import losses
from selfsup.methods import METHODS, Batch, InvaSpread, Method, MoCoV3, NPair, Progress, SupCon, Triplet
from selfsup.methods.npair import pair_up
from selfsup.nn import Backbone, build_backbone


def at(step: int, max_steps: int = 10) -> Progress:
    return Progress(step, max_steps, 5)


def linear_backbone(out_dim: int = 6) -> Backbone:
    torch.manual_seed(0)
    return Backbone(nn.Sequential(nn.Flatten(), nn.Linear(12, out_dim)), out_dim, in_channels=1, mean=[0.0], std=[1.0])


def views(n: int, seed: int, count: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 2, 6, generator=g) for _ in range(count)]


@pytest.mark.parametrize("name,cls", [("mocov3", MoCoV3), ("invaspread", InvaSpread), ("supcon", SupCon),
                                      ("triplet", Triplet), ("npair", NPair)])
def test_registered_and_following_the_protocol(name, cls):
    assert METHODS[name] is cls
    method = cls(linear_backbone())
    assert isinstance(method, Method)
    assert cls.needs_labels == (name in ("supcon", "triplet", "npair"))


# -- InvaSpread --------------------------------------------------------------------------------


def invaspread_by_hand(f: np.ndarray, f_hat: np.ndarray, tau: float) -> float:
    """Eqs. 2-5 of Ye et al. written out for every anchor of the 2N samples (the official code's
    symmetric form): own-instance probability of the other view, not-instance for the rest."""
    u = np.concatenate([f, f_hat])
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    n2 = len(u)
    n = n2 // 2
    total = 0.0
    for j in range(n2):
        pair = (j + n) % n2
        denominator = sum(math.exp(u[j] @ u[a] / tau) for a in range(n2) if a != j)
        total -= math.log(math.exp(u[j] @ u[pair] / tau) / denominator)
        for k in range(n2):
            if k not in (j, pair):
                total -= math.log(1 - math.exp(u[j] @ u[k] / tau) / denominator)
    return total / n2


def test_invaspread_loss_on_a_3_image_batch_by_hand():
    g = torch.Generator().manual_seed(3)
    f, f_hat = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    expected = invaspread_by_hand(f.numpy(), f_hat.numpy(), 0.1)
    assert losses.invaspread(f, f_hat, 0.1).item() == pytest.approx(expected, rel=1e-10)
    assert losses.invaspread(f, f_hat, 0.5).item() == pytest.approx(invaspread_by_hand(f.numpy(), f_hat.numpy(), 0.5),
                                                                     rel=1e-10)


def test_invaspread_gradient_flows_through_the_anchors_only():
    g = torch.Generator().manual_seed(4)
    f, f_hat = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    a, b = f.clone().requires_grad_(), f_hat.clone().requires_grad_()
    losses.invaspread(a, b).backward()
    # Reference: the hand loss with the columns as constants, differentiated numerically.
    u_const = F.normalize(torch.cat([f, f_hat]), dim=1)

    def anchors_only(x: torch.Tensor) -> torch.Tensor:
        u = F.normalize(x, dim=1)
        logits = (u @ u_const.T / 0.1).masked_fill(torch.eye(6, dtype=torch.bool), float("-inf"))
        p = logits.softmax(dim=1)
        pair = torch.tensor([3, 4, 5, 0, 1, 2])
        not_mask = ~(torch.eye(6, dtype=torch.bool) | F.one_hot(pair, 6).bool())
        return -(p[torch.arange(6), pair].log() + torch.log1p(-p).masked_fill(~not_mask, 0).sum(1)).mean()

    x = torch.cat([f, f_hat]).requires_grad_()
    anchors_only(x).backward()
    torch.testing.assert_close(torch.cat([a.grad, b.grad]), x.grad)
    full_a = f.clone().requires_grad_()
    losses.invaspread(full_a, f_hat, detach_weights=False).backward()
    assert not torch.allclose(full_a.grad, a.grad)  # differentiating both sides differs


def test_invaspread_method_is_the_loss_of_its_normalised_projections():
    method = InvaSpread(linear_backbone(), proj_dim=4).train()
    x1, x2 = views(5, 0)
    loss = method.training_step(Batch([x1, x2], torch.arange(5)), at(0))["loss"]
    with torch.no_grad():
        f, f_hat = method.projector(method.backbone(x1)), method.projector(method.backbone(x2))
    assert loss.item() == pytest.approx(invaspread_by_hand(f.double().numpy(), f_hat.double().numpy(), 0.1), rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 images"):
        losses.invaspread(torch.randn(1, 4), torch.randn(1, 4))


# -- MoCo v3 -----------------------------------------------------------------------------------


def make_mocov3(**kwargs) -> MoCoV3:
    return MoCoV3(linear_backbone(), hidden_dim=8, proj_dim=4, **kwargs).train()


def test_mocov3_symmetric_loss_by_hand():
    method = make_mocov3(temperature=0.5)
    x1, x2 = views(4, 1)
    loss = method.training_step(Batch([x1, x2], torch.arange(4)), at(0))["loss"]
    with torch.no_grad():
        q1, q2 = (method.predictor(method.projector(method.backbone(x))).double() for x in (x1, x2))
        k1, k2 = (method.momentum_encoder(x).double() for x in (x1, x2))

    def ctr(q, k):  # the official contrastive_loss: CE of q kᵀ / τ against the diagonal, times 2τ
        q, k = F.normalize(q, dim=1).numpy(), F.normalize(k, dim=1).numpy()
        total = 0.0
        for i in range(len(q)):
            logits = q[i] @ k.T / 0.5
            total -= logits[i] - math.log(np.exp(logits).sum())
        return 2 * 0.5 * total / len(q)

    assert loss.item() == pytest.approx(ctr(q1, k2) + ctr(q2, k1), rel=1e-5)
    # symmetric: swapping the views gives the same loss
    swapped = method.training_step(Batch([x2, x1], torch.arange(4)), at(0))["loss"]
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-6)


def test_mocov3_momentum_follows_the_official_cosine_schedule():
    method = make_mocov3(base_momentum=0.99)
    total = 10
    for k in range(total + 1):  # moco-v3 main_moco.py: 1 - 0.5 (1 + cos(pi k / K)) (1 - m0)
        assert method.momentum_at(k, total) == pytest.approx(1 - 0.5 * (1 + math.cos(math.pi * k / total)) * 0.01)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    ema = [p.detach().clone() for p in method.momentum_encoder.parameters()]
    for step in range(3):
        loss = method.training_step(Batch(views(4, 10 + step), torch.arange(4)), at(step, total))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_step_end(at(step, total))
        m = 1 - 0.5 * (1 + math.cos(math.pi * (step + 1) / total)) * 0.01  # the update before step+1's keys
        online = [p.detach() for p in (*method.backbone.parameters(), *method.projector.parameters())]
        ema = [m * e + (1 - m) * o for e, o in zip(ema, online)]
    for e, p in zip(ema, method.momentum_encoder.parameters()):
        torch.testing.assert_close(p, e)
        assert p.grad is None and not p.requires_grad


def test_mocov3_heads_follow_the_official_code():
    # moco-v3 builder.py: _build_mlp(2, ...) with last_bn for the ResNet projector, without for its
    # predictor; every Linear bias=False.
    method = make_mocov3()
    assert method.temperature == 1.0  # ResNet / ConvNet default
    projector = [type(m) for m in method.projector]
    assert projector == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert not method.projector[-1].affine
    assert [type(m) for m in method.predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [m for m in (*method.projector, *method.predictor) if isinstance(m, nn.Linear)]
    assert len(linears) == 4 and all(m.bias is None for m in linears)
    with pytest.raises(ValueError, match="ViT"):
        make_mocov3(freeze_patch_embed=True)
    with pytest.raises(ValueError, match="ViT"):
        make_mocov3(official_vit=True)


def official_sincos(h: int, w: int, dim: int) -> torch.Tensor:
    """moco-v3 vits.py build_2d_sincos_position_embedding, written out as loops: its
    torch.meshgrid(grid_w, grid_h) indexes 'ij', so the first quarter pair follows the slow index."""
    quarter = dim // 4
    omega = [1.0 / 10000 ** (d / quarter) for d in range(quarter)]
    rows = [[0.0] * dim]
    for a in range(w):
        for b in range(h):
            rows.append([math.sin(a * o) for o in omega] + [math.cos(a * o) for o in omega]
                        + [math.sin(b * o) for o in omega] + [math.cos(b * o) for o in omega])
    return torch.tensor(rows)[None]


@pytest.mark.vision
def test_mocov3_vit_is_the_official_vit_with_a_fixed_sincos_position_embedding():
    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", in_channels=1, image_size=16, mean=[0.5], std=[0.5])
    method = MoCoV3(backbone, hidden_dim=32, proj_dim=16).train()
    net = backbone.net
    torch.testing.assert_close(net.pos_embed, official_sincos(4, 4, 192), atol=1e-5, rtol=0)
    assert not net.pos_embed.requires_grad
    # MoCo_ViT: 3-layer projector and a predictor that also ends in an affine-free BatchNorm, no biases.
    assert isinstance(method.predictor[-1], nn.BatchNorm1d) and not method.predictor[-1].affine
    assert all(m.bias is None for m in (*method.projector, *method.predictor) if isinstance(m, nn.Linear))
    # vits.py initialisation: qkv as three matrices, other Linears Xavier, zero biases, cls token std 1e-6,
    # patch projection a Linear of 1 * 4 * 4 inputs.
    qkv = net.blocks[0].attn.qkv
    bound = math.sqrt(6.0 / (qkv.weight.shape[0] // 3 + qkv.weight.shape[1]))
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.95 * bound and not qkv.bias.any()
    fc = net.blocks[0].mlp.fc1
    assert fc.weight.abs().max() <= math.sqrt(6.0 / sum(fc.weight.shape)) and not fc.bias.any()
    assert net.cls_token.abs().max() < 1e-5
    assert net.patch_embed.proj.weight.abs().max() <= math.sqrt(6.0 / (16 + 192))
    # A pretrained ViT keeps its weights: nothing is re-initialised.
    pretrained = build_backbone("vit_tiny", in_channels=1, image_size=16, mean=[0.5], std=[0.5])
    pretrained.pretrained = True
    before = pretrained.net.pos_embed.detach().clone()
    MoCoV3(pretrained, hidden_dim=32, proj_dim=16)
    assert torch.equal(pretrained.net.pos_embed, before) and pretrained.net.pos_embed.requires_grad


@pytest.mark.vision
def test_mocov3_vit_keeps_its_random_patch_projection():
    backbone = build_backbone("vit_tiny", in_channels=1, image_size=16, mean=[0.5], std=[0.5])
    method = MoCoV3(backbone, hidden_dim=32, proj_dim=16).train()
    assert method.temperature == 0.2 and len([m for m in method.projector if isinstance(m, nn.Linear)]) == 3
    patch = backbone.net.patch_embed.proj.weight
    assert not patch.requires_grad
    before = patch.detach().clone()
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    x = torch.rand(4, 1, 16, 16)
    loss = method.training_step(Batch([x, x.flip(-1)], torch.arange(4)), at(0))["loss"]
    loss.backward()
    optimizer.step()
    assert torch.equal(patch, before) and patch.grad is None
    torch.testing.assert_close(backbone.net.pos_embed, official_sincos(4, 4, 192), atol=1e-5, rtol=0)  # fixed
    assert any(not torch.equal(p, q) for p, q in zip(backbone.net.blocks.parameters(),
                                                      method.momentum_encoder[0].net.blocks.parameters()))


# -- SupCon ------------------------------------------------------------------------------------


def test_supcon_positives_are_every_other_view_of_the_class_by_hand():
    method = SupCon(linear_backbone(), proj_hidden_dim=8, proj_dim=4, temperature=0.2).train()
    x1, x2 = views(4, 2)
    labels = torch.tensor([0, 1, 0, 2])
    loss = method.training_step(Batch([x1, x2], torch.arange(4), labels), at(0))["loss"]
    with torch.no_grad():
        z = torch.cat([method.projector(method.backbone(x)) for x in (x1, x2)]).double()
    u = F.normalize(z, dim=1).numpy()
    y = labels.repeat(2).numpy()
    total, anchors = 0.0, 0
    for i in range(8):
        positives = [p for p in range(8) if p != i and y[p] == y[i]]
        log_den = math.log(sum(math.exp(u[i] @ u[a] / 0.2) for a in range(8) if a != i))
        total += -sum(u[i] @ u[p] / 0.2 - log_den for p in positives) / len(positives)
        anchors += 1
    # class 1 and 2 anchors still have a positive: their own other view
    assert loss.item() == pytest.approx(total / anchors, rel=1e-5)


def test_label_methods_say_they_need_labels():
    for cls in (SupCon, Triplet, NPair):
        with pytest.raises(ValueError, match=f"{cls.__name__} learns from class labels"):
            cls(linear_backbone()).training_step(Batch(views(4, 0, cls.views_needed[0]), torch.arange(4)), at(0))


# -- triplet -----------------------------------------------------------------------------------


def test_batch_hard_mining_picks_the_farthest_positive_and_the_closest_negative():
    # Points on a line (embedding = position, then L2-normalised by the method; we test the loss
    # on the raw positions): anchor 0 at 0.0, positives at 0.1 and 0.5, negatives at 0.3 and 2.0.
    e = torch.tensor([[0.0], [0.1], [0.5], [0.3], [2.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1])
    loss = losses.batch_hard_triplet(e, y, margin=0.2)
    # anchor 0: hardest positive 0.5 (not 0.1), hardest negative 0.3 (not 2.0): [0.5 - 0.3 + 0.2]
    # anchor 1: positives 0.1->0 (0.1), 0.5 (0.4) -> 0.4; negatives 0.2, 1.9 -> 0.2: [0.4 - 0.2 + 0.2]
    # anchor 2: positives 0.5, 0.4 -> 0.5; negatives 0.2, 1.5 -> 0.2: [0.5 - 0.2 + 0.2]
    # anchor 3 (class 1): positive 1.7; negatives 0.3, 0.2, 0.2 -> 0.2: [1.7 - 0.2 + 0.2]
    # anchor 4: positive 1.7; negatives 2.0, 1.9, 1.5 -> 1.5: [1.7 - 1.5 + 0.2]
    hinges = [0.4, 0.4, 0.5, 1.7, 0.4]
    assert loss.item() == pytest.approx(sum(hinges) / 5, abs=1e-5)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
@pytest.mark.parametrize("squared", [False, True])
def test_triplet_method_mines_on_normalised_embeddings(mining, squared):
    method = Triplet(linear_backbone(), embed_dim=4, margin=0.3, mining=mining, squared=squared).train()
    x = views(6, 5, 1)[0]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = method.training_step(Batch([x], torch.arange(6), labels), at(0))["loss"]
    with torch.no_grad():
        e = F.normalize(method.embedding(method.backbone(x)), dim=1)
    mine = losses.batch_hard_triplet if mining == "batch_hard" else losses.semi_hard_triplet
    assert loss.item() == pytest.approx(mine(e, labels, 0.3, squared=squared).item(), rel=1e-6)
    assert loss.item() != pytest.approx(mine(e, labels, 0.3, squared=not squared).item(), rel=1e-3)
    with pytest.raises(ValueError, match="mining must be one of"):
        Triplet(linear_backbone(), mining="hardest")


# -- N-pair ------------------------------------------------------------------------------------


def test_pair_up_makes_disjoint_same_class_pairs():
    labels = torch.tensor([3, 1, 3, 3, 0, 1, 3, 2, 1])
    anchor, positive = pair_up(labels, torch.Generator().manual_seed(0))
    assert torch.equal(labels[anchor], labels[positive])
    used = torch.cat([anchor, positive])
    assert used.unique().numel() == used.numel()  # no image twice
    # class 3 has 4 images -> 2 pairs, class 1 has 3 -> 1, classes 0 and 2 one image -> none
    assert sorted(labels[anchor].tolist()) == [1, 3, 3]


def test_n_pair_with_labels_leaves_the_own_class_out_of_the_negatives():
    g = torch.Generator().manual_seed(6)
    a, p = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2])
    expected = 0.0
    for i in range(4):
        others = [j for j in range(4) if y[j] != y[i]]
        expected += math.log(1 + sum(math.exp(a[i] @ p[j] - a[i] @ p[i]) for j in others))
    assert losses.n_pair(a, p, labels=y).item() == pytest.approx(expected / 4, rel=1e-10)
    distinct = torch.tensor([0, 1, 2, 3])
    assert losses.n_pair(a, p, labels=distinct).item() == pytest.approx(losses.n_pair(a, p).item(), rel=1e-12)


def test_npair_method_adds_the_l2_penalty_of_tf_npairs_loss():
    method = NPair(linear_backbone(), embed_dim=4, l2_reg=0.002).train()
    x = views(6, 7, 1)[0]
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    torch.manual_seed(11)
    loss = method.training_step(Batch([x], torch.arange(6), labels), at(0))["loss"]
    torch.manual_seed(11)
    anchor, positive = pair_up(labels)
    with torch.no_grad():
        e = method.embedding(method.backbone(x)).double()
    a, p = e[anchor], e[positive]
    # tf.contrib.losses.metric_learning.npairs_loss: l2loss = 0.25 * reg_lambda * (reg_anchor + reg_positive),
    # each reg the batch mean of the squared norms.
    expected = losses.n_pair(a, p, labels=labels[anchor]).item() + 0.25 * 0.002 * (
        (a ** 2).sum(1).mean() + (p ** 2).sum(1).mean()).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
