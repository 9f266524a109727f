"""selfsup.engine: schedules and parameter groups, LARS, atomic checkpoints, the NaN guard, exact
resume after a kill, resume with a longer schedule, precision and allocator choices."""

import inspect
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning_fabric.plugins.precision import MixedPrecision
from torch import nn

from selfsup.config import ConfigError, OptimConfig, Optimizer, load_config
from selfsup.engine import (NonFiniteLossError, Schedule, Trainer, allocator, build_optimizer, load_checkpoint,
                            param_groups, pretrain, resolve_precision, save_atomic)
from selfsup.engine import monitor, state
from selfsup.methods import METHODS, SimCLR
from selfsup.nn import warmup_cosine

SCRIPT = Path(__file__).parent / "scripts" / "pretrain_digits.py"


class TwoHeads(nn.Module):
    """A method whose second head has a fixed, halved learning rate and no weight decay."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)

    def param_groups(self):
        return [{"params": list(self.body.parameters())},
                {"params": list(self.head.parameters()), "lr_scale": 0.5, "fixed_lr": True, "weight_decay_scale": 0.0}]


def test_param_groups_split_off_biases_and_norms_and_keep_the_methods_settings():
    model = TwoHeads()
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    shapes = [sorted(tuple(p.shape) for p in g["params"]) for g in groups]
    assert shapes == [[(4, 3)], [(4,), (4,), (4,)], [(2, 4)], [(2,)]]
    assert [g["weight_decay_scale"] for g in groups] == [1.0, 0.0, 0.0, 0.0]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 0.5, 0.5]
    assert [g["fixed_lr"] for g in groups] == [False, False, True, True]
    assert len(param_groups(model, OptimConfig(exclude_bias_norm=False))) == 2


def test_weight_decay_of_biases_and_norms_follows_each_methods_official_code():
    """SimCLR, BYOL, DINO and MoCo v3's LARS keep biases and norms out of weight decay; MoCo v1/v2
    (facebookresearch/moco main_moco.py), SimSiam, SupCon, InstDisc, CMC, InvaSpread, rotation, jigsaw
    and DenseCL build ``SGD(model.parameters(), weight_decay=...)``: every tensor decayed (the Viewmaker's
    encoder too: tests/test_viewmaker.py)."""
    from selfsup.methods import METHODS
    from selfsup.nn import build_backbone

    def decayed_scalars(name: str, **optim) -> tuple[int, int]:
        backbone = build_backbone("convnet", in_channels=3, image_size=28, width=8)
        small = {"simsiam": dict(proj_hidden_dim=16, proj_dim=16), "byol": dict(proj_hidden_dim=16, pred_hidden_dim=16),
                 "dino": dict(out_dim=32, hidden_dim=16, bottleneck_dim=8), "mocov3": dict(hidden_dim=16),
                 "simclr": dict(proj_hidden_dim=16), "densecl": dict(queue_size=64)}.get(name, {})
        if METHODS[name].needs_num_samples:
            small["num_samples"] = 16
        method = METHODS[name](backbone, **small)
        groups = param_groups(method, OptimConfig(**optim))
        one_d = [g["weight_decay_scale"] for g in groups for p in g["params"] if p.ndim <= 1]
        return sum(scale > 0 for scale in one_d), len(one_d)

    for name in ("moco", "simsiam", "supcon", "instdisc", "cmc", "invaspread", "rotation", "jigsaw", "densecl",
                 "dense_object_net"):
        decayed, total = decayed_scalars(name)
        assert total > 0 and decayed == total, name
    for name in ("simclr", "byol", "dino", "mocov3"):
        decayed, total = decayed_scalars(name)
        assert total > 0 and decayed == 0, name
    assert decayed_scalars("moco", exclude_bias_norm=True)[0] == 0  # the key overrides the method
    assert decayed_scalars("simclr", exclude_bias_norm=False)[0] > 0


def test_param_groups_refuse_a_forgotten_or_repeated_parameter():
    model = TwoHeads()
    model.param_groups = lambda: [{"params": list(model.body.parameters())}]
    with pytest.raises(ValueError, match="in no param group: head.weight, head.bias"):
        param_groups(model, OptimConfig())
    model.param_groups = lambda: [{"params": list(model.parameters())}, {"params": list(model.head.parameters())}]
    with pytest.raises(ValueError, match="repeats a parameter"):
        param_groups(model, OptimConfig())
    model.param_groups = lambda: [{"params": list(model.parameters()), "lr": 0.1}]
    with pytest.raises(ValueError, match="unknown keys"):
        param_groups(model, OptimConfig())


def test_schedule_sets_each_groups_lr_and_weight_decay_per_step():
    cfg = OptimConfig(weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=1, min_lr_ratio=0.1)
    optimizer = build_optimizer(TwoHeads(), cfg, lr=0.8)
    schedule = Schedule.build(cfg, base_lr=0.8, max_steps=20, steps_per_epoch=4)
    for step in (0, 3, 4, 11, 19):
        lr = schedule.apply(optimizer, step)
        assert lr == pytest.approx(warmup_cosine(step, 20, 4, 0.8, 0.08))
        wd = 0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * step / 20)) / 2  # DINO's cosine 0.04 -> 0.4
        body, body_norms, head, head_bias = optimizer.param_groups
        assert body["lr"] == body_norms["lr"] == pytest.approx(lr)
        assert head["lr"] == head_bias["lr"] == pytest.approx(0.5 * 0.8)  # fixed, scaled, never decayed
        assert body["weight_decay"] == pytest.approx(wd)
        assert body_norms["weight_decay"] == head["weight_decay"] == head_bias["weight_decay"] == 0.0


def test_schedule_warms_up_over_a_fractional_number_of_epochs_rounded_to_the_nearest_step():
    # 1.8 epochs of 7 steps = 12.6 -> 13 warmup steps (int would give 12); 1.2 x 7 = 8.4 -> 8 (ceil: 9).
    # Warmup step s has peak * (s + 1) / W, then the cosine runs over the remaining 30 - W steps.
    for warmup_epochs, warmup in ((1.8, 13), (1.2, 8)):
        lr = Schedule.build(OptimConfig(warmup_epochs=warmup_epochs), base_lr=0.6, max_steps=30, steps_per_epoch=7).lr
        assert lr[0] == pytest.approx(0.6 / warmup)
        assert lr[warmup - 2] == pytest.approx(0.6 * (warmup - 1) / warmup)
        assert lr[warmup - 1] == pytest.approx(0.6) and lr[warmup] == pytest.approx(0.6)
        assert lr[warmup + 3] == pytest.approx(0.6 * (1 + math.cos(math.pi * 3 / (30 - warmup))) / 2)


def test_a_warm_up_that_covers_the_whole_run_is_said():
    # 2 epochs of 7 steps against a 10-step run: the LR climbs to 10/14 of its peak and never decays.
    short = Schedule.build(OptimConfig(warmup_epochs=2), base_lr=0.6, max_steps=10, steps_per_epoch=7)
    assert short.warmup_steps == 14 and short.lr[-1] == pytest.approx(0.6 * 10 / 14)
    assert "14 steps and the run 10: the learning rate never reaches its peak (71% of it" in short.warmup_note()
    assert Schedule.build(OptimConfig(warmup_epochs=1), base_lr=0.6, max_steps=10, steps_per_epoch=7).warmup_note() \
        is None
    # A warm-up exactly as long as the run (a 1-epoch run of a 1-epoch warm-up) reaches the peak: not said.
    assert Schedule.build(OptimConfig(warmup_epochs=1), base_lr=0.6, max_steps=7, steps_per_epoch=7).warmup_note() \
        is None


def test_lars_step_is_the_papers_local_lr():
    # You et al. 2017, Algorithm 1: local LR = eta * |w| / (|g| + beta |w|), applied to (g + beta w);
    # groups without weight decay (biases, norms) get plain SGD with momentum.
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    g, gb = torch.randn(4, 3), torch.randn(4)
    model.weight.grad, model.bias.grad = g.clone(), gb.clone()
    opt = build_optimizer(model, OptimConfig(name=Optimizer.lars, weight_decay=0.01, momentum=0.9), lr=0.1)
    opt.step()
    local = 0.001 * w0.norm() / (g.norm() + 0.01 * w0.norm())
    update = local * (g + 0.01 * w0)
    assert torch.allclose(model.weight.detach(), w0 - 0.1 * update, atol=1e-7)
    assert torch.allclose(model.bias.detach(), b0 - 0.1 * gb, atol=1e-7)
    w1 = w0 - 0.1 * update
    model.weight.grad, model.bias.grad = g.clone(), gb.clone()
    opt.step()  # second step: the momentum buffer is 0.9 * previous + new
    update2 = 0.001 * w1.norm() / (g.norm() + 0.01 * w1.norm()) * (g + 0.01 * w1)
    assert torch.allclose(model.weight.detach(), w1 - 0.1 * (0.9 * update + update2), atol=1e-6)


def test_lars_adapts_weights_even_without_weight_decay():
    # timm's Lars adapts a group only while its weight decay is non-zero; ours follows the bias/norm split.
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    w0, g = model.weight.detach().clone(), torch.randn(4, 3)
    model.weight.grad, model.bias.grad = g.clone(), torch.zeros(4)
    build_optimizer(model, OptimConfig(name=Optimizer.lars, weight_decay=0.0, momentum=0.9), lr=0.1).step()
    assert torch.allclose(model.weight.detach(), w0 - 0.1 * 0.001 * w0.norm() / g.norm() * g, atol=1e-7)


@pytest.mark.parametrize("name,cls", [(Optimizer.sgd, torch.optim.SGD), (Optimizer.adamw, torch.optim.AdamW),
                                      (Optimizer.adam, torch.optim.Adam)])
def test_optimizer_types(name, cls):
    assert type(build_optimizer(TwoHeads(), OptimConfig(name=name), lr=0.1)) is cls  # AdamW subclasses Adam


def test_sgd_steps_with_momentum():
    # torch's SGD with momentum mu: buffer_t = mu * buffer_{t-1} + g_t (buffer_1 = g_1), w_t = w_{t-1} - lr * buffer_t.
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    (g1, gb1), (g2, gb2) = (torch.randn(4, 3), torch.randn(4)), (torch.randn(4, 3), torch.randn(4))
    opt = build_optimizer(model, OptimConfig(name=Optimizer.sgd, weight_decay=0.0, momentum=0.9), lr=0.1)
    model.weight.grad, model.bias.grad = g1.clone(), gb1.clone()
    opt.step()
    model.weight.grad, model.bias.grad = g2.clone(), gb2.clone()
    opt.step()
    torch.testing.assert_close(model.weight.detach(), w0 - 0.1 * g1 - 0.1 * (0.9 * g1 + g2))
    torch.testing.assert_close(model.bias.detach(), b0 - 0.1 * gb1 - 0.1 * (0.9 * gb1 + gb2))


def test_adamw_steps_with_the_configured_betas_and_decoupled_weight_decay():
    # Loshchilov & Hutter 2019, Algorithm 2: w <- w (1 - lr wd), then the Adam step with bias-corrected
    # moments m_t = b1 m + (1 - b1) g, v_t = b2 v + (1 - b2) g^2, over sqrt(v_hat) + eps (eps = 1e-8).
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    w = model.weight.detach().clone().double()
    grads = [torch.randn(4, 3), torch.randn(4, 3)]
    lr, wd, (b1, b2) = 0.1, 0.05, (0.5, 0.8)  # betas far from torch's default (0.9, 0.999)
    opt = build_optimizer(model, OptimConfig(name=Optimizer.adamw, weight_decay=wd, betas=[b1, b2]), lr=lr)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        model.weight.grad, model.bias.grad = g.clone(), torch.zeros(4)
        opt.step()
        g = g.double()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w * (1 - lr * wd) - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + 1e-8)
    torch.testing.assert_close(model.weight.detach().double(), w, atol=1e-6, rtol=0)


def test_adam_adds_weight_decay_to_the_gradient_before_its_scaling():
    # Kingma & Ba with L2 regularisation (torch.optim.Adam's weight_decay, Dense Object Nets' optimiser):
    # g <- g + wd w, then the same moments; the decay is scaled away with the gradient, unlike AdamW's.
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    w, bias = model.weight.detach().clone().double(), model.bias.detach().clone()
    grads = [torch.randn(4, 3) * 0.01, torch.randn(4, 3) * 0.01]
    lr, wd, (b1, b2) = 0.1, 0.5, (0.5, 0.8)
    opt = build_optimizer(model, OptimConfig(name=Optimizer.adam, weight_decay=wd, betas=[b1, b2],
                                             exclude_bias_norm=True), lr=lr)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        model.weight.grad, model.bias.grad = g.clone(), torch.zeros(4)
        opt.step()
        g = g.double() + wd * w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + 1e-8)
    torch.testing.assert_close(model.weight.detach().double(), w, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.bias.detach(), bias, atol=0, rtol=0)  # no gradient, no decay: still


@pytest.mark.parametrize("clip", [1.0, None, "method"], ids=["clipped", "unclipped", "by_the_method"])
def test_a_step_clips_the_gradient_to_grad_clip_and_logs_its_norm_before_clipping(tmp_path, monkeypatch, clip):
    """A gradient of norm 5 (3 on one tensor, 4 on another): optim.grad_clip=1 scales it by 1/5 before the
    SGD step, and train.log_grad_norm logs sqrt(3^2 + 4^2) = 5, the norm before clipping, either way; also
    when the method clips its own gradients in after_backward (DINO's per-parameter clip), here to 1/5."""
    overrides = ["train.precision=32-true", "optim.warmup_epochs=0", "optim.weight_decay=0", "train.log_grad_norm=true"]
    trainer = Trainer(tiny_config(tmp_path, *overrides, *([f"optim.grad_clip={clip}"] if clip == 1.0 else [])))
    if clip == "method":
        def clips_its_own(progress):
            for p in trainer.method.parameters():
                if p.grad is not None:
                    p.grad.mul_(1 / 5)
        monkeypatch.setattr(trainer.method, "after_backward", clips_its_own)
    params = dict(trainer.method.named_parameters())
    weight, bias = params["backbone.net.0.weight"], params["backbone.net.1.bias"]
    torch.manual_seed(0)
    g_weight, g_bias = torch.randn(weight.shape), torch.randn(bias.shape)
    g_weight, g_bias = 3 * g_weight / g_weight.norm(), 4 * g_bias / g_bias.norm()
    monkeypatch.setattr(trainer, "forward", lambda batch, progress: {
        "loss": (g_weight * weight).sum() + (g_bias * bias).sum()})  # its gradient: g_weight, g_bias, no other
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    outputs, lr = trainer.train_step(0)
    assert lr == pytest.approx(0.3 * 64 / 256)  # optim.lr * batch / 256, no warmup
    assert float(outputs["grad_norm"]) == pytest.approx(5.0, rel=1e-6)
    scale = 1 / 5 if clip else 1.0  # SGD's first step: the momentum buffer is the gradient itself
    torch.testing.assert_close(weight.detach(), w0 - 0.075 * scale * g_weight)
    torch.testing.assert_close(bias.detach(), b0 - 0.075 * scale * g_bias)


def test_save_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_atomic({"step": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="missing keys"):
        load_checkpoint(foreign)


def tiny_config(tmp_path, *overrides, method_args=("method_args.proj_hidden_dim=16", "method_args.proj_dim=8")):
    base = ["data.name=digits", "data.size=16", "backbone.width=4", *method_args, "train.batch_size=64",
            "train.progress=false", "train.knn_every=0", "eval.plots=false", "eval.save_embeddings=false",
            f"train.out_dir={tmp_path / 'run'}"]
    return load_config(None, base + list(overrides))


def test_a_real_divergence_stops_with_the_step_method_and_hint_and_keeps_the_last_good_checkpoint(tmp_path):
    # A huge learning rate (no warmup) makes the weights overflow within a few SGD steps: the losses refuse
    # the NaN embeddings, and the engine turns that into a divergence error, not a usage error.
    cfg = tiny_config(tmp_path, "optim.lr=1e8", "optim.warmup_epochs=0", "train.checkpoint_every=2",
                      "train.precision=32-true")
    with pytest.raises(NonFiniteLossError, match=r"^simclr: .*NaN.* at step (\d+)[ ;].*last good checkpoint.*"
                                                 r"optim\.lr \(now 100000000\.0\)") as info:
        pretrain(cfg)
    assert not isinstance(info.value, ValueError)
    failed_at = int(str(info.value).split(" at step ")[1].split()[0].rstrip(";"))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert 0 < state["step"] <= failed_at
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_the_cli_reports_a_divergence_in_one_line_with_its_own_exit_status(tmp_path):
    cmd = [sys.executable, "-m", "selfsup", "pretrain", "data.name=digits", "data.size=16", "backbone.width=4",
           "method_args.proj_hidden_dim=16", "train.batch_size=64", "train.progress=false", "train.knn_every=0",
           "optim.lr=1e8", "optim.warmup_epochs=0", f"train.out_dir={tmp_path / 'run'}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("selfsup: training diverged: simclr: ")


def test_batch_larger_than_the_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="fewer than train.batch_size=4096"):
        pretrain(tiny_config(tmp_path, "train.batch_size=4096"))


def test_missing_data_root_names_the_path(tmp_path):
    cfg = tiny_config(tmp_path, "data.name=fashion_mnist", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pretrain(cfg)


def _run(out_dir, *args, **popen):
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out_dir), *args], env=env, **popen)


