"""The commands but ``evaluate``: pretrain, embed, export, verify, pack, plot, report, sweep and list."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfsup.cli import common
from selfsup.errors import DataError, UsageError


def cmd_pretrain(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    common.tune_allocator()
    if not args.recipe and not args.overrides and not args.resume:
        # A bare `selfsup pretrain` would start a full run of the defaults (SimCLR on Fashion-MNIST) in runs/.
        raise UsageError("name a recipe (selfsup pretrain recipes/simclr_fashion_mnist.yaml; `selfsup list` shows "
                         "them) or key=value settings over the defaults (selfsup pretrain method=simclr)")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in train.out_dir and --overwrite starts it over: choose one")
    if args.resume and args.recipe and Path(args.recipe).suffix in (".ckpt", ".pt"):
        from selfsup.engine import load_checkpoint

        # The checkpoint's own configuration, with the command line's overrides on top.
        saved = load_checkpoint(args.recipe)["config"]
        cfg, resume = load_config(None, args.overrides, base=saved), Path(args.recipe)
    else:
        cfg = load_config(args.recipe, args.overrides)
        resume = "auto" if args.resume == "auto" else bool(args.resume)
    result = pretrain(cfg, resume=resume, overwrite=args.overwrite, command=args.command_line)
    common.close_process_group()
    if result.metrics:
        print(json.dumps({"run": str(result.out_dir), **{k: round(v, 4) for k, v in result.metrics.items()}}))
        for key, value in result.metrics.items():
            print(f"{key.replace('_', ' ')}: {100 * value:.2f}%")
    if result.main:  # under torchrun every rank returns here; one line is enough
        print(f"checkpoint: {result.checkpoint}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from selfsup import evaluate
    from selfsup.data import kind_of

    common.tune_allocator()
    is_folder = args.data is not None and Path(args.data).is_dir()
    if is_folder and args.root is not None:
        raise UsageError(f"--root: {args.data} is a folder of images already; --root goes with a dataset name")
    if args.split is None:  # a plain folder of images has one split, its whole self: what the user means
        from selfsup.data.folder import split_folders

        plain = is_folder and split_folders(Path(args.data)) is None
        args.split = "train" if plain else "test"
    cfg, backbone, (channels, size), device, _ = common.load_encoder(args.checkpoint)
    dataset = common.dataset(cfg, args.data, args.root, args.split, channels, size)
    features = evaluate.extract_features(backbone, dataset.inputs, device=device, progress=True,
                                         kind=kind_of(cfg.data))
    out = Path(args.out) if args.out else common.run_dir(args.checkpoint) / "embeddings"
    # Named as evaluate names results: a folder by its own name, so two folders do not share files.
    images = kind_of(cfg.data) in ("images", "image_text")
    label = common.data_choice(cfg, args.data, args.root)[2] if images else dataset.name
    prefix = f"{label}_{args.split}"
    files = getattr(dataset, "files", None)
    if args.format == "npy":
        # Which image each row is (the rows of the .npy files in order), written first: arrays without it
        # would not say which image each row is.
        rows = evaluate.save_embedding_table(out / f"{prefix}_rows.csv", features[:, :0], files=files,
                                             labels=dataset.labels, classes=dataset.classes)
        paths = [*evaluate.save_embeddings(out, features, dataset.labels, prefix=prefix), rows]
    else:
        paths = [evaluate.save_embedding_table(out / f"{prefix}.{args.format}", features, files=files,
                                               labels=dataset.labels, classes=dataset.classes, fmt=args.format)]
    print(f"{features.shape[0]} embeddings of dimension {features.shape[1]} -> {', '.join(map(str, paths))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from selfsup.config import to_dict
    from selfsup.data import kind_of
    from selfsup.export import FILES, export_encoder

    cfg, encoder, (channels, size), _, _ = common.load_encoder(args.checkpoint)
    kind = kind_of(cfg.data)
    if kind not in ("images", "image_text"):
        raise DataError(f"export writes image encoders; {args.checkpoint} encodes {kind} ({cfg.method})")
    out = Path(args.out) if args.out else common.run_dir(args.checkpoint) / "export"
    earlier = [name for name in (*FILES.values(), "encoder.json") if (out / name).is_file()]
    stale = [FILES[key] for key in FILES if key not in args.formats and FILES[key] in earlier]
    paths = export_encoder(encoder, out, in_channels=channels, image_size=size, name=cfg.backbone.name,
                           formats=args.formats, info={"checkpoint": str(Path(args.checkpoint).resolve()),
                                                       "method": cfg.method}, config=to_dict(cfg))
    card = json.loads(paths["card"].read_text())
    if earlier:  # one export per folder: the card describes every encoder.* file there
        print(f"replaced the earlier export in {out}" + (f"; removed its {', '.join(stale)} (not asked for this time)"
                                                         if stale else ""))
    for key, path in paths.items():
        print(f"{key}: {path}")
    if "safetensors_max_abs_diff" in card["checks"]:
        print(f"safetensors loaded as encoder.json says, against PyTorch: largest difference "
              f"{card['checks']['safetensors_max_abs_diff']:.2g}")
    if "torchscript_max_abs_diff" in card["checks"]:
        print(f"TorchScript against PyTorch: largest difference {card['checks']['torchscript_max_abs_diff']:.2g}")
    if "onnx_max_abs_diff" in card["checks"]:
        print(f"onnxruntime against PyTorch: largest difference {card['checks']['onnx_max_abs_diff']:.2g}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from selfsup.engine import checkpoint
    from selfsup.export import verify_export

    path = Path(args.path)
    if path.is_dir():
        checked = verify_export(path)
        print(f"ok: {path}: {', '.join(checked)} match the sha256 in encoder.json")
        return 0
    state = checkpoint.load(path, check=False)  # the digests are checked below, with the count
    count = checkpoint.verify(state, path)
    if not count:
        print(f"{path}: no digests recorded (written by a selfsup from before they were): loadable, not verifiable")
        return 0
    print(f"ok: {path}: {count} tensors and the configuration match their {state['integrity']['algorithm']} "
          f"({state['config'].get('method')}, step {state['step']})")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from selfsup.data.pack import open_pack, pack_folder

    indexes = pack_folder(args.folder, args.out, size=args.size, channels=args.channels, ratio=args.ratio,
                          shard_size=args.shard_size, progress=True)
    out = Path(args.out).expanduser()
    for split, index in indexes.items():
        where = out / split if len(indexes) > 1 else out
        open_pack(out, split, verify=True)  # what training will read, checksums included
        size = sum((where / shard["file"]).stat().st_size for shard in index["shards"])
        print(f"{split}: {index['count']:,} images of {index['channels']}x{index['side']}x{index['side']} in "
              f"{len(index['shards'])} shard(s), {size / 2**20:,.1f} MiB, sha256 verified; "
              f"{len(index['skipped'])} unreadable file(s) skipped -> {where}")
    print(f"train on it: selfsup pretrain <recipe> data.name=packed data.root={args.out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from selfsup import evaluate

    run = Path(args.run)
    metrics = run / "logs" / "metrics.csv"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} does not exist; is {run} a selfsup run folder?")
    print(evaluate.plot_curves(metrics, run / "curves.png"))
    embeddings = run / "test_embeddings.npy"
    if embeddings.is_file():
        import numpy as np

        labels = np.load(run / "test_embeddings_labels.npy")
        print(evaluate.plot_embedding(np.load(embeddings), labels, run / f"{args.method}.png", method=args.method))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from selfsup import evaluate

    if args.table and args.headlines:
        raise UsageError("--table and --headlines each print one table of the runs: choose one")
    if args.table or args.headlines:
        from selfsup._io import atomic_write

        runs = args.runs
        if len(runs) > 1:  # `report --table runs/*`: folders that hold no finished run (a sweep's, one still
            skipped = [run for run in runs if not (Path(run) / "results.json").is_file()]  # training) are left out
            runs = [run for run in runs if run not in skipped]
            if skipped:
                print(f"selfsup: left out of the table, no results.json (not a finished run): {', '.join(map(str, skipped))}",
                      file=sys.stderr)
            if not runs:
                raise DataError(f"none of the {len(args.runs)} folders holds a finished run (results.json)")
        table = (evaluate.headline_table if args.headlines else evaluate.results_table)(runs)
        if args.out:
            atomic_write(args.out, lambda file: file.write(table.encode("utf-8")))
            print(args.out)
        else:
            print(table, end="")
        return 0
    if args.out and len(args.runs) > 1:
        raise DataError(f"--out names one page but {len(args.runs)} runs were given; leave --out out "
                        f"to write <run>/report.html for each, or use --table for one table")
    for run in args.runs:
        print(evaluate.write_report(run, args.out))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import yaml

    from selfsup import sweep
    from selfsup.engine.finish import commit

    path = Path(args.study)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a study (studies/*.yaml) or a recipe with key=a,b,c axes")
    slurm: dict[str, int | str] = {}
    for item in args.slurm:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--slurm {item!r}: expected KEY=VALUE, e.g. slurm_partition=gpu or timeout_min=60")
        slurm[key] = int(value) if value.isdigit() else value
    if slurm and args.executor == "local":
        raise UsageError(f"--slurm {' '.join(args.slurm)}: submitit parameters need --executor slurm "
                         f"(or submitit-local); the local executor would ignore them")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if isinstance(spec, dict) and ("points" in spec or "grid" in spec):
        if args.overrides:
            raise UsageError(f"{path} is a study: its grid is in the file, not on the command line "
                             f"({' '.join(args.overrides)})")
        study = sweep.load_study(path, out=args.out)
    else:
        if args.seeds < 1:
            raise UsageError(f"--seeds {args.seeds}: a sweep needs at least one seed per grid point")
        study = sweep.study_from_command_line(str(path), args.overrides, args.seeds, out=args.out)
    failed = 0
    if not args.summary_only:
        codes = sweep.execute(study, jobs=args.jobs, executor=args.executor, slurm=slurm)
        failed = sum(code != 0 for code in codes.values())
    summary = sweep.summarise(study, Path(args.page) if args.page else None, commit=commit())
    print(f"{study.name}: {summary['verdict']}. {summary['verdict_text']}")
    print(f"summary: {study.folder / 'summary.json'}; page: {summary['page']}")
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    from selfsup import augment, data
    from selfsup.methods import METHODS
    from selfsup.nn import BACKBONES, GRAPH_BACKBONES, SEQUENCE_BACKBONES

    print("methods:")
    name_width = max(len(name) for name in METHODS)
    class_width = max(len(cls.__name__) for cls in METHODS.values())
    for name, cls in sorted(METHODS.items()):
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        learns_from = " | ".join(getattr(cls, "data_kinds", (cls.data_kind,))) + (
            " + labels" if getattr(cls, "needs_labels", False) else "")
        print(f"  {name:<{name_width}} {cls.__name__:<{class_width}} [{learns_from}] {summary}")
    kinds = {**dict.fromkeys(SEQUENCE_BACKBONES, " [sequences]"), **dict.fromkeys(GRAPH_BACKBONES, " [graph]")}
    print("backbones:  " + ", ".join(name + kinds.get(name, "") for name in BACKBONES))
    kinds = {**dict.fromkeys(data.SEQUENCE_DATASETS, " [sequences]"), **dict.fromkeys(data.GRAPH_DATASETS, " [graph]"),
             "captions": " [image_text]", "video": " [video]", "pairs": " [image_pairs]"}
    print("datasets:   " + ", ".join(name + kinds.get(name, "") for name in data.DATASETS))
    print("augment:    " + ", ".join(augment.RECIPES))
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    if recipes.is_dir():
        print("recipes:    " + ", ".join(sorted(str(p.relative_to(recipes.parent)) for p in recipes.glob("*.yaml"))))
    return 0
