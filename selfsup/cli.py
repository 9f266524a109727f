"""``selfsup`` command line: pretrain | sweep | evaluate | embed | export | verify | pack | plot | report | list
(also ``python -m selfsup``).

Errors a user can fix (a missing file, an unknown key, a bad value, a corrupt data file) are
printed as one line ``selfsup: error: ...`` with exit status 2; a run that diverges (NaN/Inf)
stops with ``selfsup: training diverged: ...`` and exit status 3; set ``SELFSUP_DEBUG=1`` for
the traceback. Anything else is a bug and keeps its traceback.

Unlike the library, the command line changes one process-wide setting, and says so: it keeps
freed memory in the process (``selfsup.engine.tune_allocator``), which makes CPU training steps
up to 1.3x faster; ``SELFSUP_MALLOC=default`` leaves glibc's settings alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from selfsup.errors import DataError, NonFiniteLossError, Preempted, UsageError

USAGE_ERRORS = (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _tune_allocator() -> None:
    from selfsup.engine import tune_allocator

    if tune_allocator():
        print("selfsup: keeping freed memory in this process (glibc malloc thresholds raised; "
              "SELFSUP_MALLOC=default keeps glibc's)", file=sys.stderr)


def _close_process_group() -> None:
    """Under DDP, end this rank's process group before the interpreter exits: a rank whose gloo or NCCL
    threads are still running at exit can abort ("terminate called without an active exception") after
    the run has finished, and torchrun then reports the job failed. No collective follows the run."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _load_encoder(checkpoint_path: str):
    """The checkpoint's configuration, its method's eval encoder (on the best device), and the
    factory of a freshly initialised encoder of the same architecture and normalisation."""
    cfg, method, (channels, size), device, build = _load_method(checkpoint_path)
    encoder = method.eval_encoder()
    mean, std = encoder.mean.flatten().tolist(), encoder.std.flatten().tolist()
    return cfg, encoder.to(device).eval(), (channels, size), device, lambda: build(mean, std).eval_encoder()


def _load_method(checkpoint_path: str):
    """The checkpoint's configuration, its whole method with the saved weights (on the CPU), the input
    shape, the best device, and ``build(mean, std)`` of a fresh method of the same architecture."""
    import torch

    from selfsup.config import from_dict
    from selfsup.data import graph_from_config, kind_of
    from selfsup.engine import build_method, load_checkpoint

    state = load_checkpoint(checkpoint_path)
    cfg = from_dict(state["config"])
    channels, size = state["data"]["channels"], state["data"]["size"]

    graph = graph_from_config(cfg.data) if kind_of(cfg.data) == "graph" else None

    def build(mean, std):
        return build_method(cfg, in_channels=channels, image_size=size, mean=mean, std=std,
                            num_samples=state["data"].get("num_train"), graph=graph)

    # mean/std are placeholders: the real statistics are buffers restored by load_state_dict.
    method = build([0.0] * channels, [1.0] * channels)
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as error:
        raise DataError(f"checkpoint {checkpoint_path} does not fit {cfg.method} as this selfsup builds it "
                        f"({str(error).splitlines()[0]}); was it written by another version?") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return cfg, method, (channels, size), device, build


