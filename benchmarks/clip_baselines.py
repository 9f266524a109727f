"""Reference numbers a CLIP run must beat: chance, and both towers at their random initialisation.

The recipe's method is built with the run's seed (so the same starting networks as a run of the
recipe: for ``text_tower=minilm`` the locked pretrained sentence encoder with a random projection
and a random image tower), then evaluated as a finished run is: zero-shot classification by the
prompt templates (all classes, and the held-out classes alone on their test images) and
image<->text recall@k on the test split's captions.

    .venv/bin/python benchmarks/clip_baselines.py recipes/clip_fashion_mnist.yaml
    .venv/bin/python benchmarks/clip_baselines.py recipes/lit_fashion_mnist.yaml
"""

from __future__ import annotations

import time

import torch
from _baseline import recipe_from_command_line, report

from selfsup.engine import build_method
from selfsup.engine.sources import load_image_text


def main() -> None:
    cfg = recipe_from_command_line(__doc__)
    start = time.perf_counter()
    train, test = load_image_text(cfg, progress=False)
    if test is None:
        raise SystemExit(f"{cfg.data.name} has no captioned test split")
    torch.manual_seed(cfg.train.seed)
    images = train.dataset
    method = build_method(cfg, in_channels=images.channels, image_size=images.size, mean=images.mean().tolist(),
                          std=images.std().tolist(), captions=train.captions)
    entries = method.extra_evaluations(test, data=cfg.data.name)
    zero_shot, retrieval = entries["zero_shot"], entries["text_retrieval"]
    report(**{
        "name": cfg.name, "data": cfg.data.name, "text_tower": cfg.method_args.get("text_tower", "transformer"),
        "chance": round(zero_shot["chance"], 4), "held_out_chance": round(zero_shot.get("held_out_chance", 0), 4),
        "random_towers_zero_shot": round(zero_shot["accuracy"], 4),
        "random_towers_held_out": round(zero_shot.get("held_out_accuracy", float("nan")), 4),
        "random_towers_seen": round(zero_shot.get("seen_accuracy", float("nan")), 4),
        **{f"random_towers_{k}": round(v, 4) for k, v in retrieval.items() if "recall@" in k},
        "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
