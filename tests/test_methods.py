"""selfsup.methods: SimCLR, MoCo, BYOL and DINO against hand computations of their papers' pseudocode."""

import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import BYOL, DINO, METHODS, Batch, Method, MoCo, Progress, SimCLR
from selfsup.nn import Backbone, SplitBatchNorm, build_backbone, convert_sync_batchnorm


def at(step: int, max_steps: int = 10, steps_per_epoch: int = 5) -> Progress:
    return Progress(step, max_steps, steps_per_epoch)


def linear_backbone(in_dim: int = 12, out_dim: int = 6) -> Backbone:
    """A BN-free backbone over 1x2x6 'images', so every output is a plain matrix product."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, out_dim))
    return Backbone(net, out_dim, in_channels=1, mean=[0.0], std=[1.0])


def views(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 2, 6, generator=g) for _ in range(2)]


def test_methods_follow_the_protocol_and_are_registered():
    for cls, args in ((SimCLR, dict(proj_hidden_dim=8, proj_dim=4)), (MoCo, dict(proj_hidden_dim=8, proj_dim=4)),
                      (BYOL, dict(proj_hidden_dim=8, proj_dim=4, pred_hidden_dim=8)),
                      (DINO, dict(out_dim=16, hidden_dim=8, bottleneck_dim=4))):
        method = cls(linear_backbone(), **args)
        assert isinstance(method, Method) and method.data_kind == "images"
        assert METHODS[cls.__name__.lower()] is cls
        assert method.augmentation(28) is not None


def test_simclr_loss_is_nt_xent_of_its_projections():
    method = SimCLR(linear_backbone(), proj_hidden_dim=8, proj_dim=4, temperature=0.5).train()
    v1, v2 = views(5, 0)
    loss = method.training_step(Batch([v1, v2], torch.arange(5)), at(0))["loss"]
    z = F.normalize(method.projector(method.backbone(torch.cat([v1, v2]))).double(), dim=1)
    n = 5
    total = 0.0
    for i in range(2 * n):  # hand-written NT-Xent: positive is the other view of the same image
        pos = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        logits = torch.stack([z[i] @ z[j] / 0.5 for j in others])
        total += -(z[i] @ z[pos] / 0.5 - torch.logsumexp(logits, 0))
    assert loss.item() == pytest.approx(total.item() / (2 * n), abs=1e-4)


def test_simclr_head_is_the_official_one():
    """google-research/simclr ``projection_head``: each layer ``linear_layer(use_bn=True)``, a Dense
    without bias then batch norm (TF ``center=use_bias``): the hidden layer's BN scales and shifts, the
    last one (``use_bias=False``) only scales. Computed here with plain tensors from the head's weights."""
    method = SimCLR(linear_backbone(), proj_hidden_dim=8, proj_dim=4).train()
    head = method.projector
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "ScaleBatchNorm1d"]
    assert head[0].bias is None and head[3].bias is None and head[4].bias is None
    with torch.no_grad():
        for bn in (head[1], head[4]):  # non-trivial affine parameters, so a dropped scale or shift shows
            bn.weight.uniform_(0.5, 2.0)
        head[1].bias.uniform_(-1.0, 1.0)
    h = torch.randn(7, 6, generator=torch.Generator().manual_seed(3)).double()

    def batch_norm(x):  # training mode: the batch's mean and biased variance, eps 1e-5
        return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)

    w1, w2 = head[0].weight.double(), head[3].weight.double()
    hidden = torch.relu(batch_norm(h @ w1.T) * head[1].weight.double() + head[1].bias.double())
    expected = batch_norm(hidden @ w2.T) * head[4].weight.double()
    assert torch.allclose(head.double()(h), expected, atol=1e-9)
    linear = SimCLR(linear_backbone(), proj_dim=4, proj_layers=1).projector  # the official `linear` mode
    assert [type(m).__name__ for m in linear] == ["Linear", "ScaleBatchNorm1d"] and linear[0].bias is None
    plain = SimCLR(linear_backbone(), proj_hidden_dim=8, proj_dim=4, proj_last_bn=False).projector
    assert isinstance(plain[-1], nn.Linear) and plain[-1].bias is not None
    for synced in (nn.SyncBatchNorm.convert_sync_batchnorm(SimCLR(linear_backbone(), proj_hidden_dim=8, proj_dim=4).projector),
                   convert_sync_batchnorm(SimCLR(linear_backbone(), proj_hidden_dim=8, proj_dim=4).projector, "cpu"),
                   convert_sync_batchnorm(SimCLR(linear_backbone(), proj_hidden_dim=8, proj_dim=4).projector, "cuda")):
        assert synced[-1].bias is None and synced[-1].weight is not None  # DDP's global BN keeps scale-only


