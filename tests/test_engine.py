"""selfsup.engine: schedule, LARS, atomic checkpoints, NaN guard, exact resume after a kill."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from selfsup.config import OptimConfig, Optimizer, load_config
from selfsup.engine import LARS, NonFiniteLossError, build_optimizer, learning_rate, load_checkpoint, pretrain, save_atomic
from selfsup.methods import METHODS, SimCLR

SCRIPT = Path(__file__).parent / "scripts" / "pretrain_digits.py"


def test_learning_rate_warmup_then_cosine():
    base, warmup, total = 0.4, 10, 110
    assert learning_rate(0, total, warmup, base) == pytest.approx(0.04)
    assert learning_rate(9, total, warmup, base) == pytest.approx(0.4)
    assert learning_rate(10, total, warmup, base) == pytest.approx(0.4)
    assert learning_rate(60, total, warmup, base) == pytest.approx(0.2)  # half way through the cosine
    assert learning_rate(110, total, warmup, base, min_lr=0.01) == pytest.approx(0.01)
    assert learning_rate(35, total, warmup, base) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_lars_step_matches_the_formula():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3))
    b = nn.Parameter(torch.randn(4))
    w.grad, b.grad = torch.randn(4, 3), torch.randn(4)
    w0, g, b0, gb = w.detach().clone(), w.grad.clone(), b.detach().clone(), b.grad.clone()
    opt = LARS([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars_adapt": False}],
               lr=0.1, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001)
    opt.step()
    update = g + 0.01 * w0
    update = update * 0.001 * w0.norm() / update.norm()
    assert torch.allclose(w.detach(), w0 - 0.1 * update, atol=1e-7)
    assert torch.allclose(b.detach(), b0 - 0.1 * gb, atol=1e-7)  # no adaptation, no decay
    w.grad = g.clone()
    opt.step()  # second step: the momentum buffer is 0.9 * previous + new
    update2 = g + 0.01 * (w0 - 0.1 * update)
    update2 = update2 * 0.001 * (w0 - 0.1 * update).norm() / update2.norm()
    assert torch.allclose(w.detach(), w0 - 0.1 * update - 0.1 * (0.9 * update + update2), atol=1e-6)


@pytest.mark.parametrize("name,cls", [(Optimizer.sgd, torch.optim.SGD), (Optimizer.adamw, torch.optim.AdamW),
                                      (Optimizer.lars, LARS)])
def test_optimizer_excludes_biases_and_norms_from_weight_decay(name, cls):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    opt = build_optimizer(model, OptimConfig(name=name, weight_decay=0.1), lr=0.1)
    assert isinstance(opt, cls)
    decayed, plain = opt.param_groups
    assert {p.shape for p in decayed["params"]} == {torch.Size([4, 3]), torch.Size([2, 4])}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert len(plain["params"]) == 3  # first bias, BN weight and BN bias


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


class NaNAfter(SimCLR):
    """SimCLR whose loss turns NaN at a given step, to exercise the guard."""

    def __init__(self, backbone, *, proj_hidden_dim: int = 16, proj_dim: int = 8, bad_step: int = 3) -> None:
        super().__init__(backbone, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim)
        self.calls = 0
        self.bad_step = bad_step

    def training_step(self, batch):
        out = super().training_step(batch)
        self.calls += 1
        if self.calls > self.bad_step:
            out["loss"] = out["loss"] * float("nan")
        return out

    forward = training_step


def tiny_config(tmp_path, *overrides):
    base = ["data.name=digits", "data.size=16", "backbone.width=4", "method_args.proj_hidden_dim=16",
            "method_args.proj_dim=8", "train.batch_size=64", "train.progress=false", "train.knn_every=0",
            "eval.plots=false", "eval.save_embeddings=false", f"train.out_dir={tmp_path / 'run'}"]
    return load_config(None, base + list(overrides))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "nan_after", NaNAfter)
    cfg = tiny_config(tmp_path, "method=nan_after", "method_args.bad_step=5", "train.checkpoint_every=2",
                      "train.precision=32-true")
    with pytest.raises(NonFiniteLossError, match=r"nan_after: loss is nan at step 5 .*last good checkpoint"):
        pretrain(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_batch_larger_than_the_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than train.batch_size=4096"):
        pretrain(tiny_config(tmp_path, "train.batch_size=4096"))


def test_missing_data_root_names_the_path(tmp_path):
    cfg = tiny_config(tmp_path, "data.name=fashion_mnist", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pretrain(cfg)


def _run(out_dir, *args, **popen):
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out_dir), *args], env=env, **popen)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a run right after a mid-epoch checkpoint; resuming must end bit-identical to an uninterrupted run."""
    settings = ["train.epochs=3", "train.checkpoint_every=5", "method=moco", "method_args.queue_size=100",
                "method_args.proj_hidden_dim=32"]
    reference = _run(tmp_path / "reference", *settings)
    victim = _run(tmp_path / "victim", *settings)
    ckpt = tmp_path / "victim" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < 66  # 22 steps per epoch, 3 epochs
    assert _run(tmp_path / "victim", "--resume").wait(timeout=240) == 0
    assert reference.wait(timeout=240) == 0
    done = load_checkpoint(ckpt)
    expected = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    assert done["step"] == expected["step"] == 66
    for key, value in expected["model"].items():
        assert torch.equal(done["model"][key], value), key  # includes MoCo's queue and key encoder
    assert done["history"]["knn"] == expected["history"]["knn"]


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
for _ in range(10):
    x = torch.empty(nbytes, dtype=torch.uint8).fill_(1); del x
print((faults() - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuned_allocator_stops_the_page_faults_of_a_reused_buffer(tmp_path):
    # A 48 MB buffer freed and allocated again: with glibc's defaults every allocation is a fresh
    # mmap, so filling it faults in all of its pages (~12,300 of 4 KiB); tuned, the memory is reused.
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
    assert tuned_faults < 0.2 * pages