@pytest.mark.parametrize("settings", [
    ["method=moco", "method_args.queue_size=100", "method_args.proj_hidden_dim=32", "method_args.proj_dim=16"],
    ["method=dino", "method_args.out_dim=64", "method_args.hidden_dim=32", "method_args.bottleneck_dim=16",
     "method_args.warmup_teacher_temp_epochs=2", "method_args.teacher_temp=0.07", "augment.n_local=2",
     "augment.local.size=8", "optim.name=adamw", "optim.lr=0.001", "optim.weight_decay_end=0.4"],
], ids=["moco", "dino"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, settings, kill_after_checkpoint):
    """SIGKILL a run right after a mid-epoch checkpoint; resuming must end bit-identical to an uninterrupted run:
    weights, queue / teacher / centre, optimiser state, and the logged history."""
    settings = ["train.epochs=2", "train.checkpoint_every=5", "train.log_every=7", *settings]
    reference = _run(tmp_path / "reference", *settings)
    victim = _run(tmp_path / "victim", *settings)
    ckpt = tmp_path / "victim" / "checkpoints" / "last.ckpt"
    kill_after_checkpoint(victim, ckpt)
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < 44  # 22 steps per epoch, 2 epochs: the resumed run crosses an epoch boundary
    assert _run(tmp_path / "victim", *settings, "--resume").wait(timeout=240) == 0
    assert reference.wait(timeout=240) == 0
    done = load_checkpoint(ckpt)
    expected = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    assert done["step"] == expected["step"] == 44
    for key, value in expected["model"].items():
        assert torch.equal(done["model"][key], value), key  # MoCo's queue and key encoder, DINO's teacher and centre
    for key, value in expected["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(torch.as_tensor(done["optimizer"]["state"][key][name]), torch.as_tensor(tensor))
    for series in ("loss", "knn", "lr"):  # loss means over windows that the kill cut in two
        assert done["history"][series] == expected["history"][series], series


_FAULTS_SCRIPT = """
import resource, sys
import torch
from selfsup.engine import tune_allocator
print(tune_allocator())
nbytes = 48 << 20  # above glibc's largest dynamic mmap threshold (32 MB)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.empty(nbytes, dtype=torch.uint8).fill_(1); del x
before = faults()
for _ in range(30):
    x = torch.empty(nbytes, dtype=torch.uint8).fill_(1); del x
print((faults() - before) / 30)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuned_allocator_stops_the_page_faults_of_a_reused_buffer(tmp_path):
    # A 48 MB buffer freed and allocated again: with glibc's defaults every allocation is a fresh
    # mmap, so filling it faults in all of its pages (~12,300 of 4 KiB); tuned, the memory is reused
    # (measured: one or two of the 30 refills still fault in the buffer once, the rest none).
    def run(env_value: str) -> tuple[str, float]:
        env = {**os.environ, "SELFSUP_MALLOC": env_value}
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0], float(out[1])

    tuned, tuned_faults = run("")
    default, default_faults = run("default")
    assert (tuned, default) == ("True", "False")
    import resource

    pages = (48 << 20) / resource.getpagesize()
    assert default_faults > 0.5 * pages
    assert tuned_faults < 0.15 * pages


def test_resume_with_more_epochs_continues_on_the_recomputed_schedule(tmp_path, capsys):
    pretrain(tiny_config(tmp_path, "train.epochs=1", "eval.linear=false", "eval.knn=false"))
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert first["step"] == first["run"]["max_steps"] == 22  # 1437 digits // 64
    capsys.readouterr()
    result = pretrain(tiny_config(tmp_path, "train.epochs=2", "eval.linear=false", "eval.knn=false"), resume=True)
    err = capsys.readouterr().err
    assert "resume changes train.epochs: 1.0 -> 2.0" in err and "44 steps instead of 22" in err
    done = load_checkpoint(result.checkpoint)
    assert done["step"] == 44 and done["config"]["train"]["epochs"] == 2.0
    # Steps after the resume follow the two-epoch warmup + cosine schedule (lr 0.3 * 64 / 256, warmup 22).
    resumed = [(step, lr) for step, lr in done["history"]["lr"] if step > 22]
    assert resumed and all(lr == pytest.approx(warmup_cosine(step - 1, 44, 22, 0.075)) for step, lr in resumed)
    assert done["history"]["lr"][: len(first["history"]["lr"])] == first["history"]["lr"]
    rows = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    steps = [int(row.split(",")[0]) for row in rows[1:]]
    assert steps == sorted(steps) and steps[-1] == 44 and len(steps) == len(set(steps))  # kept and appended


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0.1", "optim.lr: the checkpoint was trained with 0.3, this run asks for 0.1"),
    ("train.batch_size=32", "train.batch_size: the checkpoint was trained with 64"),
])
def test_resume_refuses_to_change_what_would_make_another_run(tmp_path, override, message):
    pretrain(tiny_config(tmp_path, "train.epochs=1", "eval.linear=false", "eval.knn=false"))
    with pytest.raises(ConfigError, match=message):
        pretrain(tiny_config(tmp_path, "train.epochs=1", override), resume=True)


def test_a_checkpoint_whose_settings_no_longer_read_is_named(tmp_path):
    """A checkpoint written by another selfsup (a key since removed) is refused naming the file, so that
    the error is not taken for a mistake on the command line."""
    from selfsup.engine.checkpoint import save_atomic

    cfg = tiny_config(tmp_path, "train.epochs=0.2", "eval.linear=false", "eval.knn=false")
    result = pretrain(cfg)
    saved = load_checkpoint(result.checkpoint)
    saved["config"]["train"]["retired_key"] = 1
    save_atomic({k: v for k, v in saved.items() if k != "integrity"}, result.checkpoint)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(result.checkpoint))}: .*train.retired_key"):
        pretrain(cfg, resume=True)


def test_resume_refuses_an_end_before_the_checkpoint(tmp_path):
    pretrain(tiny_config(tmp_path, "train.epochs=1", "eval.linear=false", "eval.knn=false"))
    with pytest.raises(ConfigError, match="ends at step 11, before the checkpoint's step 22"):
        pretrain(tiny_config(tmp_path, "train.epochs=0.5"), resume=True)


def test_fp16_gradient_scaler_state_is_saved_and_restored(tmp_path, monkeypatch):
    # Fabric runs fp16 only on GPUs; the scaler's bookkeeping is the same on the CPU, so put one in place.
    cfg = tiny_config(tmp_path, "train.epochs=1")
    trainer = Trainer(cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=1234.0)
    trainer.fabric.strategy.precision = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    state.save(trainer, 3)
    saved = load_checkpoint(trainer.ckpt_path)
    assert saved["precision"]["scale"] == 1234.0
    restored = Trainer(cfg)
    restored.fabric.strategy.precision = MixedPrecision("16-mixed", "cpu")
    state.restore(restored, saved)
    assert restored.fabric.strategy.precision.scaler.get_scale() == 1234.0 and restored.start_step == 3


def test_precision_auto_says_why():
    precision, reason = resolve_precision("auto", "cpu")
    # Native: the CPU has the instructions and oneDNN may use them (ONEDNN_MAX_CPU_ISA can forbid them).
    native = (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()) and \
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert precision == ("bf16-mixed" if native else "32-true")
    assert torch.backends.cpu.get_cpu_capability() in reason
    assert resolve_precision("bf16-mixed", "cpu") == ("bf16-mixed", "set by train.precision")


@pytest.mark.parametrize("gpu, capability, expected", [("Tesla T4", (7, 5), "16-mixed"), ("NVIDIA H200", (9, 0), "bf16-mixed")])
def test_precision_auto_on_a_gpu_takes_bf16_only_where_it_is_native(monkeypatch, gpu, capability, expected):
    """torch.cuda.is_bf16_supported() says yes on a T4 or V100 too (bf16 emulated, by default); "auto" must
    take fp16 with a gradient scaler there. The fake follows torch's rule: native bf16 from sm 8.0 on."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability >= (8, 0))
    precision, reason = resolve_precision("auto", "cuda")
    assert precision == expected and gpu in reason


def test_the_library_leaves_the_allocator_alone(tmp_path, capsys):
    pretrain(tiny_config(tmp_path, "train.epochs=1", "eval.linear=false"))
    assert allocator._tuned is False  # only the command line changes process-wide malloc settings
    err = capsys.readouterr().err
    assert "precision 32-true" in err or "precision bf16" in err


class GraphMethod(SimCLR):
    data_kind = "graph"


def test_method_and_data_of_different_kinds_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "graph_method", GraphMethod)
    with pytest.raises(ConfigError, match="method graph_method learns from graph, but data.name=digits gives images"):
        pretrain(tiny_config(tmp_path, "method=graph_method"))


@pytest.mark.parametrize("override, message", [
    ("augment.views=[{},{blur_p: 2.0}]", r"augment.views\[1\].blur_p: blur_p is a probability"),
    ("augment.recipe=none", r"augment: SimCLR expects 2 views per batch, got 1"),
    ("augment.views=[{},{size: 12}]", r"augment.views: the global views must share one size, got \[\(12, 12\), \(16, 16\)\]"),
    ("train.accelerator=tpu3", r"train: "),
    ("augment.n_local=3", r"augment.n_local: this augmentation has no local crops"),
    ("augment.recipe=simclr3", r"augment.recipe: unknown augmentation recipe 'simclr3'"),
    ("augment.view.size=4", r"augment: the backbone cannot take 4x4 views"),
    ("augment.view.scale=[0.2]", r"augment.view.scale: scale must be a \(min, max\) pair of numbers, got \[0.2\]"),
    ("augment.view.scale=everything", r"augment.view.scale: scale must be a \(min, max\) pair of numbers"),
    ("augment.view.size=[16,a]", r"augment.view.size: size must be an int or a \(height, width\) pair of ints"),
])
def test_augmentation_overrides_are_validated_like_any_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        pretrain(tiny_config(tmp_path, override))


def test_augmentation_overrides_reach_the_views(tmp_path):
    dino_args = ("method_args.out_dim=32", "method_args.hidden_dim=16", "method_args.bottleneck_dim=8")
    cfg = tiny_config(tmp_path, "method=dino", "augment.n_local=3", "augment.local.size=8",
                      "augment.view.jitter=[0.1,0.1,0.1,0.0]", "augment.views=[{},{solarize_p: 0.5}]",
                      method_args=dino_args)
    trainer = Trainer(cfg)
    aug = trainer.augment
    assert aug.n_local == 3 and aug.local.size == (8, 8)
    assert [v.jitter for v in aug.views] == [(0.1, 0.1, 0.1, 0.0)] * 2 and aug.views[1].solarize_p == 0.5
    assert [v.shape[-1] for v in trainer.make_batch(0, 0).views] == [16, 16, 8, 8, 8]


def test_yaml_can_ask_for_the_whole_image_and_non_square_views(tmp_path):
    # None in the YAML keeps the method's value, so "no random crop" is spelled scale: whole.
    off = ("flip_p: 0", "jitter_p: 0", "gray_p: 0", "blur_p: 0", "solarize_p: 0")
    cfg = tiny_config(tmp_path, "augment.view={scale: whole, size: [16, 12], " + ", ".join(off) + "}")
    trainer = Trainer(cfg)
    assert [(v.scale, v.size) for v in trainer.augment.views] == [(None, (16, 12))] * 2
    batch = trainer.make_batch(0, 0)
    assert [tuple(v.shape[-2:]) for v in batch.views] == [(16, 12)] * 2
    # Nothing random is left: both views are the same resize of the same images.
    torch.testing.assert_close(batch.views[0], batch.views[1], atol=0, rtol=0)


class FrozenByAfterBackward(SimCLR):
    """Zeroes every gradient in after_backward: if the engine calls it after backward and before
    the optimiser step, an SGD step without weight decay changes nothing."""

    def after_backward(self, progress):
        self.seen.append((progress.step, progress.max_steps, progress.steps_per_epoch))
        for p in self.parameters():
            if p.grad is not None:
                p.grad.zero_()


def test_after_backward_runs_between_backward_and_the_step_with_the_right_progress(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "frozen", FrozenByAfterBackward)
    cfg = tiny_config(tmp_path, "method=frozen", "optim.weight_decay=0", "train.epochs=0.2", "eval.linear=false",
                      "eval.knn=false")
    trainer = Trainer(cfg)
    trainer.method.seen = []
    before = {k: v.clone() for k, v in trainer.method.state_dict().items() if k.endswith("weight")}
    trainer.fit()
    after = trainer.method.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert trainer.method.seen == [(step, 5, 22) for step in range(5)]  # 0.2 of 22 steps per epoch, rounded up


def test_resume_on_another_precision_is_refused(tmp_path):
    pretrain(tiny_config(tmp_path, "train.epochs=1", "eval.linear=false", "eval.knn=false"))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    state["run"]["precision"] = "16-mixed"
    save_atomic(state, tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="trained with precision '16-mixed', this run resolves to"):
        pretrain(tiny_config(tmp_path, "train.epochs=2"), resume=True)


def test_the_knn_monitor_queries_held_out_training_images_not_the_test_split(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "train.knn_val_fraction=0.1", "train.knn_train_samples=500"))
    bank, queries = monitor.monitor_split(trainer)
    labels = trainer.train_set.labels.numpy()
    # A stratified 10% of the 1437 training digits: round(0.1 * 1437) = 144, each class in proportion.
    assert len(queries) == 144 and len(set(queries.tolist())) == 144
    expected = np.bincount(labels) * 144 / len(labels)
    assert np.all(np.abs(np.bincount(labels[queries.numpy()], minlength=10) - expected) < 1)
    assert len(bank) == 500 and not set(bank.tolist()) & set(queries.tolist())
    bank_again, queries_again = monitor.monitor_split(trainer)
    assert torch.equal(bank, bank_again) and torch.equal(queries, queries_again)  # seeded
    bank, queries = monitor.monitor_split(Trainer(tiny_config(tmp_path, "train.knn_val_fraction=0")))
    assert queries is None and len(bank) == 1437  # monitors on the test split, as before


