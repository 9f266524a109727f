"""The training engine under real DDP: 2 gloo CPU processes started by torchrun and by Fabric itself."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfsup.engine import load_checkpoint

SCRIPT = Path(__file__).parent / "scripts" / "pretrain_digits.py"
pytestmark = pytest.mark.distributed


def _check_two_rank_run(out_dir: Path) -> None:
    state = load_checkpoint(out_dir / "checkpoints" / "last.ckpt")
    # digits: 1437 training images, global batch 64 split 32 + 32 -> 22 steps per epoch
    assert state["step"] == 22
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0], state["rng"][1])
    assert len(state["history"]["knn"]) == 1 and 0.1 < state["history"]["knn"][0][1] <= 1.0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_pretrain_under_torchrun(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
           str(tmp_path / "run"), "train.epochs=1", "train.accelerator=cpu", "train.devices=2", "method=moco",
           "method_args.queue_size=96"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_two_rank_run(tmp_path / "run")


def test_pretrain_self_launched_by_fabric(tmp_path):
    cmd = [sys.executable, str(SCRIPT), str(tmp_path / "run"), "train.epochs=1", "train.accelerator=cpu",
           "train.devices=2", "train.strategy=ddp"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_two_rank_run(tmp_path / "run")
