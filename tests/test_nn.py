"""selfsup.nn: backbones, heads, momentum update, key queue, shuffle-BN."""

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.nn import (DINOHead, GlobalBatchNorm, KeyQueue, build_backbone, convert_sync_batchnorm, cosine,
                        feature_map, frozen_copy, momentum_update, projection_mlp, shuffle_bn, shuffled_forward,
                        split_batchnorm, split_features, SplitBatchNorm, warmup_cosine, with_in_channels)


@pytest.mark.parametrize("name,channels,size,dim", [("convnet", 1, 28, 256), ("convnet", 3, 32, 256),
                                                    ("resnet18", 3, 32, 512), ("vit_tiny", 3, 32, 192)])
def test_backbone_output_shape(name, channels, size, dim):
    net = build_backbone(name, in_channels=channels, image_size=size)
    assert net.out_dim == dim
    assert net(torch.rand(2, channels, size, size)).shape == (2, dim)


def test_backbone_normalises_with_its_statistics():
    torch.manual_seed(0)
    net = build_backbone("convnet", in_channels=1, image_size=28, mean=[0.3], std=[0.2], width=4).eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(net(x), net.net((x - 0.3) / 0.2), atol=1e-6)
    # uint8 input is read as x / 255
    x8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(net(x8), net(x8.float() / 255), atol=1e-6)


def test_resnet_small_stem_keeps_resolution():
    net = build_backbone("resnet18", in_channels=3, image_size=32).net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)


@pytest.mark.vision
def test_small_stem_convolution_pads_so_a_32_pixel_image_stays_32_pixels():
    # SimCLR's CIFAR stem: conv 3x3, stride 1, padding 1 (no max-pool), so conv1 keeps the 32x32 grid.
    net = build_backbone("resnet18", in_channels=3, image_size=32).net
    assert net.conv1(torch.rand(1, 3, 32, 32)).shape == (1, 64, 32, 32)


@pytest.mark.vision
def test_resnet_gets_the_small_stem_up_to_64_pixels_and_torchvisions_above():
    # resnet()'s docstring: the small stem "for images of 64 pixels or less".
    small = build_backbone("resnet18", in_channels=3, image_size=64).net
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    large = build_backbone("resnet18", in_channels=3, image_size=65).net
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)


@pytest.mark.vision
def test_resnet_large_stem_for_one_channel_is_torchvisions_stem_with_one_input_channel():
    # Above 64 pixels a grey image gets torchvision's stem (7x7 stride-2 conv, padding 3, no bias, then
    # the 3x3 stride-2 max-pool) with a 1-channel first convolution: 96 px -> 48 -> 24, as for RGB.
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    net = build_backbone("resnet18", in_channels=1, image_size=96).net
    assert net.conv1.weight.shape == (64, 1, 7, 7) and net.conv1.bias is None
    assert net.conv1.stride == reference.conv1.stride == (2, 2)
    assert net.conv1.padding == reference.conv1.padding == (3, 3)
    assert isinstance(net.maxpool, nn.MaxPool2d)
    assert ((net.maxpool.kernel_size, net.maxpool.stride, net.maxpool.padding)
            == (reference.maxpool.kernel_size, reference.maxpool.stride, reference.maxpool.padding))
    with torch.no_grad():
        grey = net.maxpool(net.conv1(torch.rand(1, 1, 96, 96)))
        rgb = reference.maxpool(reference.conv1(torch.rand(1, 3, 96, 96)))
    assert grey.shape == rgb.shape == (1, 64, 24, 24)


MEAN3, STD3 = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
"""Statistics unlike the default 0.5, so that a comparison sees the backbone's normalisation."""


def _normalised(x):
    """What a backbone built with MEAN3 and STD3 feeds its network: (x - mean) / std per channel."""
    return (x - torch.tensor(MEAN3).view(1, 3, 1, 1)) / torch.tensor(STD3).view(1, 3, 1, 1)