def test_simclr_rejects_the_wrong_number_of_views():
    method = SimCLR(linear_backbone(), proj_hidden_dim=8, proj_dim=4)
    with pytest.raises(ValueError, match="expects 2 views"):
        method.training_step(Batch(views(3, 0)[:1], torch.arange(3)), at(0))


def make_moco(queue_size: int = 5, momentum: float = 0.9) -> MoCo:
    return MoCo(linear_backbone(), proj_hidden_dim=8, proj_dim=4, queue_size=queue_size,
                momentum=momentum, temperature=0.2, shuffle_bn=False).train()


def test_moco_loss_and_queue_after_one_step():
    moco = make_moco()
    queue_before = moco.queue.keys.clone()
    x_q, x_k = views(2, 1)
    loss = moco.training_step(Batch([x_q, x_k], torch.arange(2)), at(0))["loss"]
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
        loss = moco.training_step(Batch([x_q, x_k], torch.arange(2)), at(step, 3))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        moco.on_step_end(at(step, 3))
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
    # MoCo v2's official head (main_moco.py --mlp): Linear(dim_mlp, dim_mlp) - ReLU - Linear, no BatchNorm.
    v2 = MoCo(linear_backbone(), proj_hidden_dim=8, proj_dim=4, queue_size=8)
    assert [type(m) for m in v2.projector] == [nn.Linear, nn.ReLU, nn.Linear]
    assert v2.projector[0].bias is not None
    with_bn = MoCo(linear_backbone(), proj_hidden_dim=8, proj_dim=4, queue_size=8, head_batch_norm=True)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in with_bn.projector)
    with pytest.raises(ValueError, match="momentum"):
        MoCo(linear_backbone(), momentum=1.5)
    with pytest.raises(ValueError, match="temperature"):
        MoCo(linear_backbone(), temperature=0.0)


def test_moco_with_shuffle_bn_trains_a_convnet_step():
    torch.manual_seed(0)
    moco = MoCo(build_backbone("convnet", in_channels=1, image_size=28, width=4), proj_hidden_dim=16,
                proj_dim=8, queue_size=37, shuffle_splits=4)
    batch = Batch([torch.rand(16, 1, 28, 28), torch.rand(16, 1, 28, 28)], torch.arange(16))
    loss = moco.training_step(batch, at(0))["loss"]
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in moco.backbone.parameters())
    assert all(p.grad is None for p in moco.key_encoder.parameters())
    assert int(moco.queue.ptr) == 16


def test_moco_on_one_process_splits_batchnorm_in_both_encoders_as_the_official_demo():
    # The demo (colab/moco_cifar10_demo.ipynb) builds encoder_q and encoder_k with SplitBatchNorm: a query
    # is normalised with the statistics of its split (n % S) only, not of the whole batch.
    torch.manual_seed(0)
    moco = MoCo(build_backbone("convnet", in_channels=1, image_size=28, width=4), proj_hidden_dim=16,
                proj_dim=8, queue_size=37, shuffle_splits=4, head_batch_norm=True).train()
    for encoder in (moco.backbone, moco.projector, moco.key_encoder):
        norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(m, SplitBatchNorm) and m.num_splits == 4 for m in norms)
    x = torch.rand(16, 1, 28, 28)
    query = moco.projector(moco.backbone(x))[0]
    other_split, same_split = x.clone(), x.clone()
    other_split[1] += 1.0   # image 1 is in split 1
    same_split[4] += 1.0    # image 4 shares split 0 with image 0
    assert torch.allclose(moco.projector(moco.backbone(other_split))[0], query, atol=1e-5)
    assert not torch.allclose(moco.projector(moco.backbone(same_split))[0], query, atol=1e-3)
    plain = MoCo(build_backbone("convnet", in_channels=1, image_size=28, width=4), shuffle_bn=False)
    assert not any(isinstance(m, SplitBatchNorm) for m in plain.modules())


