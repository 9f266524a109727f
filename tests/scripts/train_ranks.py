"""Train a tiny run on digits and save what each rank holds; used by the DDP engine tests.

usage: train_ranks.py OUT_DIR [--finish] [key=value ...]
       train_ranks.py OUT_DIR --jobs JOBS.json     {"name": ["--finish", "key=value", ...], ...}

The second form runs each job one after the other in the same processes (the imports and the
process group are most of a small job's time), job ``name`` in OUT_DIR/name; a job that diverges
writes its rank<r>.diverged and the next one starts (every rank stops at the same step, so the
ranks go on together).

Writes OUT_DIR/rank<r>.pt with every floating buffer of the method (BatchNorm statistics,
queues, centres) and the class name of each normalisation layer, or OUT_DIR/rank<r>.diverged
with the error message (exit status 3) when training diverges. --finish also runs the final
evaluation (results.json); --rank1-plans-late delays rank 1's ``train.time_limit`` plan by half a
second. method=moco_nan_on_rank1 is MoCo whose queries turn NaN on rank 1 only, from step 2 on.
"""

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from selfsup import distributed
from selfsup.config import load_config
from selfsup.engine import NonFiniteLossError, Trainer, monitor
from selfsup.engine.finish import finish
from selfsup.methods import METHODS, MoCo


class MoCoNaNOnRank1(MoCo):
    def training_step(self, batch, progress):
        if distributed.rank() == 1 and progress.step >= 2:
            batch.views[0] = batch.views[0] * float("nan")
        return super().training_step(batch, progress)


METHODS["moco_nan_on_rank1"] = MoCoNaNOnRank1


def job(out_dir: Path, overrides: list[str]) -> bool:
    """Run one job; False when it diverged."""
    run_finish = "--finish" in overrides
    late = "--rank1-plans-late" in overrides  # rank 1 starts its train.time_limit plan half a second after rank 0
    overrides = [o for o in overrides if o not in ("--finish", "--rank1-plans-late")]
    plan = monitor.plan_time_limit
    if late and distributed.launch_rank() == 1:
        monitor.plan_time_limit = lambda trainer, limit_s: (time.sleep(0.5), plan(trainer, limit_s))
    base = ["name=digits_ranks", "data.name=digits", "data.size=16", "backbone.width=8", "train.batch_size=64",
            "train.epochs=1", "train.progress=false", "train.knn_every=0", "train.accelerator=cpu", "train.devices=2",
            "train.out_dir=" + str(out_dir / "run")]
    trainer = Trainer(load_config(None, base + overrides))
    rank = trainer.fabric.global_rank
    try:
        trainer.fit()
        if run_finish:
            finish(trainer)
    except NonFiniteLossError as error:
        (out_dir / f"rank{rank}.diverged").write_text(str(error))
        return False
    finally:
        monitor.plan_time_limit = plan
    norms = {name: type(module).__name__ for name, module in trainer.method.named_modules()
             if isinstance(module, nn.modules.batchnorm._NormBase)}
    buffers = {name: value.clone() for name, value in trainer.method.named_buffers() if value.is_floating_point()}
    params = {name: value.detach().clone() for name, value in trainer.method.named_parameters()}
    saved = {"norms": norms, "buffers": buffers, "params": params}
    if hasattr(trainer.source, "close"):  # a streamed source: the sample ids of this rank's share of batch 0
        saved["first_batch"] = trainer.source.batch(0, 0, rank).index.cpu()
        trainer.source.close()
    torch.save(saved, out_dir / f"rank{rank}.pt")
    return True


out_dir, *args = sys.argv[1:]
if args[:1] == ["--jobs"]:
    for name, overrides in json.loads(Path(args[1]).read_text()).items():
        (Path(out_dir) / name).mkdir(parents=True, exist_ok=True)
        job(Path(out_dir) / name, overrides)
elif not job(Path(out_dir), args):
    sys.exit(3)