@pytest.mark.vision
def test_resnet_feature_maps_are_torchvisions_layer3_and_layer4():
    # torchvision's own graph of the same network (conv1 -> bn1 -> relu -> maxpool -> layer1..4) on the
    # input the backbone normalises.
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    backbone = build_backbone("resnet18", in_channels=3, image_size=16, mean=MEAN3, std=STD3).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        reference = create_feature_extractor(backbone.net, {"layer3": "layer3", "layer4": "layer4"})(_normalised(x))
        fmap = feature_map(backbone, x)
        local, pooled = split_features(backbone, x)
        whole = backbone(x)
    torch.testing.assert_close(fmap, reference["layer4"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(local, reference["layer3"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, whole, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def vit16():
    """A vit_tiny on 16-pixel images (4x4 patches of 4 pixels), built once: timm's init takes over a second."""
    torch.manual_seed(0)
    return build_backbone("vit_tiny", in_channels=3, image_size=16, mean=MEAN3, std=STD3).eval()


def _vit_tokens(backbone, x):
    """timm's forward_features on the input the backbone normalises."""
    with torch.no_grad():
        return backbone.net.forward_features(_normalised(x))


@pytest.mark.vision
def test_vit_feature_map_lays_the_patch_tokens_out_on_their_grid(vit16):
    # Token num_prefix_tokens + i * side + j is the patch in row i, column j (timm's row-major patch order).
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tokens = _vit_tokens(vit16, x)
    with torch.no_grad():
        fmap = feature_map(vit16, x)
    prefix, side = vit16.net.num_prefix_tokens, 4
    assert fmap.shape == (2, 192, side, side)
    for i in range(side):
        for j in range(side):
            torch.testing.assert_close(fmap[:, :, i, j], tokens[:, prefix + i * side + j], atol=1e-6, rtol=1e-6)


@pytest.mark.vision
def test_vit_backbone_returns_the_class_token(vit16):
    # vit()'s docstring: the CLS token of the final (normed) tokens, not an average of the tokens.
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(vit16(x), _vit_tokens(vit16, x)[:, 0], atol=1e-6, rtol=1e-6)


def test_wrong_channel_count_is_a_clear_error():
    net = build_backbone("convnet", in_channels=1, image_size=28)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\(2, 3, 28, 28\)"):
        net(torch.rand(2, 3, 28, 28))


@pytest.mark.parametrize("kwargs,match", [(dict(name="resnet7"), "unknown backbone"),
                                          (dict(in_channels=2), "in_channels must be 1 or 3"),
                                          (dict(mean=[0.1, 0.2]), "one per input channel"),
                                          (dict(std=[0.0]), "std must be positive")])
def test_bad_backbone_arguments(kwargs, match):
    args = dict(name="convnet", in_channels=1, image_size=28) | kwargs
    with pytest.raises(ValueError, match=match):
        build_backbone(args.pop("name"), **args)


def test_projection_mlp_layout():
    head = projection_mlp(16, 32, 8)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None  # BN follows: a bias would be redundant
    three = projection_mlp(16, 32, 8, num_layers=3, last_batch_norm=True)
    assert sum(isinstance(m, nn.Linear) for m in three) == 3 and isinstance(three[-1], nn.BatchNorm1d)


def test_momentum_update_matches_hand_computation_over_steps():
    torch.manual_seed(0)
    online = nn.Linear(3, 2)
    ema = frozen_copy(online)
    assert all(not p.requires_grad for p in ema.parameters())
    expected = [p.detach().clone().double() for p in ema.parameters()]
    m = 0.9
    for _ in range(4):
        with torch.no_grad():  # the optimiser moves the online weights
            for p in online.parameters():
                p.add_(torch.randn_like(p))
        momentum_update(ema, online, m)
        expected = [m * e + (1 - m) * p.detach().double() for e, p in zip(expected, online.parameters())]
    for e, p in zip(expected, ema.parameters()):
        assert torch.allclose(p.double(), e, atol=1e-6)


def test_momentum_update_over_several_modules_and_bad_momentum():
    a, b = nn.Linear(2, 2), nn.Linear(2, 1)
    ema = frozen_copy(nn.Sequential(a, b))
    with torch.no_grad():
        b.weight.fill_(1.0)
    before = ema[1].weight.clone()
    momentum_update(ema, (a, b), 0.5)
    assert torch.allclose(ema[1].weight, 0.5 * before + 0.5)
    with pytest.raises(ValueError, match="momentum"):
        momentum_update(ema, (a, b), 1.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_momentum_encoder_in_16_bits_is_refused_since_its_update_rounds_away(dtype):
    # Why: bf16 weights at m = 0.996, 100 updates towards a target 10% away, move not one weight (the lerp's
    # step is under half an ulp). A train.precision=bf16-true run would train its key encoder not at all.
    online = nn.Linear(64, 64).to(dtype)
    ema = frozen_copy(online)
    with torch.no_grad():
        online.weight.mul_(1.1)
    if dtype == torch.bfloat16:
        before = ema.weight.clone()
        with torch.no_grad():
            for _ in range(100):
                torch._foreach_lerp_(list(ema.parameters()), list(online.parameters()), 1 - 0.996)
        assert torch.equal(ema.weight, before)
    with pytest.raises(ValueError, match=r"rounds away; keep them in float32 \(train.precision=bf16-mixed"):
        momentum_update(ema, online, 0.996)


def test_cosine_is_byols_momentum_schedule():
    # BYOL section 3.2: tau = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2.
    for k in (0, 1, 17, 50, 99, 100):
        assert cosine(k, 100, 0.996, 1.0) == pytest.approx(1 - 0.004 * (math.cos(math.pi * k / 100) + 1) / 2)
    assert cosine(130, 100, 0.996, 1.0) == 1.0  # held after the end


def test_cosine_matches_dinos_numpy_schedule():
    # DINO's utils.cosine_scheduler: final + 0.5 (base - final) (1 + cos(pi i / len(iters))).
    steps = np.arange(40)
    reference = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * steps / 40))
    assert np.allclose([cosine(int(i), 40, 0.04, 0.4) for i in steps], reference)


def test_warmup_cosine_by_hand():
    base, warmup, total = 0.4, 10, 110
    assert warmup_cosine(0, total, warmup, base) == pytest.approx(0.04)
    assert warmup_cosine(9, total, warmup, base) == pytest.approx(0.4)
    assert warmup_cosine(10, total, warmup, base) == pytest.approx(0.4)
    assert warmup_cosine(60, total, warmup, base) == pytest.approx(0.2)  # half way through the cosine
    assert warmup_cosine(110, total, warmup, base, 0.01) == pytest.approx(0.01)
    assert warmup_cosine(35, total, warmup, base) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_dino_head_fixes_the_last_layers_norm_and_normalises_the_bottleneck():
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    magnitude = head.last_layer.parametrizations.weight.original0
    direction = head.last_layer.parametrizations.weight.original1
    assert torch.equal(magnitude, torch.ones(32, 1)) and not magnitude.requires_grad
    x = torch.randn(5, 16)
    # The output is unit-norm rows of the weight dotted with the unit-norm bottleneck, so |logit| <= 1.
    bottleneck = F.normalize(head.mlp(x), dim=1)
    expected = bottleneck @ F.normalize(direction, dim=1).T
    assert torch.allclose(head(x), expected, atol=1e-6)
    assert head(x).abs().max() <= 1 + 1e-6
    assert DINOHead(16, 32, 24, 8, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad


def test_dino_head_forward_by_hand_is_the_official_linear_gelu_stack():
    # facebookresearch/dino DINOHead: Linear-GELU-Linear-GELU-Linear, l2-normalised, then the weight-normed
    # last layer without bias, g = 1: rows of v / |v|. Weights and biases drawn at scale 1, so that the
    # GELU is far from linear and every bias counts.
    torch.manual_seed(0)
    head = DINOHead(6, out_dim=7, hidden_dim=10, bottleneck_dim=5)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    with torch.no_grad():
        for linear in linears:
            linear.weight.normal_()
            linear.bias.normal_()
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight.detach().double(), m.bias.detach().double()) for m in linears]
    direction = head.last_layer.parametrizations.weight.original1.detach().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    hidden = F.gelu(F.gelu(x @ w1.T + b1) @ w2.T + b2)
    bottleneck = hidden @ w3.T + b3
    bottleneck = bottleneck / bottleneck.norm(dim=1, keepdim=True)
    expected = bottleneck @ (direction / direction.norm(dim=1, keepdim=True)).T
    with torch.no_grad():
        torch.testing.assert_close(head(x.float()).double(), expected, atol=1e-5, rtol=1e-5)


def test_dino_head_initialises_its_mlp_as_the_official_init_weights():
    # facebookresearch/dino DINOHead._init_weights: trunc_normal_(std=.02) on every Linear weight, bias 0.
    torch.manual_seed(0)
    head = DINOHead(128, out_dim=8, hidden_dim=256, bottleneck_dim=128)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    for linear in linears:  # 32768 to 65536 draws each: the sample std is off by about 0.4%
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert abs(linear.weight.mean().item()) < 2e-3
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))