def _same_folder(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


ROOTED = ("folder", "packed", "webdataset")
"""Datasets that are their root: another root is other data."""


def _data_choice(cfg, name: str | None, root: str | None) -> tuple[str, str | None, str, bool]:
    """What ``--data`` / ``--root`` ask for: ``(dataset name, root, label, own)``. A folder (``--data DIR``,
    or ``--root DIR`` alone for a run on a named dataset) is read as labelled images; other data is
    labelled by its name, a folder (or pack) by the folder's. ``own``: the run's own data, whose
    results are filed under the plain keys (``linear.json``) that other data's must not overwrite."""
    d = cfg.data
    if name is not None and Path(name).is_dir():
        name, root = "folder", name
    elif name is None and root is not None and Path(root).is_dir() and d.name not in ROOTED:
        name = "folder"
    name = name or d.name
    root = root if root is not None or name != d.name else d.root
    own = name == d.name and (name not in ROOTED or _same_folder(root, d.root))
    return name, root, d.name if own else (Path(root).name if name in ROOTED else name), own


def _run_train_split(cfg, root: str | None, channels: int, size: int):
    """The run's own training split as the run had it: the engine's seeded ``data.max_samples`` subset."""
    from dataclasses import replace

    from selfsup.engine.sources import load_datasets

    data = replace(cfg.data, root=root, size=size, channels=channels)
    return load_datasets(replace(cfg, data=data), progress=False)[0]


def _dataset(cfg, name: str | None, root: str | None, split: str, channels: int, size: int, *, as_run: bool = False):
    """A split of ``name`` (or a folder), converted to the checkpoint's channels and size; for a
    sequence checkpoint, the evaluation windows of a WAV folder (the checkpoint's, or ``name``/``root``).
    ``as_run``: the run's own training split is its ``data.max_samples`` subset, as the run's evaluations
    probed it, so that ``evaluate`` reproduces them."""
    from selfsup import data

    kind = data.kind_of(cfg.data)
    if kind == "graph":  # the graph the checkpoint's encoder embeds
        if (name is not None and name != cfg.data.name) or (root is not None and not _same_folder(root, cfg.data.root)):
            raise DataError(f"--data/--root: {cfg.method} was trained on the graph {cfg.data.name!r} and its encoder "
                            f"embeds that graph's nodes only; leave --data and --root out")
        graph = data.graph_from_config(cfg.data)
        return data.NodeSet(graph, graph.train_mask if split == "train" else graph.test_mask, graph.name)
    if kind == "sequences":
        folder = next((p for p in (name, root) if p is not None and Path(p).is_dir()), None)
        return data.WavFolder.from_config(cfg.data, split, root=folder).dataset
    if kind == "image_text" and name is None and root is None:  # the checkpoint's own captioned split
        d = cfg.data
        if d.name == "captions":
            if split == "test" and not d.test_captions:
                raise DataError("the checkpoint's captions data has no test captions file (data.test_captions)")
            train, test = data.read_captions_splits(d.captions, d.test_captions, root=d.root, size=size,
                                                    channels=channels, held_out=d.held_out_classes,
                                                    test=split == "test")
            return train if split == "train" else test
        subset = as_run and split == "train" and d.max_samples is not None
        images = (_run_train_split(cfg, d.root, channels, size) if subset else
                  data.load(d.name, split, d.root, size=size, channels=channels))
        return data.from_templates(images, split, held_out=d.held_out_classes)

    name, root, _, own = _data_choice(cfg, name, root)
    if own and as_run and split == "train" and cfg.data.max_samples is not None:
        return _run_train_split(cfg, root, channels, size)
    if own and data.is_streamed(cfg.data):  # the run's own eval view, streamed
        from dataclasses import replace

        return data.streamed_split(replace(cfg.data, root=root), split)
    return data.load(name, split, root, size=size, channels=channels)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    _tune_allocator()
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
    _close_process_group()
    if result.metrics:
        print(json.dumps({"run": str(result.out_dir), **{k: round(v, 4) for k, v in result.metrics.items()}}))
        for key, value in result.metrics.items():
            print(f"{key.replace('_', ' ')}: {100 * value:.2f}%")
    if result.main:  # under torchrun every rank returns here; one line is enough
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _run_dir(checkpoint: str) -> Path:
    """``<run>`` for ``<run>/checkpoints/last.ckpt``; for a checkpoint anywhere else, its own folder."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def _evaluations_dir(checkpoint: str) -> Path:
    """``<run>/evaluations`` for ``<run>/checkpoints/last.ckpt``, else a folder beside the checkpoint."""
    return _run_dir(checkpoint) / "evaluations"


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _summary(key: str, entry: dict) -> str:
    if "fractions" in entry:
        return ", ".join(f"{100 * float(f):g}% labels {_percent(r['mean'])} ± {_percent(r['std'] or 0)} (scratch "
                         f"{_percent(r['scratch_mean'])} ± {_percent(r['scratch_std'] or 0)})"
                         for f, r in entry["fractions"].items())
    floor = f" (random init: {_summary(key, entry['random_init'])})" if entry.get("random_init") else ""
    if "ci95" in entry:
        episodes = f", {entry['episodes']} episodes" if "episodes" in entry else ""
        return f"{_percent(entry['accuracy'])} ± {_percent(entry['ci95'])} (95% CI{episodes}){floor}"
    if "j_and_f" in entry or "pck@0.1" in entry:
        parts = [f"J&F {entry['j_and_f']:.4f} (J {entry['j']:.4f}, F {entry['f']:.4f})"] if "j_and_f" in entry else []
        parts += [f"PCK@{alpha} {_percent(entry[f'pck@{alpha}'])}" for alpha in (0.1, 0.2) if f"pck@{alpha}" in entry]
        return ", ".join(parts) + floor
    if "tau" in entry:
        views = (f", cross-view alignment tau {entry['alignment_tau']:.4f} (error {entry['alignment_error']:.4f})"
                 if "alignment_tau" in entry else "")
        views += (f", task alignment tau {entry['task_alignment_tau']:.4f} (error {entry['task_alignment_error']:.4f})"
                  if "task_alignment_tau" in entry else "")
        return f"temporal-order tau {entry['tau']:.4f}, same-video@1 {_percent(entry['same_video@1'])}{views}{floor}"
    scores = {k: v for k, v in entry.items() if k in ("accuracy", "linear", "knn", "held_out_accuracy") or "@" in k}
    return ", ".join(f"{'' if k == 'accuracy' else k + ' '}{_percent(v)}" for k, v in scores.items()) + floor


def cmd_evaluate(args: argparse.Namespace) -> int:
    from selfsup import evaluate
    from selfsup.data import kind_of
    from selfsup.errors import ConfigError

    _tune_allocator()
    if args.no_floor and args.protocol in ("finetune", "zeroshot"):
        raise UsageError(f"--no-floor: evaluate {args.protocol} computes no random-init floor"
                         + (" (its baseline is the same network trained from scratch)" if args.protocol == "finetune"
                            else "") + "; leave --no-floor out")
    if args.protocol == "zeroshot":
        return _zero_shot(args)
    if args.protocol == "correspondence":
        return _correspondence(args)
    if args.protocol in ("propagate", "temporal"):
        return _video(args)
    cfg, encoder, (channels, size), device, make_scratch = _load_encoder(args.checkpoint)
    if args.stage is not None:
        encoder, make_scratch = _stage_encoder(args, cfg, encoder, make_scratch, channels, size, device)
    if args.protocol == "transfer" and args.data is None:
        raise ConfigError("evaluate transfer needs --data NAME or a folder (the dataset to transfer to)")
    whole = args.whole_split and cfg.data.max_samples is not None
    train = _dataset(cfg, args.data, args.root, "train", channels, size, as_run=not args.whole_split)
    test = _dataset(cfg, args.data, args.root, "test", channels, size)
    if train.labels is None or test.labels is None:
        raise DataError(f"dataset {train.name!r} has no labels; evaluation needs a labelled train and test split "
                        f"(for a folder: one subfolder per class, in train/ and test/)")
    *_, data, own = _data_choice(cfg, args.data, args.root)
    # The whole split's numbers are named apart from the run's own (its max_samples subset's), never over them.
    suffix = ("" if own and args.protocol != "transfer" else f"_{data}") + ("_whole_split" if whole and own else "")
    suffix += "" if args.stage is None else f"_stage{args.stage}"
    if args.protocol == "finetune":
        if kind_of(cfg.data) not in ("images", "image_text"):
            raise DataError(f"evaluate finetune works on images; {cfg.method} was trained on "
                            f"{kind_of(cfg.data)} (use linear, knn or fewshot)")
        from selfsup.data import StreamedDataset

        # Fine-tuning draws label subsets as tensors: a streamed split is read whole.
        train, test = (s.in_memory() if isinstance(s, StreamedDataset) else s for s in (train, test))
        entries = {f"finetune{suffix}": evaluate.finetune_entry(
            encoder, make_scratch, train.images, train.labels, test.images, test.labels, data=data,
            fractions=args.labels, seeds=args.seeds, steps=args.steps, device=device, progress=True)}
    else:
        from selfsup.engine.floor import random_init_floor, seeded_build, with_floor

        def measure(net, progress: bool = False) -> dict:
            return _frozen_entries(args, net, train, test, kind=kind_of(cfg.data), device=device, data=data,
                                   suffix=suffix, shape=(channels, size), progress=progress)

        entries = measure(encoder, progress=True)
        if not args.no_floor:  # beside every number, the same evaluation at random initialisation
            settings = {key: getattr(args, key) for key in ("protocol", "k", "temperature", "recall_k", "way",
                                                            "shots", "query", "episodes", "classes", "stage")}
            with_floor(entries, random_init_floor(seeded_build(make_scratch, cfg.train.seed), measure,
                                                  data={"train": train, "test": test}, settings=settings))
    if args.stage is not None:  # said in the entry, so that a report shows which features were probed
        for entry in entries.values():
            entry["stage"] = args.stage
            entry["protocol"] = (f"features: the backbone's stage {args.stage} (0 the finest) averaged over positions "
                                 f"(Goyal et al. 2019's layer-wise probe); {entry.get('protocol', '')}")
    _write_entries(args.checkpoint, entries, data)
    return 0


def _stage_encoder(args: argparse.Namespace, cfg, encoder, make_scratch, channels: int, size: int, device):
    """``--stage N``: the encoder and its random-init factory read at the backbone's stage N, averaged over
    positions (:class:`selfsup.nn.dense.PooledStage`); refused in one line where there is no such stage."""
    import torch

    from selfsup.data import kind_of
    from selfsup.nn.dense import PooledStage, stage_features

    if args.protocol == "finetune":
        raise UsageError("--stage: evaluate finetune trains the whole encoder; --stage is for the frozen protocols "
                         "(linear, knn, fewshot, retrieval, transfer)")
    if kind_of(cfg.data) not in ("images", "image_text"):
        raise UsageError(f"--stage reads an image backbone's feature maps; {cfg.method} was trained on "
                         f"{kind_of(cfg.data)}")
    try:
        with torch.no_grad():
            count = len(stage_features(encoder, torch.zeros(1, channels, size, size, device=device)))
    except (ValueError, AttributeError):
        raise UsageError(f"--stage: {cfg.method}'s evaluation encoder ({type(encoder).__name__}"
                         f"{'' if not hasattr(encoder, 'net') else ' of ' + type(encoder.net).__name__}) has no stages "
                         f"selfsup can read (the ConvNet's four, a torchvision ResNet's stem and layer1-4)") from None
    if not 0 <= args.stage < count:
        raise UsageError(f"--stage {args.stage}: {cfg.backbone.name} has stages 0 to {count - 1} (0 the finest)")
    return PooledStage(encoder, args.stage).eval(), lambda: PooledStage(make_scratch(), args.stage)


def _frozen_entries(args: argparse.Namespace, encoder, train, test, *, kind: str, device, data: str, suffix: str,
                    shape: tuple[int, int], progress: bool = False) -> dict:
    """The results entries of a frozen-feature protocol (linear, knn, fewshot, retrieval, transfer)."""
    from selfsup import evaluate

    train_x = evaluate.extract_features(encoder, train.inputs, device=device, progress=progress, kind=kind)
    test_x = evaluate.extract_features(encoder, test.inputs, device=device, kind=kind)
    if args.protocol == "fewshot":
        entries = {f"fewshot_{args.way}way_{shot}shot{suffix}": evaluate.fewshot_entry(
            test_x, test.labels, data=data, n_way=args.way, k_shot=shot, n_query=args.query,
            episodes=args.episodes, classes=args.classes) for shot in args.shots}
        if None in entries.values():
            raise DataError(f"{data}: too few classes with enough test images for {args.way}-way episodes "
                            f"with {args.query} queries")
        return entries
    frozen = evaluate.frozen_evaluations(
        train_x, train.labels, test_x, test.labels, data=data,
        linear=args.protocol in ("linear", "transfer"), knn=args.protocol in ("knn", "transfer"),
        knn_k=args.k, knn_temperature=args.temperature, shots=(),
        recall_ks=args.recall_k if args.protocol == "retrieval" else (), device=device)
    if args.protocol == "transfer":
        channels, size = shape
        return {f"transfer{suffix}": {"data": data, "linear": frozen["linear"]["accuracy"],
                                      "knn": frozen["knn"]["accuracy"],
                                      "protocol": f"{frozen['linear']['protocol']}; {frozen['knn']['protocol']}; "
                                                  f"images converted to {channels}x{size}x{size} as the "
                                                  f"checkpoint was trained"}}
    return {f"{args.protocol}{suffix}": frozen[args.protocol]}


def _zero_shot(args: argparse.Namespace) -> int:
    """``evaluate zeroshot``: an image-text checkpoint's zero-shot classification (prompts of the class
    names) and image<->text retrieval, on its own test split or on ``--data`` (zero-shot transfer)."""
    from selfsup import data as datasets

    cfg, method, (channels, size), device, _ = _load_method(args.checkpoint)
    if not hasattr(method, "extra_evaluations"):  # the protocol's hook, not a method name
        raise DataError(f"evaluate zeroshot needs an image-text checkpoint (clip); {args.checkpoint} is {cfg.method}")
    if args.data is None and args.root is None:
        test = _dataset(cfg, None, None, "test", channels, size)
        data, suffix = cfg.data.name, ""
    else:
        # Any labelled image set, captioned with prompts of its class names (a plain image config:
        # the checkpoint's captions do not apply to another dataset).
        images = _dataset(type(cfg)(), args.data, args.root, "test", channels, size)
        test = datasets.from_templates(images, "test")
        data = _data_choice(type(cfg)(), args.data, args.root)[2]
        suffix = f"_{data}"
    entries = {f"{key}{suffix}": entry
               for key, entry in method.to(device).extra_evaluations(test, data=data, device=device).items()}
    _write_entries(args.checkpoint, entries, data)
    return 0


def _correspondence(args: argparse.Namespace) -> int:
    """``evaluate correspondence``: PCK@k of the checkpoint's per-pixel descriptors (a dense method's
    own; any other method's upsampled last feature map) under known warps of test images, beside the
    same network at random initialisation and raw-pixel patches; the matches drawn next to the run."""
    import torch

    from selfsup.engine.floor import random_init_floor, seeded_build, with_floor
    from selfsup.evaluate.correspondence import correspondence_entry
    from selfsup.nn import eval_mode
    from selfsup.nn.dense import UpsampledFeatures

    cfg, method, (channels, size), device, build = _load_method(args.checkpoint)
    test = _dataset(cfg, args.data, args.root, "test", channels, size)
    if not hasattr(test, "images"):
        raise DataError(f"evaluate correspondence needs images; {cfg.method} was trained on {cfg.data.name}")
    *_, data, own = _data_choice(cfg, args.data, args.root)
    suffix = "" if own else f"_{data}"
    images = test.images[:args.images]

    def describe(m):
        encoder = m.descriptor_encoder() if hasattr(m, "descriptor_encoder") else UpsampledFeatures(m.eval_encoder())
        return encoder.to(device).eval()

    picture = _evaluations_dir(args.checkpoint).parent / f"correspondence{suffix}.png"
    with eval_mode(method):
        entry = correspondence_entry(describe(method), images, data=data, points=args.points, device=device,
                                     picture=picture)
    if not args.no_floor:
        backbone = method.eval_encoder()
        mean, std = (getattr(backbone, key).flatten().tolist() for key in ("mean", "std"))
        fresh = seeded_build(lambda: build(mean, std), cfg.train.seed)
        with torch.no_grad():
            floor = random_init_floor(describe(fresh), lambda encoder: {"correspondence": correspondence_entry(
                encoder, images, data=data, points=args.points, device=device)}, data={"test": test},
                settings={"protocol": "correspondence", "points": args.points, "images": args.images})
        with_floor({"correspondence": entry}, floor)
    _write_entries(args.checkpoint, {f"correspondence{suffix}": entry}, data)
    print(f"matches drawn in {picture}")
    return 0


def _video(args: argparse.Namespace) -> int:
    """``evaluate propagate`` / ``evaluate temporal`` on held-out videos (the test split of --data, a
    video folder or DAVIS root; default the checkpoint's), beside the same network at random
    initialisation; propagation also beside copying the first mask and raw Lab colours, with
    <run>/propagation.png. Any image checkpoint's encoder can be evaluated so."""
    import torch

    from selfsup import evaluate
    from selfsup.data import load_video_split
    from selfsup.engine.floor import random_init_floor, seeded_build, with_floor
    from selfsup.evaluate import video
    from selfsup.methods.base import FeatureGrid

    cfg, method, (channels, size), device, build = _load_method(args.checkpoint)
    root = args.data or args.root or (cfg.data.root if cfg.data.name == "video" else None)
    if root is None:
        raise UsageError(f"evaluate {args.protocol} needs --data, a folder of videos or a DAVIS root "
                         f"({cfg.method} was trained on {cfg.data.name})")
    test = load_video_split(root, "test", size=size, channels=channels, max_frames=cfg.data.max_frames)
    data = Path(root).name
    suffix = "" if cfg.data.name == "video" and Path(root) == Path(cfg.data.root or "") else f"_{data}"

    def dense(m):
        return (m.dense_encoder() if hasattr(m, "dense_encoder") else FeatureGrid(m.eval_encoder())).to(device)

    def measure(m) -> dict:
        if args.protocol == "temporal":
            features = evaluate.extract_features(m.eval_encoder().to(device), test.images, device=device)
            return {"temporal": video.temporal_entry(features, test.video, test.time, data=data, scenes=test.scenes,
                                                     tasks=test.tasks)}
        encoder = dense(m)
        return {"propagation": video.propagation_entry(
            test, lambda frames: video.dense_features(encoder, frames, device=device), data=data, topk=args.topk,
            radius=args.radius, context=args.context, temperature=args.propagation_temperature, keep=3)}

    entries = measure(method)
    if not args.no_floor:
        backbone = method.eval_encoder()
        mean, std = (getattr(backbone, key).flatten().tolist() for key in ("mean", "std"))
        fresh = seeded_build(lambda: build(mean, std), cfg.train.seed)
        settings = {"protocol": args.protocol, "topk": args.topk, "radius": args.radius, "context": args.context,
                    "temperature": args.propagation_temperature, "method": cfg.method,
                    "method_args": dict(cfg.method_args)}
        with torch.no_grad():
            floor = random_init_floor(fresh, measure, data={"test": test}, settings=settings)
        with_floor(entries, floor)
    if args.protocol == "propagate":
        entry = entries["propagation"]
        strips = entry.pop("strips")
        grid = video.dense_features(dense(method), test.images[:1], device=device).shape[-1]
        entry["baselines"] = video.propagation_baselines(test, data=data, lab_stride=max(1, size // grid),
                                                         topk=args.topk, radius=args.radius, context=args.context,
                                                         temperature=args.propagation_temperature)
        picture = _evaluations_dir(args.checkpoint).parent / f"propagation{suffix}.png"
        if strips:
            video.plot_propagation(strips, picture, title=f"{cfg.method}: the first frame's masks propagated "
                                                          f"(J&F {entry['j_and_f']:.3f})")
        rows = [("trained", entry), *(([("random init", entry["random_init"])]) if "random_init" in entry else []),
                *entry["baselines"].items()]
        for key, label in (("j_and_f", "J&F"), ("pck@0.1", "PCK@0.1"), ("pck@0.2", "PCK@0.2")):
            if key in entry:
                print(" | ".join(f"{name} {label} {values[key]:.4f}" for name, values in rows if key in values))
        if strips:
            print(f"propagated masks drawn in {picture}")
    _write_entries(args.checkpoint, {f"{key}{suffix}": entry for key, entry in entries.items()}, data)
    return 0


def _write_entries(checkpoint: str, entries: dict, data: str) -> None:
    folder = _evaluations_dir(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    for key, entry in entries.items():
        path = folder / f"{key}.json"
        path.write_text(json.dumps(entry, indent=2) + "\n")
        print(f"{key}: {_summary(key, entry)} on {data} -> {path}")


def cmd_embed(args: argparse.Namespace) -> int:
    from selfsup import evaluate
    from selfsup.data import kind_of

    _tune_allocator()
    is_folder = args.data is not None and Path(args.data).is_dir()
    if is_folder and args.root is not None:
        raise UsageError(f"--root: {args.data} is a folder of images already; --root goes with a dataset name")
    cfg, backbone, (channels, size), device, _ = _load_encoder(args.checkpoint)
    dataset = _dataset(cfg, args.data, args.root, args.split, channels, size)
    features = evaluate.extract_features(backbone, dataset.inputs, device=device, progress=True,
                                         kind=kind_of(cfg.data))
    out = Path(args.out) if args.out else _run_dir(args.checkpoint) / "embeddings"
    # Named as evaluate names results: a folder by its own name, so two folders do not share files.
    images = kind_of(cfg.data) in ("images", "image_text")
    label = _data_choice(cfg, args.data, args.root)[2] if images else dataset.name
    prefix = f"{label}_{args.split}"
    files = getattr(dataset, "files", None)
    if args.format == "npy":
        paths = evaluate.save_embeddings(out, features, dataset.labels, prefix=prefix)
        # Which image each row is: the rows of the .npy files in order.
        paths.append(evaluate.save_embedding_table(out / f"{prefix}_rows.csv", features[:, :0], files=files,
                                                   labels=dataset.labels, classes=dataset.classes))
    else:
        paths = [evaluate.save_embedding_table(out / f"{prefix}.{args.format}", features, files=files,
                                               labels=dataset.labels, classes=dataset.classes, fmt=args.format)]
    print(f"{features.shape[0]} embeddings of dimension {features.shape[1]} -> {', '.join(map(str, paths))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from selfsup.config import to_dict
    from selfsup.data import kind_of
    from selfsup.export import FILES, export_encoder

    cfg, encoder, (channels, size), _, _ = _load_encoder(args.checkpoint)
    kind = kind_of(cfg.data)
    if kind not in ("images", "image_text"):
        raise DataError(f"export writes image encoders; {args.checkpoint} encodes {kind} ({cfg.method})")
    out = Path(args.out) if args.out else _run_dir(args.checkpoint) / "export"
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


def _formats(text: str) -> list[str]:
    from selfsup.export import FORMATS

    formats = [f.strip() for f in text.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        raise argparse.ArgumentTypeError(f"expected formats among {', '.join(FORMATS)} separated by commas, "
                                         f"got {text!r}")
    return formats


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

        table = (evaluate.headline_table if args.headlines else evaluate.results_table)(args.runs)
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
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    if recipes.is_dir():
        print("recipes:    " + ", ".join(sorted(str(p.relative_to(recipes.parent)) for p in recipes.glob("*.yaml"))))
    return 0


def _integers(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 0,1,2; got {text!r}") from None


def _percents(text: str) -> list[float]:
    try:
        shares = [float(item.strip().rstrip("%")) / 100 for item in text.split(",")]
    except ValueError:
        shares = []
    if not shares or not all(0 < share <= 1 for share in shares):
        raise argparse.ArgumentTypeError(f"expected percentages in (0, 100] separated by commas, e.g. 1%,10%; "
                                         f"got {text!r}")
    return shares


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description="Self-supervised representation learning.")
    sub = p.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="pretrain an encoder from a YAML recipe")
    pre.add_argument("recipe", nargs="?", help="YAML recipe (recipes/*.yaml), or a checkpoint with --resume")
    pre.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5 optim.lr=0.5")
    pre.add_argument("--resume", nargs="?", const="yes", choices=["yes", "auto"], metavar="auto",
                     help="continue <out_dir>/checkpoints/last.ckpt exactly where it stopped; overrides may "
                          "change train.epochs (the schedules are recomputed) and logging/evaluation keys. "
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
    sw.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine")
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
                                    "on another dataset; finetune: the whole encoder on 1%% / 10%% of the labels "
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
    ev.add_argument("--images", type=int, default=500, help="correspondence: test images (default 500)")
    ev.add_argument("--points", type=int, default=64, help="correspondence: sampled pixels per image (default 64)")
    ev.add_argument("--topk", type=int, default=10, help="propagate: key pixels each pixel's labels come from")
    ev.add_argument("--radius", type=float, default=12, help="propagate: neighbourhood in grid cells (context frames)")
    ev.add_argument("--context", type=int, default=20, help="propagate: previous frames used as keys")
    ev.add_argument("--propagation-temperature", type=float, default=0.05, help="propagate: affinity temperature")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", help="dataset name or labelled folder (default: the one it was trained on)")
    ev.add_argument("--root", help="folder holding the dataset's files (alone, for a run on a named dataset: a "
                                   "labelled folder of images, its results named after the folder)")
    ev.add_argument("--k", type=int, default=200, help="kNN neighbours")
    ev.add_argument("--temperature", type=float, default=0.1, help="kNN vote temperature")
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
    ev.add_argument("--steps", type=int, default=200, help="finetune: optimiser steps of batch 256")
    ev.add_argument("--way", type=int, default=5, help="fewshot: classes per episode")
    ev.add_argument("--shots", type=_integers, default=[1, 5], help="fewshot: support images per class, e.g. 1,5")
    ev.add_argument("--query", type=int, default=15, help="fewshot: query images per class")
    ev.add_argument("--episodes", type=int, default=600, help="fewshot: episodes")
    ev.add_argument("--classes", type=_integers, help="fewshot: only these class indices, e.g. 5,6,7,8,9")
    ev.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10], help="retrieval: cut-offs")
    ev.set_defaults(func=cmd_evaluate)

    em = sub.add_parser("embed", help="write backbone embeddings (.npy) and labels of a dataset")
    em.add_argument("checkpoint")
    em.add_argument("data", nargs="?", help="dataset name or a folder of images (default: the checkpoint's own "
                                            "data; a streamed folder or pack is read batch by batch)")
    em.add_argument("--split", default="test", choices=["train", "test"])
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
    if args.command == "pretrain" and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.command_line = shlex.join(["selfsup", *argv])
    if args.command == "pretrain" and args.recipe and "=" in args.recipe:
        args.overrides.insert(0, args.recipe)  # `selfsup pretrain key=value ...` without a recipe
        args.recipe = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except USAGE_ERRORS as error:
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print(f"selfsup: training diverged: {error}", file=sys.stderr)
        return 3
    except Preempted as error:
        print(f"selfsup: {error} (exit status {Preempted.EXIT_STATUS}: requeue me)", file=sys.stderr)
        return Preempted.EXIT_STATUS
    except RuntimeError as error:
        if os.environ.get("SELFSUP_DEBUG") or not _peer_failed(error):
            raise
        rank = os.environ.get("RANK", "?")
        print(f"selfsup: rank {rank} stops: another rank of this job stopped first ({str(error).splitlines()[0][:160]}); "
              f"the launcher's report names it. The last checkpoint written is whole: continue with --resume",
              file=sys.stderr)
        return 4


def _peer_failed(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process is gone (gloo's and NCCL's words)."""
    text = str(error)
    return any(words in text for words in ("Connection reset by peer", "Connection closed by peer",
                                            "NCCL communicator was aborted", "Broken pipe"))


if __name__ == "__main__":
    sys.exit(main())
