"""What the baseline scripts share: the recipe from the command line, the probe, the printed line."""

from __future__ import annotations

import argparse
import json

from torch import Tensor

from selfsup import evaluate
from selfsup.config import Config, load_config


def recipe_from_command_line(doc: str) -> Config:
    """``RECIPE [key=value ...]`` as a config."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    return load_config(args.recipe, args.overrides)


def probe_all(cfg: Config, features: dict[str, tuple[Tensor, Tensor]], train_y: Tensor, test_y: Tensor) -> dict:
    """``<name>_linear`` and ``<name>_knn`` accuracies of every (train, test) feature pair, as a run reports them."""
    results = {}
    for name, (train_x, test_x) in features.items():
        results[f"{name}_linear"] = evaluate.linear_probe(train_x, train_y, test_x, test_y).accuracy
        results[f"{name}_knn"] = evaluate.knn_accuracy(train_x, train_y, test_x, test_y, k=cfg.eval.knn_k,
                                                       temperature=cfg.eval.knn_temperature)
    return {key: round(value, 4) for key, value in results.items()}


def report(**fields) -> None:
    print(json.dumps(fields))