def test_global_batchnorm_is_plain_batchnorm_on_one_process():
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(3)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    net = convert_sync_batchnorm(nn.Sequential(nn.Identity(), reference), "cpu")
    assert isinstance(net[1], GlobalBatchNorm) and net[1] is not reference
    x = torch.randn(6, 3, 4, 4)
    fresh = nn.BatchNorm2d(3)
    fresh.load_state_dict(reference.state_dict())
    assert torch.allclose(net(x), fresh(x), atol=1e-6)
    assert torch.allclose(net[1].running_var, fresh.running_var)


def test_convert_sync_batchnorm_keeps_excluded_modules():
    model = nn.Module()
    model.online = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.key_encoder = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    convert_sync_batchnorm(model, "cpu", exclude=("key_encoder",))
    assert isinstance(model.online[1], GlobalBatchNorm)
    assert type(model.key_encoder[1]) is nn.BatchNorm1d
    convert_sync_batchnorm(model, "cuda")
    assert isinstance(model.key_encoder[1], nn.SyncBatchNorm)


def test_queue_wraps_when_length_is_not_a_multiple_of_the_batch():
    queue = KeyQueue(5, 2)
    keys = [torch.full((2, 2), float(i)) for i in range(3)]  # batches of 2 into 5 slots
    for k in keys:
        queue.enqueue(k)
    # slots 0,1 <- batch 0; 2,3 <- batch 1; 4,0 <- batch 2 (wrapped)
    expected = torch.tensor([2.0, 0.0, 1.0, 1.0, 2.0])
    assert torch.equal(queue.keys[:, 0], expected)
    assert int(queue.ptr) == 1


