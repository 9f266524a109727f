"""Train a tiny run on digits and save what each rank holds; used by the DDP engine tests.

usage: train_ranks.py OUT_DIR [--finish] [key=value ...]

Writes OUT_DIR/rank<r>.pt with every floating buffer of the method (BatchNorm statistics,
queues, centres) and the class name of each normalisation layer, or OUT_DIR/rank<r>.diverged
with the error message (exit status 3) when training diverges. --finish also runs the final
evaluation (results.json). method=moco_nan_on_rank1 is MoCo
whose queries turn NaN on rank 1 only, from step 2 on.
"""

import sys
from pathlib import Path

import torch
from torch import nn

from selfsup import distributed
from selfsup.config import load_config
from selfsup.engine import NonFiniteLossError, Trainer
from selfsup.engine.loop import finish
from selfsup.methods import METHODS, MoCo


class MoCoNaNOnRank1(MoCo):
    def training_step(self, batch, progress):
        if distributed.rank() == 1 and progress.step >= 2:
            batch.views[0] = batch.views[0] * float("nan")
        return super().training_step(batch, progress)


METHODS["moco_nan_on_rank1"] = MoCoNaNOnRank1

out_dir, *overrides = sys.argv[1:]
run_finish = "--finish" in overrides
overrides = [o for o in overrides if o != "--finish"]
base = ["name=digits_ranks", "data.name=digits", "data.size=16", "backbone.width=8", "train.batch_size=64",
        "train.epochs=1", "train.progress=false", "train.knn_every=0", "train.accelerator=cpu", "train.devices=2",
        "train.out_dir=" + str(Path(out_dir) / "run")]
trainer = Trainer(load_config(None, base + overrides))
rank = trainer.fabric.global_rank
try:
    trainer.fit()
    if run_finish:
        finish(trainer)
except NonFiniteLossError as error:
    (Path(out_dir) / f"rank{rank}.diverged").write_text(str(error))
    sys.exit(3)
norms = {name: type(module).__name__ for name, module in trainer.method.named_modules()
         if isinstance(module, nn.modules.batchnorm._NormBase)}
buffers = {name: value.clone() for name, value in trainer.method.named_buffers() if value.is_floating_point()}
torch.save({"norms": norms, "buffers": buffers}, Path(out_dir) / f"rank{rank}.pt")