def test_fused_views_make_the_engines_batches_and_are_refused_without_a_gpu(tmp_path, monkeypatch, capfd):
    # train.fused_views: on a CPU the run is refused, naming the key (the C kernel already fuses RGB
    # views there). In Triton's interpreter (as on a GPU) the engine's batches are an eager run's.
    with pytest.raises(ConfigError, match="train.fused_views: needs a CUDA GPU"):
        Trainer(tiny_config(tmp_path, "train.fused_views=true"))
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    eager = Trainer(tiny_config(tmp_path, "train.batch_size=4"))
    fused = Trainer(tiny_config(tmp_path, "train.batch_size=4", "train.fused_views=true"))
    assert fused.augment.fused and not eager.augment.fused
    assert "exceed the kernel" not in capfd.readouterr().err
    Trainer(tiny_config(tmp_path, "data.size=72", "train.fused_views=true"))  # larger than a program holds: said
    assert "views of 72x72 exceed the kernel's 64 pixels a side; those views take the unfused path" in capfd.readouterr().err
    torch.manual_seed(5)
    batch = fused.make_batch(0, 0)
    torch.manual_seed(5)
    for got, want in zip(batch.views, eager.make_batch(0, 0).views, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # train.fused_draws: the kernel draws too, seeded from the run's RNG, so the same RNG state gives the
    # same batch (what an exact resume needs); it is refused without the fused views.
    with pytest.raises(ConfigError, match="train.fused_draws: .* needs train.fused_views=true"):
        Trainer(tiny_config(tmp_path, "train.fused_draws=true"))
    drawing = Trainer(tiny_config(tmp_path, "train.batch_size=4", "train.fused_views=true", "train.fused_draws=true"))
    assert drawing.augment.fused_draws
    torch.manual_seed(5)
    first = drawing.make_batch(0, 0).views
    torch.manual_seed(5)
    again = drawing.make_batch(0, 0).views
    assert [v.shape for v in first] == [v.shape for v in batch.views] and all(0 <= v.min() and v.max() <= 1 for v in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)) and not torch.equal(first[0], first[1])