def test_queue_keeps_the_last_keys_of_a_batch_larger_than_itself():
    queue = KeyQueue(3, 1)
    queue.enqueue(torch.arange(7.0).view(7, 1))
    assert sorted(queue.keys.view(-1).tolist()) == [4.0, 5.0, 6.0]
    with pytest.raises(ValueError, match=r"\(N, 1\)"):
        queue.enqueue(torch.zeros(2, 4))


def test_queue_is_checkpointed_with_the_module():
    queue = KeyQueue(4, 3)
    queue.enqueue(torch.ones(3, 3))
    state = queue.state_dict()
    other = KeyQueue(4, 3)
    other.load_state_dict(state)
    assert torch.equal(other.keys, queue.keys) and int(other.ptr) == 3


def test_with_in_channels_initialises_its_copy_as_the_library_builds_the_network():
    # torchvision's ResNet draws its convolutions kaiming_normal_(mode="fan_out", nonlinearity="relu"):
    # std sqrt(2 / (64 * 3 * 3)) = 0.059 in layer1, where PyTorch's default gives 1 / sqrt(3 * fan_in) = 0.024.
    torch.manual_seed(0)
    resnet = build_backbone("resnet18", in_channels=3, image_size=32)
    ab = with_in_channels(resnet, 2, [0.5, 0.5], [0.25, 0.25])
    assert ab.net.conv1.in_channels == 2 and ab(torch.rand(2, 2, 32, 32)).shape == (2, 512)
    assert ab.net.layer1[0].conv1.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    # timm's ViT draws its class token (std 1e-6) and learned position embedding (std 0.02) anew.
    vit = build_backbone("vit_tiny", in_channels=3, image_size=16)
    gray = with_in_channels(vit, 1, [0.5], [0.25])
    assert not torch.equal(gray.net.cls_token, vit.net.cls_token) and 0 < gray.net.cls_token.std().item() < 1e-5
    assert not torch.equal(gray.net.pos_embed, vit.net.pos_embed)
    assert gray.net.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)


