"""How much of a pretext task can a random backbone already solve? Train only the method's head.

A pretext task teaches features only as far as solving it needs them. This script trains a recipe with
its backbone frozen at the run's seeded random initialisation (the same weights the floor evaluates),
only the method's own head learning, and prints the task's accuracy per epoch (the mean of the logged
training batches), beside a normal run of the same recipe and settings when its folder is given. A task
a random backbone nearly solves leaves the backbone little to learn.

    .venv/bin/python benchmarks/frozen_pretext.py recipes/jigsaw_fashion_mnist.yaml data.max_samples=8192 \\
        train.epochs=8 train.precision=32-true --against /tmp/jigbar

BatchNorm's running statistics still follow the batches (as a frozen backbone's do in train mode); its
weights and every convolution stay at their initial values (checked before training).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def accuracy_by_epoch(folder: Path, key: str = "task_accuracy") -> dict[int, float]:
    """The mean of ``key`` over the logged steps of each epoch of the run in ``folder``."""
    by: dict[int, list[float]] = {}
    with open(folder / "logs" / "metrics.csv", newline="") as file:
        for row in csv.DictReader(file):
            if row.get(key):
                epoch = max(0, int(float(row["epoch"]) - 1e-9))  # a step logged at epoch 1.0 ends the first
                by.setdefault(epoch, []).append(float(row[key]))
    return {epoch: sum(values) / len(values) for epoch, values in sorted(by.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", default="/tmp/frozen_pretext", help="the frozen run's folder (replaced)")
    parser.add_argument("--against", help="a normal run's folder of the same recipe and settings, printed beside")
    args = parser.parse_args()

    from selfsup.config import load_config
    from selfsup.engine import trainer as trainer_module
    from selfsup.engine.setup import build_method

    def frozen_build(*a, **k):
        method = build_method(*a, **k)
        method.backbone.requires_grad_(False)
        return method

    trainer_module.build_method = frozen_build  # what the Trainer builds its method with
    cfg = load_config(args.recipe, [*args.overrides, "train.progress=false", "train.knn_every=0", "eval.plots=false",
                                    "eval.floor=false", "eval.linear=false", "eval.knn=false",
                                    "eval.save_embeddings=false", f"train.out_dir={args.out}", "name=frozen_pretext"])
    import shutil

    shutil.rmtree(args.out, ignore_errors=True)
    trainer = trainer_module.Trainer(cfg)
    backbone = trainer.method.backbone
    if any(p.requires_grad for p in backbone.parameters()):
        raise SystemExit("the backbone did not freeze")
    before = [p.detach().clone() for p in backbone.parameters()]
    trainer.fit()
    if any(not a.equal(b.detach().cpu()) for a, b in zip(before, backbone.parameters())):
        raise SystemExit("the frozen backbone's weights moved")
    frozen = accuracy_by_epoch(Path(args.out))
    normal = accuracy_by_epoch(Path(args.against)) if args.against else {}
    print(f"{cfg.method}: task accuracy per epoch (mean of the logged training batches)")
    print("epoch | backbone frozen at random init" + (" | trained (normal run)" if normal else ""))
    for epoch, value in frozen.items():
        print(f"{epoch + 1:5d} | {100 * value:30.1f}%" + (f" | {100 * normal[epoch]:20.1f}%" if epoch in normal else ""))


if __name__ == "__main__":
    main()