@pytest.mark.slow  # compiles one view graph (5-15 s on a CPU)
def test_train_compile_compiles_the_views_too(tmp_path):
    # train.compile: the backbone's network and the augmentation's arithmetic. The training batches of a
    # compiled run are those of an eager one (same seed) to float rounding, and come from a compiled graph.
    from selfsup.augment import runner

    eager = Trainer(tiny_config(tmp_path))
    assert not eager.augment.compiled
    trainer = Trainer(tiny_config(tmp_path, "train.compile=true"))
    assert trainer.augment.compiled and trainer.method.backbone.net._compiled_call_impl is not None
    before = runner._compiled_view.cache_info().currsize
    torch.manual_seed(5)
    batch = trainer.make_batch(0, 0)
    assert runner._compiled_view.cache_info().currsize == before + 1  # digits: one channel, one graph
    torch.manual_seed(5)
    reference = eager.make_batch(0, 0)
    for got, want in zip(batch.views, reference.views, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_engine_stays_in_rooms_a_reader_can_find():
    """DESIGN.md: set-up (data, method, optimiser), the step, state and checkpoints, finish and evaluation,
    each under ~300 lines."""
    from pathlib import Path

    import selfsup.engine

    folder = Path(selfsup.engine.__file__).parent
    sizes = {path.name: len(path.read_text().splitlines()) for path in folder.glob("*.py")}
    assert {"setup.py", "sources.py", "optim.py", "trainer.py", "grad_cache.py", "state.py", "checkpoint.py",
            "finish.py", "floor.py", "run.py"} <= set(sizes)
    assert max(sizes.values()) <= 310, sizes


def test_launch_rank_without_torchruns_rank_reads_fabrics_local_and_node_rank(monkeypatch):
    from selfsup import distributed

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "NUM_NODES", "SLURM_NNODES"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launch_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # Fabric's own launcher: no RANK (a review saw both print as rank 0)
    assert distributed.launch_rank() == 1
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("NUM_NODES", "2")
    assert distributed.launch_rank() == 3  # node 1 of 2 nodes x 2 processes, local 1
    monkeypatch.setenv("RANK", "2")
    assert distributed.launch_rank() == 2  # torchrun's word wins


def test_unsupported_strategies_accelerators_and_a_knn_best_without_labels_are_one_line(tmp_path):
    base = ["data.name=digits", "data.size=16", "backbone.width=4", "train.progress=false", "eval.plots=false",
            f"train.out_dir={tmp_path / 'run'}"]
    for extra, words in ((["train.strategy=ddp_spawn", "train.devices=2"], "train.strategy: 'ddp_spawn' is not supported"),
                         (["train.strategy=fsdp"], "train.strategy: 'fsdp' is not supported")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            Trainer(load_config(None, [*base, *extra]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.accelerator=gpu"):
            Trainer(load_config(None, [*base, "train.accelerator=gpu"]))
    flat = tmp_path / "flat"  # images without class folders: no labels
    flat.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image
    for k in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(flat / f"{k}.png")
    with pytest.raises(ConfigError, match="no labels"):
        Trainer(load_config(None, ["data.name=folder", f"data.root={flat}", "data.size=16", "backbone.width=4",
                                   "train.progress=false", "eval.plots=false", "train.batch_size=4",
                                   "train.save_best=knn", "train.knn_every=1", f"train.out_dir={tmp_path / 'flat_run'}"]))


def test_resuming_a_checkpoint_another_build_wrote_is_one_line(tmp_path, monkeypatch):
    """The same config, a method that now has a parameter the checkpoint lacks (as after an upgrade that
    changed a head): one line naming the missing weights, not load_state_dict's traceback."""
    from selfsup.errors import DataError

    pretrain(tiny_config(tmp_path, "train.epochs=1", "eval.linear=false", "eval.knn=false"))
    build = SimCLR.__init__

    def with_a_new_layer(self, *args, **kwargs):
        build(self, *args, **kwargs)
        self.added = nn.Linear(2, 2)
    with_a_new_layer.__signature__ = inspect.signature(build)  # the same arguments, checked as before
    monkeypatch.setattr(SimCLR, "__init__", with_a_new_layer)
    with pytest.raises(DataError, match=r"--resume: the checkpoint does not fit simclr .*added\.weight.*another version"):
        pretrain(tiny_config(tmp_path, "train.epochs=2", "eval.linear=false", "eval.knn=false"), resume=True)
