"""Reference accuracies on a dataset's test set that a pretrained encoder must beat.

* raw pixels: the same linear probe (multinomial logistic regression, L2 chosen on a held-out split)
  on the flattened pixels;
* random weights: the linear probe and weighted kNN on the features of the recipe's evaluation
  encoder with its random initialisation (same seed as a run of the recipe, so the same starting
  network; for colorization that is the backbone reading the lightness, as its run is evaluated).

    .venv/bin/python benchmarks/baselines.py recipes/simclr_fashion_mnist.yaml
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from selfsup import evaluate
from selfsup.config import load_config
from selfsup.engine import build_method
from selfsup.engine.sources import load_datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.recipe, args.overrides)
    train, test = load_datasets(cfg, progress=False)
    if test is None:
        raise SystemExit(f"{cfg.data.name} has no labelled test split")
    results = {}
    start = time.perf_counter()
    pixels = lambda ds: ds.images.flatten(1).float() / 255  # noqa: E731
    results["raw_pixels_linear"] = evaluate.linear_probe(pixels(train), train.labels, pixels(test), test.labels).accuracy
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg, in_channels=train.channels, image_size=train.size,
                          mean=train.mean().tolist(), std=train.std().tolist(), num_samples=len(train))
    encoder = method.eval_encoder()
    train_x = evaluate.extract_features(encoder, train.images)
    test_x = evaluate.extract_features(encoder, test.images)
    results["random_weights_linear"] = evaluate.linear_probe(train_x, train.labels, test_x, test.labels).accuracy
    results["random_weights_knn"] = evaluate.knn_accuracy(train_x, train.labels, test_x, test.labels,
                                                          k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)
    print(json.dumps({"data": cfg.data.name, "backbone": cfg.backbone.name, "width": cfg.backbone.width,
                      **{k: round(v, 4) for k, v in results.items()},
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
