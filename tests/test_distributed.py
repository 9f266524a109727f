"""Gathered losses under 2 real gloo processes equal the single-process loss on the concatenated batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfsup import distributed

sys.path.insert(0, str(Path(__file__).parent / "dist"))
import check_losses  # noqa: E402

WORLD = 2


def test_single_process_helpers_are_identities():
    z = torch.randn(3, 4, requires_grad=True)
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.gather(z) is z


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_gathered_losses_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(Path(__file__).parent / "dist" / "check_losses.py"), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    a, b, labels = check_losses.global_batch(WORLD)
    n = check_losses.N_PER_RANK
    for name, loss_fn in check_losses.CASES.items():
        ga, gb = a.clone().requires_grad_(), b.clone().requires_grad_()
        single = loss_fn(ga, gb, labels)
        single.backward()
        mean_loss = sum(res[name][0] for res in ranks) / WORLD
        assert mean_loss.item() == pytest.approx(single.item(), abs=1e-5), name
        for r, res in enumerate(ranks):
            rows = slice(r * n, (r + 1) * n)
            # all_gather's backward sums every rank's gradient: W times the single-process one,
            # which DDP's mean over ranks divides back out.
            torch.testing.assert_close(res[name][1] / WORLD, ga.grad[rows], atol=1e-5, rtol=0, msg=name)
            torch.testing.assert_close(res[name][2] / WORLD, gb.grad[rows], atol=1e-5, rtol=0, msg=name)
