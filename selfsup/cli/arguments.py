"""The command line's grammar: every command's arguments, and ``parse_args``."""

from __future__ import annotations

import argparse
import shlex

from selfsup.cli.commands import (cmd_embed, cmd_export, cmd_list, cmd_pack, cmd_plot, cmd_pretrain, cmd_report,
                                   cmd_sweep, cmd_verify)
from selfsup.cli.evaluate import cmd_evaluate


def _formats(text: str) -> list[str]:
    from selfsup.export import FORMATS

    formats = [f.strip() for f in text.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        raise argparse.ArgumentTypeError(f"expected formats among {', '.join(FORMATS)} separated by commas, "
                                         f"got {text!r}")
    return formats


def _integers(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 0,1,2; got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _way(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"an episode tells at least 2 classes apart, got {text!r}")
    return value


def _positive_integers(text: str) -> list[int]:
    values = _integers(text)
    if not all(value >= 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got {text!r}")
    return values


def _percents(text: str) -> list[float]:
    try:
        shares = [float(item.strip().rstrip("%")) / 100 for item in text.split(",")]
    except ValueError:
        shares = []
    if not shares or not all(0 < share <= 1 for share in shares):
        raise argparse.ArgumentTypeError(f"expected percentages in (0, 100] separated by commas, e.g. 1%,10%; "
                                         f"got {text!r}")
    return shares


def version_text() -> str:
    """``selfsup --version``: this package's version and the installed torch and torchvision (read from their
    metadata, so that asking does not import torch), what a bug report needs first."""
    from importlib.metadata import PackageNotFoundError, version

    import selfsup

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return (f"selfsup {selfsup.__version__}{_checkout(selfsup.__version__)} (torch {installed('torch')}, "
            f"torchvision {installed('torchvision')})")


class _Version(argparse.Action):
    """``--version``, worked out only when asked (it may run git): argparse's own action takes its text when
    the parser is built, which every command does."""

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        print(version_text(), file=sys.stdout)
        parser.exit()


def _checkout(installed_version: str) -> str:
    """Where selfsup runs from a git checkout (an editable install), the commit it runs: the version recorded at
    install time (``+g<commit>``) does not move when later commits are pulled. Empty for an installed wheel."""
    import subprocess

    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or not (root / "pyproject.toml").is_file():
        return ""
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=9", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    commit = done.stdout.strip()
    if done.returncode != 0 or not commit:
        return ""
    changed = " with uncommitted changes" if dirty.returncode == 0 and dirty.stdout.strip() else ""
    if f"+g{commit}" in installed_version and not changed:
        return ""
    return f", source at git {commit}{changed}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description="Self-supervised representation learning.")
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and the torch it runs on, and exit")
    sub = p.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="pretrain an encoder from a YAML recipe")
    pre.add_argument("recipe", nargs="?", help="YAML recipe (recipes/*.yaml), or a checkpoint with --resume")
    pre.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5 optim.lr=0.5")
    pre.add_argument("--resume", nargs="?", const="yes", choices=["yes", "auto"], metavar="auto",
                     help="continue <out_dir>/checkpoints/last.ckpt exactly where it stopped; overrides may "
                          "change train.epochs (the schedules are recomputed), logging/evaluation keys and train.out_dir "
                          "(a checkpoint from elsewhere continues in a folder of its own). "
                          "--resume auto: continue if there is a checkpoint, else start (what a requeued job runs)")
    pre.add_argument("--overwrite", action="store_true",
                     help="start over in a train.out_dir that holds another run (its files are replaced); "
                          "without it such a folder is refused")
    pre.set_defaults(func=cmd_pretrain)

    ve = sub.add_parser("verify", help="check a checkpoint (or an export folder) against the digests written with "
                                       "it, without building a model")
    ve.add_argument("path", help="a checkpoint file, or a folder written by selfsup export")
    ve.set_defaults(func=cmd_verify)

    sw = sub.add_parser("sweep", help="grids x seeds of ordinary runs, resumable; mean ± std, 95%% intervals, "
                                      "plots and the claim's verdict",
                        description="A study file (studies/*.yaml), or a recipe with key=a,b,c grid axes and "
                                    "key=value settings. Finished runs are skipped, killed ones resumed exactly.")
    sw.add_argument("study", help="a study YAML, or a recipe")
    sw.add_argument("overrides", nargs="*", help="with a recipe: key=a,b,c (a grid axis) or key=value (every run)")
    sw.add_argument("--seeds", type=int, default=3, help="with a recipe: seeds per grid point (a study says its own)")
    sw.add_argument("--jobs", type=_positive_int, default=1, help="runs at a time on this machine")
    sw.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                    help="local processes, or submitit jobs on SLURM (submitit-local: submitit without a cluster)")
    sw.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                    help="a submitit parameter, e.g. slurm_partition=gpu, timeout_min=60, gpus_per_node=1 "
                         "(with --executor slurm or submitit-local)")
    sw.add_argument("--out", help="folder of the sweeps (default runs/sweeps, or the study's out)")
    sw.add_argument("--page", help="where the study's page goes (default <out>/<name>/README.md)")
    sw.add_argument("--summary-only", action="store_true", help="summarise the runs there are; start none")
    sw.set_defaults(func=cmd_sweep)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint's encoder; writes <run>/evaluations/<key>.json",
                        description="linear / knn / fewshot / retrieval: frozen features; transfer: linear and kNN "
                                    "on another dataset; finetune: the whole encoder on 1% / 10% of the labels "
                                    "against the same network from scratch; zeroshot (image-text checkpoints): "
                                    "classification by prompts of the class names, and image<->text recall@k, on "
                                    "the test split or on --data (zero-shot transfer); correspondence: PCK@1/3/5 of "
                                    "per-pixel descriptors under known random warps, beside random weights and raw "
                                    "pixels, with <run>/correspondence.png; propagate: the first frame's instance "
                                    "masks carried through held-out videos by feature affinity, DAVIS J&F beside "
                                    "random weights, copying the first mask and raw Lab colours, with "
                                    "<run>/propagation.png; temporal: temporal-order tau and same-video retrieval "
                                    "of held-out videos' frames.")
    ev.add_argument("protocol", choices=["linear", "knn", "fewshot", "retrieval", "transfer", "finetune", "zeroshot",
                                         "correspondence", "propagate", "temporal"])
    ev.add_argument("--images", type=_positive_int, default=500, help="correspondence: test images (default 500)")
    ev.add_argument("--points", type=_positive_int, default=64, help="correspondence: pixels drawn per image, with replacement (default 64)")
    ev.add_argument("--topk", type=_positive_int, default=10, help="propagate: key pixels each pixel's labels come from")
    ev.add_argument("--radius", type=_positive_float, default=12, help="propagate: neighbourhood in grid cells (context frames)")
    ev.add_argument("--context", type=_positive_int, default=20, help="propagate: previous frames used as keys")
    ev.add_argument("--propagation-temperature", type=_positive_float, default=0.05, help="propagate: affinity temperature")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", help="dataset name or labelled folder (default: the one it was trained on)")
    ev.add_argument("--root", help="folder holding the dataset's files (alone, for a run on a named dataset: a "
                                   "labelled folder of images, its results named after the folder)")
    ev.add_argument("--k", type=_positive_int, help="kNN neighbours (default: the run's eval.knn_k, 200 unless "
                                                     "its recipe set another)")
    ev.add_argument("--temperature", type=_positive_float,
                    help="kNN vote temperature (default: the run's eval.knn_temperature, 0.1 unless set)")
    ev.add_argument("--no-floor", action="store_true",
                    help="leave out the floor (the same evaluation of the encoder at its random initialisation, "
                         "computed once and cached; on by default beside every frozen-feature result; finetune "
                         "and zeroshot have none)")
    ev.add_argument("--labels", type=_percents, default=[0.01, 0.1],
                    help="finetune: label shares, e.g. 1%%,10%% (of the run's training images: its data.max_samples "
                         "subset when it had one, else the whole split; see --whole-split)")
    ev.add_argument("--whole-split", action="store_true",
                    help="train the probe / fine-tuning on the whole training split, not the run's data.max_samples "
                         "subset that its own evaluations used (results named '..._whole_split')")
    ev.add_argument("--stage", type=int,
                    help="linear/knn/fewshot/retrieval/transfer: the backbone's stage N (0 the finest: the ConvNet's "
                         "four, a ResNet's stem and layer1-4) averaged over positions, instead of its output; the "
                         "layer-wise probe of Goyal et al. 2019, with its own floor (results named '..._stageN')")
    ev.add_argument("--seeds", type=_integers, default=[0, 1, 2], help="finetune: label-subset seeds, e.g. 0,1,2")
    ev.add_argument("--steps", type=_positive_int, default=200, help="finetune: optimiser steps of batch 256")
    ev.add_argument("--way", type=_way, default=5, help="fewshot: classes per episode")
    ev.add_argument("--shots", type=_positive_integers, default=[1, 5], help="fewshot: support images per class, e.g. 1,5")
    ev.add_argument("--query", type=_positive_int, default=15, help="fewshot: query images per class")
    ev.add_argument("--episodes", type=_positive_int, default=600, help="fewshot: episodes")
    ev.add_argument("--classes", type=_integers, help="fewshot: only these class indices, e.g. 5,6,7,8,9")
    ev.add_argument("--recall-k", type=_positive_int, nargs="+", default=[1, 5, 10], help="retrieval: cut-offs")
    ev.set_defaults(func=cmd_evaluate)

    em = sub.add_parser("embed", help="write backbone embeddings (.npy) and labels of a dataset")
    em.add_argument("checkpoint")
    em.add_argument("data", nargs="?", help="dataset name or a folder of images (default: the checkpoint's own "
                                            "data; a streamed folder or pack is read batch by batch)")
    em.add_argument("--split", choices=["train", "test"],
                    help="default: test, or train (the whole folder) for a folder without train/ and test/ folders")
    em.add_argument("--root", help="folder holding the dataset's files (with a dataset name, not a folder)")
    em.add_argument("--out", help="output folder (default: <run>/embeddings, or embeddings/ beside a checkpoint "
                                   "outside a run's checkpoints/)")
    em.add_argument("--format", choices=["npy", "csv", "parquet"], default="npy",
                    help="npy: <name>.npy and _labels.npy, with _rows.csv naming each row's file (or index); csv / "
                         "parquet: one table with the file (or index), label, class and embedding of every row")
    em.set_defaults(func=cmd_embed)

    ex = sub.add_parser("export", help="write a checkpoint's encoder as safetensors, TorchScript and ONNX",
                        description="safetensors: a timm / torchvision network's weights under the plain model's "
                                    "keys, with the Python lines that load them in encoder.json (run during the "
                                    "export against the encoder's features); selfsup's own networks and wrapped "
                                    "encoders (colorization, CMC, CPC) need selfsup to rebuild them. TorchScript "
                                    "and ONNX: the whole encoder, normalisation inside, float images in [0, 1], "
                                    "self-contained; each is checked against PyTorch (ONNX with onnxruntime). "
                                    "encoder.json says the input shape, range, mean and std.")
    ex.add_argument("checkpoint")
    ex.add_argument("--out", help="folder (default: <run>/export, or export/ beside a checkpoint outside a run's "
                                   "checkpoints/); an earlier export there is replaced, its files of other formats "
                                   "removed")
    ex.add_argument("--formats", type=_formats, default=["safetensors", "torchscript", "onnx"],
                    help="comma-separated: safetensors,torchscript,onnx (default all)")
    ex.set_defaults(func=cmd_export)

    pk = sub.add_parser("pack", help="decode a folder of images once into uint8 shards for streamed training",
                        description="Writes <out>/index.json and <out>/shard-*.npy (<out>/train and <out>/test "
                                    "when the folder has train/ and test/): each image's centred square at side "
                                    "round(size x ratio), sha256 per shard. An interrupted pack resumes; a "
                                    "finished one is checked again. Train on it with data.name=packed "
                                    "data.root=<out>.")
    pk.add_argument("folder", help="folder of images (classes: first-level subfolders)")
    pk.add_argument("out", help="output folder")
    pk.add_argument("--size", type=int, default=96, help="training crop side the pack is for (default 96)")
    pk.add_argument("--channels", type=int, default=3, choices=[1, 3])
    pk.add_argument("--ratio", type=float, default=1.15, help="stored side over --size (default 1.15)")
    pk.add_argument("--shard-size", type=int, default=1024, help="images per shard (default 1024)")
    pk.set_defaults(func=cmd_pack)

    pl = sub.add_parser("plot", help="redraw a run's curves and embedding map")
    pl.add_argument("run", help="run folder (train.out_dir)")
    pl.add_argument("--method", default="umap", choices=["umap", "tsne"])
    pl.set_defaults(func=cmd_plot)

    rp = sub.add_parser("report", help="a run's results as one self-contained HTML page, or runs as a markdown table")
    rp.add_argument("runs", nargs="+", metavar="RUN", help="run folder (train.out_dir)")
    rp.add_argument("--table", action="store_true", help="print the results table of the runs instead")
    rp.add_argument("--headlines", action="store_true",
                    help="print the README's headline table of the runs (linear, kNN, own measure, each beside "
                         "its floor) instead (not with --table)")
    rp.add_argument("--out", help="output file (default: <run>/report.html; with --table, standard output)")
    rp.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="list methods, backbones, datasets, augmentations and recipes")
    ls.set_defaults(func=cmd_list)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line read as the commands take it (``main`` without running anything)."""
    command_parser = parser()
    # `--resume` takes an optional value (yes, auto): a bare `--resume` followed by an override or a
    # checkpoint would hand that word to it, so a bare one means yes before anything else is read.
    words = ["--resume=yes" if word == "--resume" and (i + 1 == len(argv) or argv[i + 1] not in ("yes", "auto"))
             else word for i, word in enumerate(argv)]
    args, extra = command_parser.parse_known_args(words)
    # `selfsup pretrain RECIPE --resume train.epochs=20`: overrides may come after the options too.
    if args.command in ("pretrain", "sweep") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "evaluate" and args.classes is not None and len(set(args.classes)) < args.way:
        command_parser.error(f"--classes lists {len(set(args.classes))} classes, fewer than --way {args.way}")
    args.command_line = shlex.join(["selfsup", *argv])
    if args.command == "pretrain" and args.recipe and "=" in args.recipe:
        args.overrides.insert(0, args.recipe)  # `selfsup pretrain key=value ...` without a recipe
        args.recipe = None
    return args