def test_shuffled_forward_equals_plain_forward_without_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(16, 4)
    assert torch.allclose(shuffled_forward(net, x), net(x), atol=1e-6)


def test_split_batchnorm_normalises_interleaved_sub_batches_as_the_official_demo():
    # The demo's SplitBatchNorm, written out per split: sample n in split n % S, each split with its own
    # mean and biased variance; the running statistics move to the mean of the splits' (unbiased) ones.
    torch.manual_seed(0)
    x = torch.randn(12, 3, 2, 2) + torch.arange(12.0).view(12, 1, 1, 1)
    bn = nn.BatchNorm2d(3, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    split = split_batchnorm(nn.Sequential(copy.deepcopy(bn)), 4)[0].train()
    assert isinstance(split, SplitBatchNorm) and split.num_splits == 4
    out = split(x)
    expected = torch.empty_like(x)
    means, variances = [], []
    for s in range(4):
        rows = x[s::4]
        mean, var = rows.mean(dim=(0, 2, 3)), rows.var(dim=(0, 2, 3), unbiased=False)
        normed = (rows - mean.view(1, 3, 1, 1)) / torch.sqrt(var.view(1, 3, 1, 1) + 1e-5)
        expected[s::4] = normed * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1)
        means.append(mean)
        variances.append(rows.var(dim=(0, 2, 3), unbiased=True))
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(split.running_mean, 0.9 * 0 + 0.1 * torch.stack(means).mean(0), atol=1e-6)
    assert torch.allclose(split.running_var, 0.9 * 1 + 0.1 * torch.stack(variances).mean(0), atol=1e-6)
    assert split.splits_for(10) == 2 and split.splits_for(7) == 1 and split.splits_for(64) == 4
    split.eval()
    assert torch.allclose(split(x), F.batch_norm(x, split.running_mean, split.running_var, bn.weight, bn.bias,
                                                 False, 0.0, 1e-5), atol=1e-6)  # eval: plain BatchNorm
    assert set(split.state_dict()) == set(bn.state_dict())  # checkpoints read it as BatchNorm


def test_split_batchnorm_without_momentum_keeps_the_cumulative_average():
    # torch BatchNorm's momentum=None: the running statistics are the plain average of every batch's so far,
    # r_n = r_{n-1} + (s_n - r_{n-1}) / n. A batch's statistics here, as the class documents: the mean over the
    # splits (sample n in split n % S) of each split's mean and unbiased variance.
    torch.manual_seed(0)
    bn = SplitBatchNorm(3, num_splits=2, momentum=None, affine=False).train()
    stats = []
    for offset in (0.0, 5.0):
        x = torch.randn(8, 3) * torch.tensor([1.0, 2.0, 0.5]) + offset + torch.arange(8.0).view(8, 1)
        bn(x)
        splits = (x[0::2], x[1::2])
        stats.append((torch.stack([rows.mean(0) for rows in splits]).mean(0),
                      torch.stack([rows.var(0, unbiased=True) for rows in splits]).mean(0)))
    assert int(bn.num_batches_tracked) == 2
    torch.testing.assert_close(bn.running_mean, (stats[0][0] + stats[1][0]) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, (stats[0][1] + stats[1][1]) / 2, atol=1e-5, rtol=1e-5)