# ----------------------------------------------------------------------------------- BYOL


def make_byol(base_momentum: float = 0.9) -> BYOL:
    return BYOL(linear_backbone(), proj_hidden_dim=8, proj_dim=4, pred_hidden_dim=8,
                base_momentum=base_momentum).train()


def test_byol_loss_is_the_papers_symmetric_regression_loss():
    byol = make_byol()
    v1, v2 = views(6, 3)
    loss = byol.training_step(Batch([v1, v2], torch.arange(6)), at(0))["loss"]
    # Each view through each network on its own (the official code's apply_once_fn), so that
    # BatchNorm normalises each view with its own statistics.
    p1, p2 = (byol.predictor(byol.projector(byol.backbone(v))).double() for v in (v1, v2))
    t1, t2 = (byol.target(v).double() for v in (v1, v2))

    def regression(p, t):  # BYOL eq. 2: || p/|p| - t/|t| ||^2, averaged over the batch
        return ((p / p.norm(dim=1, keepdim=True) - t / t.norm(dim=1, keepdim=True)) ** 2).sum(dim=1).mean()

    assert loss.item() == pytest.approx((regression(p1, t2) + regression(p2, t1)).item(), abs=1e-5)


def test_byol_heads_are_the_official_mlp():
    # deepmind-research byol/utils/networks.py MLP: Linear - BatchNorm - ReLU - Linear(with_bias=False).
    byol = make_byol()
    for head in (byol.projector, byol.predictor):
        assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
        assert head[-1].bias is None


def test_byol_target_gets_no_gradient_even_if_its_weights_could_take_one():
    byol = make_byol()
    for p in byol.target.parameters():
        p.requires_grad_(True)  # the stop-gradient must come from the method, not from the frozen flag
    byol.training_step(Batch(views(4, 1), torch.arange(4)), at(0))["loss"].backward()
    assert all(p.grad is None for p in byol.target.parameters())
    assert all(p.grad is not None for p in byol.predictor.parameters())


def test_byol_target_follows_the_cosine_momentum_schedule_by_hand():
    byol = make_byol(base_momentum=0.9)
    optimizer = torch.optim.SGD([p for p in byol.parameters() if p.requires_grad], lr=0.3)
    target = [p.detach().clone().double() for p in byol.target.parameters()]
    total = 4
    for step in range(total):
        loss = byol.training_step(Batch(views(4, 20 + step), torch.arange(4)), at(step, total))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        byol.on_step_end(at(step, total))
        tau = 1 - (1 - 0.9) * (math.cos(math.pi * step / total) + 1) / 2  # BYOL section 3.2
        online = [p.detach().double() for p in (*byol.backbone.parameters(), *byol.projector.parameters())]
        target = [tau * t + (1 - tau) * o for t, o in zip(target, online)]
    for expected, actual in zip(target, byol.target.parameters()):
        assert torch.allclose(actual.double(), expected, atol=1e-6)
    assert byol.eval_encoder() is byol.backbone


# ----------------------------------------------------------------------------------- DINO


def make_dino(**kwargs) -> DINO:
    torch.manual_seed(0)
    return DINO(linear_backbone(), out_dim=16, hidden_dim=8, bottleneck_dim=4, **kwargs).train()


def multi_crop(n: int, n_local: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 2, 6, generator=g) for _ in range(2 + n_local)]


