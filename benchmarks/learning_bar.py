"""Does every image recipe clearly learn at a short budget? Each recipe against its own floor.

The bar (issue "Fidelity"): 8 epochs on a seeded 8,192-image subset of Fashion-MNIST, float32,
then the run's own linear probe and kNN (k = 200) on the full test set must beat the same
evaluation of the same encoder at its random initialisation (``random_init`` in results.json,
see selfsup.engine.floor) by at least 1.5 points linear and 2 points kNN.

    .venv/bin/python benchmarks/learning_bar.py                      # every *_fashion_mnist recipe but the ViT
    .venv/bin/python benchmarks/learning_bar.py simclr byol key=value   # some recipes, with overrides
    .venv/bin/python benchmarks/learning_bar.py --out docs/runs/bar --verdicts docs/results/bar_verdicts.md

Runs go to runs/bar/<recipe> (a finished run is kept and read again; delete it to rerun), and the
script prints ``selfsup report --table`` of them and one verdict line per recipe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAR = ["data.max_samples=8192", "train.epochs=8", "train.precision=32-true", "train.progress=false",
       "train.knn_every=0", "eval.plots=false"]
LINEAR_GAIN, KNN_GAIN = 0.015, 0.02
GPU_ONLY = ("mocov3_vit",)  # 18 images/s on a 2-core CPU: an hour for this budget; the bar runs it on a GPU


def recipes(names: list[str]) -> list[str]:
    every = sorted(p.name.removesuffix("_fashion_mnist.yaml") for p in (ROOT / "recipes").glob("*_fashion_mnist.yaml"))
    every = [name for name in every if name not in ("clip", "lit")]  # zero-shot recipes: captions, not this bar
    chosen = names or [name for name in every if name not in GPU_ONLY]
    unknown = sorted(set(chosen) - set(every))
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; choose among {every}")
    return chosen


def verdict(results: dict) -> tuple[str, str]:
    evaluations = results["evaluations"]
    gains = []
    for key, need in (("linear", LINEAR_GAIN), ("knn", KNN_GAIN)):
        score, floor = evaluations[key]["accuracy"], evaluations[key].get("random_init", {}).get("accuracy")
        if floor is None:
            return "no floor recorded", ""
        gains.append((key, 100 * (score - floor), 100 * need, score, floor))
    text = ", ".join(f"{key} {100 * score:.2f}% ({gain:+.2f} over {100 * floor:.2f}%)"
                     for key, gain, _, score, floor in gains)
    return ("pass" if all(gain >= need for _, gain, need, _, _ in gains) else "FAIL"), text


def verdict_table(runs: list[Path]) -> str:
    """The verdict of every run as a markdown table (docs/results/bar_verdicts.md), from its results.json."""
    rows = ["| recipe | verdict | linear over its floor | kNN over its floor |", "| --- | --- | ---: | ---: |"]
    passed = 0
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        status, _ = verdict(results)
        passed += status == "pass"
        gains = [100 * (results["evaluations"][k]["accuracy"] - results["evaluations"][k]["random_init"]["accuracy"])
                 for k in ("linear", "knn")]
        rows.append(f"| {run.name} | {'clears the bar' if status == 'pass' else '**does not clear it**'} | "
                    f"{gains[0]:+.2f} | {gains[1]:+.2f} |")
    head = (f"{passed} of {len(runs)} recipes clear the bar (at least +{100 * LINEAR_GAIN:g} points linear and "
            f"+{100 * KNN_GAIN:g} kNN over the floor).")
    return "\n".join([head, "", *rows]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="*", help="recipe names (simclr, byol, ...) and key=value overrides")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bar"))
    parser.add_argument("--verdicts", help="also write the verdict table (markdown) of the finished runs here")
    args = parser.parse_args()
    names = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    selfsup = str(Path(sys.executable).parent / "selfsup")
    runs = []
    for name in recipes(names):
        out = Path(args.out) / name
        runs.append(out)
        if (out / "results.json").is_file():
            continue
        started = time.perf_counter()
        command = [selfsup, "pretrain", f"recipes/{name}_fashion_mnist.yaml", *BAR,
                   f"name=bar_{name}", f"train.out_dir={out}", *overrides]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})",
                  flush=True)
            continue
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    finished = [run for run in runs if (run / "results.json").is_file()]
    if finished:
        subprocess.run([selfsup, "report", "--table", *map(str, finished)], cwd=ROOT, check=False)
    for run in finished:
        status, text = verdict(json.loads((run / "results.json").read_text()))
        print(f"{status:4}  {run.name:20} {text}")
    if args.verdicts and finished:
        Path(args.verdicts).write_text(verdict_table(finished))


if __name__ == "__main__":
    main()
