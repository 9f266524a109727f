"""What the commands share: the checkpoint loaded as encoder or method, the data an evaluation reads, where
results go and how they are printed."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from selfsup.errors import ConfigError, DataError


def tune_allocator() -> None:
    """Keep freed memory in this process (the command line's one process-wide setting), and say so."""
    from selfsup.engine import tune_allocator as keep_freed_memory

    if keep_freed_memory():
        print("selfsup: keeping freed memory in this process (glibc malloc thresholds raised; "
              "SELFSUP_MALLOC=default keeps glibc's)", file=sys.stderr)


def close_process_group() -> None:
    """Under DDP, end this rank's process group before the interpreter exits: a rank whose gloo or NCCL
    threads are still running at exit can abort ("terminate called without an active exception") after
    the run has finished, and torchrun then reports the job failed. No collective follows the run."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def load_encoder(checkpoint_path: str):
    """The checkpoint's configuration, its method's eval encoder (on the best device), and the
    factory of a freshly initialised encoder of the same architecture and normalisation."""
    cfg, method, (channels, size), device, build = load_method(checkpoint_path)
    encoder = method.eval_encoder()
    mean, std = encoder.mean.flatten().tolist(), encoder.std.flatten().tolist()
    return cfg, encoder.to(device).eval(), (channels, size), device, lambda: build(mean, std).eval_encoder()


def load_method(checkpoint_path: str):
    """The checkpoint's configuration, its whole method with the saved weights (on the CPU), the input
    shape, the best device, and ``build(mean, std)`` of a fresh method of the same architecture."""
    import torch

    from selfsup.config import from_dict, validate
    from selfsup.data import graph_from_config, kind_of
    from selfsup.engine import build_method, load_checkpoint
    from selfsup.engine.setup import with_random_weights
    from selfsup.methods import METHODS

    state = load_checkpoint(checkpoint_path)
    try:
        cfg = from_dict(state["config"])
        validate(cfg)
        if cfg.method not in METHODS:
            raise ConfigError(f"method {cfg.method!r} is not one this selfsup knows")
        channels, size = state["data"]["channels"], state["data"]["size"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (channels, size)):
            raise ConfigError(f"data channels and size must be whole numbers > 0, got {channels!r}, {size!r}")
    except (ConfigError, KeyError, TypeError) as error:
        raise DataError(f"checkpoint {checkpoint_path}: the run it records does not read "
                        f"({type(error).__name__}: {error}); was it written by another version?") from None

    graph = graph_from_config(cfg.data) if kind_of(cfg.data) == "graph" else None

    def builder(cfg):
        # Built without downloading pretrained weights (the checkpoint's replace them; a machine without a network
        # can read it), and so ``build`` is the same architecture at random initialisation: the floor, and the
        # fine-tuning's "scratch" network.
        frame = with_random_weights(cfg)

        def build(mean, std):
            return build_method(frame, in_channels=channels, image_size=size, mean=mean, std=std,
                                num_samples=state["data"].get("num_train"), graph=graph)
        return build

    def loaded(cfg):
        build = builder(cfg)
        method = build([0.0] * channels, [1.0] * channels)  # placeholders: the statistics are restored buffers
        method.load_state_dict(state["model"])
        return method, build

    try:
        method, build = loaded(cfg)
    except RuntimeError as error:
        # A checkpoint from before a method argument existed reads with the value that built it then.
        legacy = {key: value for key, value in getattr(METHODS[cfg.method], "legacy_args", {}).items()
                  if key not in cfg.method_args}
        try:
            if not legacy:
                raise error
            cfg = replace(cfg, method_args={**cfg.method_args, **legacy})
            method, build = loaded(cfg)
            say = ", ".join(f"{key}={value}" for key, value in legacy.items())
            print(f"selfsup: {checkpoint_path} predates method_args.{say.split('=')[0]}: read with {say}",
                  file=sys.stderr)
        except RuntimeError:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__
            raise DataError(f"checkpoint {checkpoint_path} does not fit {cfg.method} as this selfsup builds it "
                            f"({detail}); was it written by another version?") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return cfg, method, (channels, size), device, build


def same_folder(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


ROOTED = ("folder", "packed", "webdataset")


"""Datasets that are their root: another root is other data."""


def data_choice(cfg, name: str | None, root: str | None) -> tuple[str, str | None, str, bool]:
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
    own = name == d.name and (name not in ROOTED or same_folder(root, d.root))
    return name, root, d.name if own else (Path(root).name if name in ROOTED else name), own


def run_train_split(cfg, root: str | None, channels: int, size: int):
    """The run's own training split as the run had it: the engine's seeded ``data.max_samples`` subset."""
    from dataclasses import replace

    from selfsup.engine.sources import load_datasets

    data = replace(cfg.data, root=root, size=size, channels=channels)
    return load_datasets(replace(cfg, data=data), progress=False)[0]


def dataset(cfg, name: str | None, root: str | None, split: str, channels: int, size: int, *, as_run: bool = False):
    """A split of ``name`` (or a folder), converted to the checkpoint's channels and size; for a
    sequence checkpoint, the evaluation windows of a WAV folder (the checkpoint's, or ``name``/``root``).
    ``as_run``: the run's own training split is its ``data.max_samples`` subset, as the run's evaluations
    probed it, so that ``evaluate`` reproduces them."""
    from selfsup import data

    kind = data.kind_of(cfg.data)
    if kind == "graph":  # the graph the checkpoint's encoder embeds
        if (name is not None and name != cfg.data.name) or (root is not None and not same_folder(root, cfg.data.root)):
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
        images = (run_train_split(cfg, d.root, channels, size) if subset else
                  data.load(d.name, split, d.root, size=size, channels=channels))
        return data.from_templates(images, split, held_out=d.held_out_classes)

    name, root, _, own = data_choice(cfg, name, root)
    if own and as_run and split == "train" and cfg.data.max_samples is not None:
        return run_train_split(cfg, root, channels, size)
    if own and data.is_streamed(cfg.data):  # the run's own eval view, streamed
        from dataclasses import replace

        return data.streamed_split(replace(cfg.data, root=root), split)
    return data.load(name, split, root, size=size, channels=channels)


def run_dir(checkpoint: str) -> Path:
    """``<run>`` for ``<run>/checkpoints/last.ckpt``; for a checkpoint anywhere else, its own folder."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def evaluations_dir(checkpoint: str) -> Path:
    """``<run>/evaluations`` for ``<run>/checkpoints/last.ckpt``, else a folder beside the checkpoint."""
    return run_dir(checkpoint) / "evaluations"


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def summary(key: str, entry: dict) -> str:
    if "fractions" in entry:
        return ", ".join(f"{100 * float(f):g}% labels {percent(r['mean'])} ± {percent(r['std'] or 0)} (scratch "
                         f"{percent(r['scratch_mean'])} ± {percent(r['scratch_std'] or 0)})"
                         for f, r in entry["fractions"].items())
    floor = f" (random init: {summary(key, entry['random_init'])})" if entry.get("random_init") else ""
    if "ci95" in entry:
        episodes = f", {entry['episodes']} episodes" if "episodes" in entry else ""
        return f"{percent(entry['accuracy'])} ± {percent(entry['ci95'])} (95% CI{episodes}){floor}"
    if "j_and_f" in entry or "pck@0.1" in entry:
        parts = [f"J&F {entry['j_and_f']:.4f} (J {entry['j']:.4f}, F {entry['f']:.4f})"] if "j_and_f" in entry else []
        parts += [f"PCK@{alpha} {percent(entry[f'pck@{alpha}'])}" for alpha in (0.1, 0.2) if f"pck@{alpha}" in entry]
        return ", ".join(parts) + floor
    if "tau" in entry:
        views = (f", cross-view alignment tau {entry['alignment_tau']:.4f} (error {entry['alignment_error']:.4f})"
                 if "alignment_tau" in entry else "")
        views += (f", task alignment tau {entry['task_alignment_tau']:.4f} (error {entry['task_alignment_error']:.4f})"
                  if "task_alignment_tau" in entry else "")
        return f"temporal-order tau {entry['tau']:.4f}, same-video@1 {percent(entry['same_video@1'])}{views}{floor}"
    scores = {k: v for k, v in entry.items() if k in ("accuracy", "linear", "knn", "held_out_accuracy") or "@" in k}
    return ", ".join(f"{'' if k == 'accuracy' else k + ' '}{percent(v)}" for k, v in scores.items()) + floor


def write_entries(checkpoint: str, entries: dict, data: str) -> None:
    folder = evaluations_dir(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    for key, entry in entries.items():
        path = folder / f"{key}.json"
        path.write_text(json.dumps(entry, indent=2) + "\n")
        print(f"{key}: {summary(key, entry)} on {data} -> {path}")