def test_dino_teacher_temperature_warms_up_as_np_linspace_by_epoch():
    dino = make_dino(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=30)
    reference = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(70, 0.07)])  # main_dino.py, 100 epochs
    assert np.allclose([dino.teacher_temperature(epoch) for epoch in range(100)], reference)


@pytest.mark.parametrize("warmup_epochs", [1, 0])
def test_dino_teacher_temperature_with_a_one_or_zero_epoch_warmup_is_main_dinos_schedule(warmup_epochs):
    # main_dino.py's DINOLoss: np.linspace(warmup, teacher, n) is [warmup] for n = 1 and empty for n = 0.
    dino = make_dino(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=warmup_epochs)
    official = np.concatenate((np.linspace(0.04, 0.07, warmup_epochs), np.ones(5 - warmup_epochs) * 0.07))
    assert [dino.teacher_temperature(epoch) for epoch in range(5)] == pytest.approx(official.tolist())
    assert dino.teacher_temperature(0) == (0.04 if warmup_epochs else 0.07)


def test_dino_loss_pairs_every_teacher_view_with_every_other_student_view():
    # In the teacher's warm-up: epoch 3 of 10 from 0.02 to 0.07 (np.linspace(0.02, 0.07, 10)[3]).
    dino = make_dino(student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.02, warmup_teacher_temp_epochs=10)
    crops = multi_crop(3, n_local=2, seed=4)
    progress = Progress(35, 200, 10)  # step 35 of 10 per epoch: epoch 3.5, whole epoch 3
    out = dino.training_step(Batch(crops, torch.arange(3)), progress)
    loss, tau = out["loss"], float(np.linspace(0.02, 0.07, 10)[3])
    assert out["teacher_temp"].item() == pytest.approx(tau)
    student = [dino.head(dino.backbone(c)).double() for c in crops]
    teacher = [dino.teacher(c).double() for c in crops[:2]]
    total, pairs = 0.0, 0
    for v in range(2):  # Algorithm 1: teacher views v, student views w != v, centre 0 at the first step
        target = torch.softmax(teacher[v] / tau, dim=1)
        for w in range(4):
            if w != v:
                total += -(target * torch.log_softmax(student[w] / 0.1, dim=1)).sum(dim=1).mean()
                pairs += 1
    assert pairs == 6
    assert loss.item() == pytest.approx(total.item() / pairs, abs=1e-5)


def test_dino_centre_is_the_ema_of_teacher_outputs():
    dino = make_dino(center_momentum=0.9)
    first, second = multi_crop(3, 1, seed=5), multi_crop(3, 1, seed=6)
    with torch.no_grad():
        mean1 = dino.teacher(torch.cat(first[:2])).mean(dim=0)
    dino.training_step(Batch(first, torch.arange(3)), at(0))
    assert torch.allclose(dino.criterion.center, 0.1 * mean1, atol=1e-6)
    with torch.no_grad():
        mean2 = dino.teacher(torch.cat(second[:2])).mean(dim=0)
    dino.training_step(Batch(second, torch.arange(3)), at(1))
    assert torch.allclose(dino.criterion.center, 0.9 * 0.1 * mean1 + 0.1 * mean2, atol=1e-6)


def test_dino_teacher_gets_no_gradient_and_follows_the_momentum_schedule():
    dino = make_dino(base_momentum=0.8, clip_grad=0.0, freeze_last_layer_epochs=0)
    for p in dino.teacher.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD([p for p in (*dino.backbone.parameters(), *dino.head.parameters())
                                 if p.requires_grad], lr=0.5)
    teacher = [p.detach().clone().double() for p in dino.teacher.parameters()]
    total = 3
    for step in range(total):
        loss = dino.training_step(Batch(multi_crop(4, 2, seed=step), torch.arange(4)), at(step, total))["loss"]
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in dino.teacher.parameters())
        dino.after_backward(at(step, total))
        optimizer.step()
        dino.on_step_end(at(step, total))
        lam = 1 - (1 - 0.8) * (math.cos(math.pi * step / total) + 1) / 2
        student = [p.detach().double() for p in (*dino.backbone.parameters(), *dino.head.parameters())]
        teacher = [lam * t + (1 - lam) * s for t, s in zip(teacher, student)]
    for expected, actual in zip(teacher, dino.teacher.parameters()):
        assert torch.allclose(actual.double(), expected, atol=1e-6)
    assert dino.eval_encoder() is dino.teacher[0]


