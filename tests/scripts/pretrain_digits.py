"""Run a tiny pretraining on digits; used by tests that kill, resume or distribute a run.

usage: pretrain_digits.py OUT_DIR [--resume] [key=value ...]
"""

import sys

from selfsup.config import load_config
from selfsup.engine import pretrain

out_dir, *rest = sys.argv[1:]
resume = "--resume" in rest
overrides = [item for item in rest if item != "--resume"]
base = ["name=digits_test", "data.name=digits", "data.size=16", "backbone.width=8", "train.batch_size=64", "train.progress=false", "train.knn_every=1",
        "train.knn_train_samples=500", "eval.plots=false", "eval.save_embeddings=false", "eval.linear=false",
        f"train.out_dir={out_dir}"]
pretrain(load_config(None, base + overrides), resume=resume)