def test_split_batchnorm_never_normalises_a_split_of_one_sample():
    # Batches the demo's splits do not divide: equal splits of at least 2 samples, each normalised with
    # its own statistics (F.batch_norm of the split by hand), or plain BatchNorm where no such split is.
    torch.manual_seed(0)
    bn = SplitBatchNorm(4, num_splits=8, affine=False).train()
    x = torch.randn(7, 4) + torch.arange(7.0).view(7, 1)
    torch.testing.assert_close(bn(x), F.batch_norm(x, None, None, training=True))  # 7 is prime: one split
    images = torch.randn(8, 4, 3, 3) + torch.arange(8.0).view(8, 1, 1, 1)
    out = bn(images)
    assert bn.splits_for(8) == 4 and bn.splits_for(6) == 3 and bn.splits_for(2) == 1
    for split in range(4):  # samples split, split + 4
        torch.testing.assert_close(out[split::4], F.batch_norm(images[split::4], None, None, training=True))


def test_shuffled_forward_under_ddp_keeps_each_keys_shape(monkeypatch):
    # One rank's share (a one-rank world: its gather is the tensor itself; rank 0's permutation needs no
    # broadcast) comes back in input order with the encoder's output shape, as on one process.
    monkeypatch.setattr(shuffle_bn.dist, "broadcast", lambda tensor, src: None)
    net = nn.Conv2d(3, 2, 1)
    x = torch.randn(6, 3, 4, 4)
    torch.testing.assert_close(shuffle_bn._shuffled_forward_ddp(net, x), net(x))


def test_shuffled_forward_normalises_each_key_within_a_random_group():
    torch.manual_seed(0)
    bn = split_batchnorm(nn.Sequential(nn.BatchNorm1d(3, affine=False)), 2).train()
    x = torch.randn(8, 3) + torch.arange(8.0).view(8, 1)  # rows differ, so sub-batch stats differ
    torch.manual_seed(1)
    out = shuffled_forward(bn, x)
    torch.manual_seed(1)
    perm = torch.randperm(8)
    expected = torch.empty_like(x)
    for group in (perm[0::2], perm[1::2]):  # split s of the permuted batch: its positions s, s + 2, ...
        rows = x[group]
        expected[group] = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, F.batch_norm(x, None, None, training=True), atol=1e-3)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_global_batchnorm_on_two_processes_is_batchnorm_of_the_whole_batch(tmp_path):
    script = Path(__file__).parent / "dist" / "check_batchnorm.py"
    sys.path.insert(0, str(script.parent))
    import check_batchnorm

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # The reference: torch's own BatchNorm on the concatenated batch, loss summed over both halves.
    x, weights = check_batchnorm.global_batch(2)
    reference = nn.BatchNorm2d(check_batchnorm.CHANNELS, momentum=0.3)
    reference.load_state_dict(check_batchnorm.batchnorm().state_dict())
    whole = x.clone().requires_grad_()
    out = reference(whole)
    (out * weights).sum().backward()
    n = check_batchnorm.N_PER_RANK
    for r, result in enumerate(ranks):
        rows = slice(r * n, (r + 1) * n)
        torch.testing.assert_close(result["out"], out[rows].detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["grad"], whole.grad[rows], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["running_mean"], reference.running_mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(result["running_var"], reference.running_var, atol=1e-5, rtol=1e-5)
    # Each rank's loss is its share of the whole sum, so the ranks' weight gradients add up to the whole batch's.
    torch.testing.assert_close(ranks[0]["weight_grad"] + ranks[1]["weight_grad"], reference.weight.grad,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.vision
@pytest.mark.parametrize(("in_channels", "image_size", "kernel"), [(3, 32, 3), (1, 28, 3), (1, 96, 7)])
def test_a_replaced_resnet_stem_is_initialised_as_torchvision_initialises_its_convolutions(in_channels, image_size,
                                                                                             kernel):
    # torchvision's ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu") on every Conv2d, std sqrt(2 / fan_out)
    # with fan_out = 64 * k * k; nn.Conv2d's default would give std 1 / sqrt(3 * fan_in), about twice that for 3x3 RGB.
    torch.manual_seed(0)
    weight = build_backbone("resnet18", in_channels=in_channels, image_size=image_size).net.conv1.weight
    assert weight.shape == (64, in_channels, kernel, kernel)
    assert float(weight.std()) == pytest.approx(math.sqrt(2 / (64 * kernel * kernel)), rel=0.1)
    assert abs(float(weight.mean())) < 0.1 * math.sqrt(2 / (64 * kernel * kernel))