def test_dino_freezes_the_last_layer_in_the_first_epoch():
    dino = make_dino(freeze_last_layer_epochs=1, clip_grad=0.0)
    crops = multi_crop(4, 2, seed=7)
    for step, frozen in ((4, True), (5, False)):  # 5 steps per epoch: step 4 is in epoch 0, step 5 in epoch 1
        dino.zero_grad()
        dino.training_step(Batch(crops, torch.arange(4)), at(step))["loss"].backward()
        dino.after_backward(at(step))
        last = [p for p in dino.head.last_layer.parameters() if p.requires_grad]
        assert last and all((p.grad is None) == frozen for p in last)


def test_dino_clips_each_parameters_gradient_on_its_own():
    dino = make_dino(freeze_last_layer_epochs=0, clip_grad=1.0)
    dino.training_step(Batch(multi_crop(4, 2, seed=8), torch.arange(4)), at(0))["loss"].backward()
    student = [p for p in (*dino.backbone.parameters(), *dino.head.parameters()) if p.grad is not None]
    norms = torch.stack([p.grad.norm() for p in student])
    clip = float(norms.median())  # half the gradients above the clip, half below
    dino.clip_grad = clip
    before = [p.grad.clone() for p in student]
    dino.after_backward(at(0))
    for grad, p in zip(before, student):
        # utils.clip_gradients of the DINO code: each gradient scaled by min(1, clip / (|g| + 1e-6)).
        expected = grad * min(1.0, clip / (float(grad.norm()) + 1e-6))
        torch.testing.assert_close(p.grad, expected, atol=1e-7, rtol=1e-6)
    assert any(float(g.norm()) < clip for g in before) and any(float(g.norm()) > clip for g in before)


@pytest.mark.parametrize("name, channels, size", [("convnet", 1, 28), pytest.param("resnet18", 3, 32, marks=pytest.mark.vision),
                                                  pytest.param("vit_tiny", 3, 32, marks=pytest.mark.vision)])
def test_dino_trains_a_step_with_each_backbone_family(name, channels, size):
    torch.manual_seed(0)
    dino = DINO(build_backbone(name, in_channels=channels, image_size=size, width=4), out_dim=32, hidden_dim=16,
                bottleneck_dim=8)
    augmentation = dino.augmentation(size)
    images = torch.randint(0, 256, (4, channels, size, size), dtype=torch.uint8)
    crops = augmentation(images)
    assert len(crops) == 10 and crops[2].shape[-1] == round(size * 96 / 224)
    loss = dino.training_step(Batch(crops, torch.arange(4)), at(0))["loss"]
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in dino.backbone.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", [n for n, cls in METHODS.items()
                                  if getattr(cls, "data_kind", "images") in ("images", "video", "image_text")
                                  and not getattr(cls, "needs_graph", False)])
def test_building_a_method_leaves_its_backbone_as_it_was(name):
    """A method's constructor may probe shapes, but must not run the backbone in training mode: that
    would move BatchNorm's running statistics, and the "random weights" floor would no longer be the
    freshly initialised network (DIM's and colorization's probes once did)."""
    if name == "clip":
        pytest.importorskip("open_clip")  # its default text tower's tokenizer (the clip extra)
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=3, image_size=32, width=4)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    cls = METHODS[name]
    extra = {"num_samples": 16} if getattr(cls, "needs_num_samples", False) else {}
    cls(backbone, **extra)
    after = backbone.state_dict()
    changed = [k for k, v in before.items() if k in after and not torch.equal(after[k], v)]
    assert not changed, f"{name} changed {changed[:3]}"
