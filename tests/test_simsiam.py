"""SimSiam: the loss by hand, the stop-gradient, the fixed predictor LR, the collapse monitor, and
the paper's Fig. 2 result that without the stop-gradient the outputs collapse."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.config import OptimConfig, load_config
from selfsup.engine import Schedule, build_optimizer, pretrain
from selfsup.methods import METHODS, Batch, Method, Progress, SimSiam
from selfsup.methods.simsiam import output_std
from selfsup.nn import Backbone


def linear_backbone() -> Backbone:
    torch.manual_seed(0)
    return Backbone(nn.Sequential(nn.Flatten(), nn.Linear(12, 6)), 6, in_channels=1, mean=[0.0], std=[1.0])


def make(**kwargs) -> SimSiam:
    args = dict(proj_hidden_dim=8, proj_dim=5, pred_hidden_dim=3, proj_layers=2) | kwargs
    return SimSiam(linear_backbone(), **args).train()


def views(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 2, 6, generator=g) for _ in range(2)]


AT = Progress(0, 10, 5)


def test_simsiam_is_registered_and_follows_the_protocol():
    method = make()
    assert METHODS["simsiam"] is SimSiam and isinstance(method, Method)
    assert method.augmentation(28).views[0].scale == (0.2, 1.0)  # MoCo v2's views, as the official code
    # Projector: Linear-BN-ReLU-Linear-BN, the last BN without affine parameters (official code).
    kinds = [type(m).__name__ for m in method.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert method.projector[-1].affine is False
    with pytest.raises(ValueError, match="proj_layers must be >= 2"):
        make(proj_layers=1)


def test_loss_is_half_the_sum_of_both_negative_cosines():
    method = make()
    v1, v2 = views(7, 1)
    loss = method.training_step(Batch([v1, v2], torch.arange(7)), AT)["loss"]
    with torch.no_grad():
        z1, z2 = (method.projector(method.backbone(v)).double().numpy() for v in (v1, v2))
        p1, p2 = (method.predictor(torch.from_numpy(z).float()).double().numpy() for z in (z1, z2))

    def d(p, z):  # D(p, z) = -(p / |p|) . (z / |z|), averaged over the batch (Algorithm 1)
        return -np.mean(np.sum(p * z, 1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1)))

    assert loss.item() == pytest.approx(0.5 * (d(p1, z2) + d(p2, z1)), abs=1e-6)


def _grads(method: SimSiam, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in method.parameters() if p.requires_grad]
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True), params)]


def test_no_gradient_reaches_the_target_branch():
    # The gradient of SimSiam's loss must equal that of the same loss against targets computed
    # separately and held constant, and must differ from the gradient without the stop-gradient.
    method = make()
    v = views(8, 2)
    ours = _grads(method, method.training_step(Batch(v, torch.arange(8)), AT)["loss"])

    z1, z2 = (method.projector(method.backbone(x)) for x in v)
    p1, p2 = method.predictor(z1), method.predictor(z2)
    cos = torch.nn.functional.cosine_similarity
    c1, c2 = z1.detach().clone(), z2.detach().clone()
    held = _grads(method, -0.5 * (cos(p1, c2).mean() + cos(p2, c1).mean()))
    through = _grads(method, -0.5 * (cos(p1, z2).mean() + cos(p2, z1).mean()))
    for a, b in zip(ours, held):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert max((a - b).abs().max().item() for a, b in zip(ours, through)) > 1e-4

    ablation = make(stop_gradient=False)
    no_stop = _grads(ablation, ablation.training_step(Batch(v, torch.arange(8)), AT)["loss"])
    for a, b in zip(no_stop, through):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_the_predictor_keeps_the_peak_lr_while_the_encoder_follows_the_cosine():
    method = make()
    cfg = OptimConfig(lr=0.05, warmup_epochs=0, weight_decay=1e-4)
    optimizer = build_optimizer(method, cfg, lr=0.05)
    schedule = Schedule.build(cfg, base_lr=0.05, max_steps=100, steps_per_epoch=10)
    predictor = {id(p) for p in method.predictor.parameters()}
    for step in (0, 50, 99):
        schedule.apply(optimizer, step)
        cosine = 0.05 * 0.5 * (1 + math.cos(math.pi * step / 100))  # the paper's cosine decay, by hand
        for group in optimizer.param_groups:
            in_predictor = {id(p) in predictor for p in group["params"]}
            assert len(in_predictor) == 1  # a group is all predictor or all encoder
            expected = 0.05 if in_predictor == {True} else cosine
            assert group["lr"] == pytest.approx(expected, rel=1e-9), (step, in_predictor)
    assert sum(len(g["params"]) for g in optimizer.param_groups if g["fixed_lr"]) == len(predictor)
    assert not any(g["fixed_lr"] for g in build_optimizer(make(fixed_predictor_lr=False), cfg, 0.05).param_groups)


def test_output_std_is_one_over_sqrt_d_for_spread_outputs_and_zero_for_a_point():
    g = torch.Generator().manual_seed(0)
    # An isotropic Gaussian direction is uniform on the sphere: each coordinate of z / |z| has
    # variance 1 / d, so the std is 1 / sqrt(d) up to sampling error (and O(1/d) from the mean).
    iso = torch.randn(20000, 64, generator=g)
    assert output_std(iso).item() == pytest.approx(1 / math.sqrt(64), rel=0.02)
    assert output_std(torch.ones(100, 64) * torch.randn(1, 64, generator=g)).item() == pytest.approx(0, abs=1e-6)
    assert make(proj_dim=64).spread_std == pytest.approx(0.125)


def _run(tmp_path, stop_gradient: bool):
    cfg = load_config(None, [
        "data.name=digits", "data.size=16", "backbone.width=8", "method=simsiam", "method_args.proj_hidden_dim=64",
        "method_args.proj_dim=64", "method_args.pred_hidden_dim=16", "method_args.proj_layers=2",
        f"method_args.stop_gradient={str(stop_gradient).lower()}", "train.batch_size=64", "train.epochs=14",
        "optim.lr=0.1", "optim.warmup_epochs=0", "train.log_every=5", "train.progress=false", "train.knn_every=0",
        "eval.plots=false", "eval.save_embeddings=false", "eval.linear=false", "eval.knn=false",
        f"train.out_dir={tmp_path / str(stop_gradient)}"])
    return pretrain(cfg).history


@pytest.mark.slow
def test_without_stop_gradient_the_outputs_collapse_and_with_it_they_do_not(tmp_path):
    # The paper's Fig. 2 on digits: about 300 steps. 1/sqrt(64) = 0.125 is the std of outputs
    # spread over the sphere; the ablation's loss heads for the trivial minimum -1.
    spread = 1 / math.sqrt(64)
    kept, collapsed = _run(tmp_path, True), _run(tmp_path, False)
    assert len(kept["output_std"]) == len(kept["loss"]) > 50  # logged with the loss all along
    assert kept["output_std"][-1][1] > 0.9 * spread
    assert collapsed["output_std"][-1][1] < 0.6 * spread
    assert collapsed["loss"][-1][1] < -0.8 < kept["loss"][-1][1]
