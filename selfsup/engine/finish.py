"""The end of a run: evaluations of the trained encoder, pictures, ``results.json`` and the page.

:func:`finish` runs on rank 0 after training: linear probe, kNN, few-shot episodes and retrieval
on the test split (``evaluate.frozen_evaluations``), the paper's bank kNN for a memory-bank method,
the method's own evaluations (CLIP: zero-shot), the curves, the embedding map, the retrieval grid,
the embeddings, ``results.json`` (schema in :mod:`selfsup.evaluate.report`) and ``report.html``.
:func:`draw_views` draws the views a run trains on (``views.png``).
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from selfsup import data, evaluate
from selfsup.engine import monitor
from selfsup.engine.floor import random_init_floor, seeded_build, with_floor
from selfsup.engine.setup import build_method, say, with_random_weights
from selfsup.nn import eval_mode

if TYPE_CHECKING:
    from selfsup.engine.trainer import Trainer


def commit() -> str | None:
    """The git commit of the selfsup source tree, when it is a checkout (for results.json)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


BANK_KNN_PROTOCOL = ("weighted k-nearest neighbours against the method's memory bank, as InstDisc evaluates (Wu et "
                     "al. 2018, sec. 3.4): the k={k} bank entries (one per training image, as training left them) "
                     "of highest cosine similarity s to the test image's feature vote for their class with weight "
                     "exp(s / {temperature}); top-1 accuracy on the test split")


def bank_knn_entry(bank: tuple[Tensor, nn.Module, float], train_labels: Tensor, test: data.ImageDataset, *,
                   data: str, k: int, device: torch.device) -> dict[str, Any]:
    """The ``bank_knn`` results entry: the paper's kNN over a method's memory bank."""
    features, embedder, temperature = bank
    if len(features) != len(train_labels):
        raise ValueError(f"the memory bank has {len(features)} rows but the training set {len(train_labels)} images")
    test_x = evaluate.extract_features(embedder, test.images, device=device)
    accuracy = evaluate.knn_accuracy(features.float().cpu(), train_labels.cpu(), test_x, test.labels, k=k,
                                     temperature=temperature)
    return {"accuracy": accuracy, "k": k, "temperature": temperature, "data": data,
            "protocol": BANK_KNN_PROTOCOL.format(k=k, temperature=temperature)}


def frozen(trainer: Trainer, encoder: nn.Module, progress: bool = False) -> tuple[dict[str, dict[str, Any]], Tensor, Tensor]:
    """``evaluate.frozen_evaluations`` of ``encoder``'s features of the training and test splits (and
    the features)."""
    cfg, test, kind = trainer.cfg, trainer.test_set, trainer.source.kind
    train_x = evaluate.extract_features(encoder, trainer.source.inputs, device=trainer.fabric.device,
                                        progress=progress, kind=kind)
    test_x = evaluate.extract_features(encoder, test.inputs, device=trainer.fabric.device, kind=kind)
    entries = evaluate.frozen_evaluations(train_x, trainer.train_set.labels, test_x, test.labels, data=cfg.data.name,
                                          linear=cfg.eval.linear, knn=cfg.eval.knn, knn_k=cfg.eval.knn_k,
                                          knn_temperature=cfg.eval.knn_temperature, device=trainer.fabric.device)
    return entries, train_x, test_x


PROJECTED = ("linear", "knn", "collapse")
"""The evaluations ``eval.projection`` repeats on the projection head's output."""


def projection_evaluations(trainer: Trainer, encoder: nn.Module) -> dict[str, dict[str, Any]]:
    """Linear probe, kNN and collapse of the projection head's output, keyed ``<name>_projection``."""
    entries = frozen(trainer, encoder)[0]
    return {f"{name}_projection": {**entries[name], "features": "projection head output (z)"}
            for name in PROJECTED if name in entries}


def random_init_scores(trainer: Trainer, labelled: bool, own: bool) -> dict[str, dict[str, float]]:
    """The floor of every evaluation :func:`finish` makes: the same evaluations of the method as the
    run's seed initialised it, before training (cached, see :mod:`selfsup.engine.floor`)."""
    cfg = trainer.cfg
    build = trainer.build_method
    if cfg.backbone.pretrained:
        # The floor is what the tables call it, the same backbone with random weights, not the downloaded
        # network the run started from; it normalises by the run's statistics (the weights' ImageNet ones).
        encoder = trainer.method.eval_encoder()
        build = functools.partial(build_method, with_random_weights(cfg), **{
            **build.keywords, "mean": encoder.mean.flatten().tolist(), "std": encoder.std.flatten().tolist()})
    fresh = seeded_build(build, cfg.train.seed)
    settings = {"linear": cfg.eval.linear, "knn": cfg.eval.knn, "knn_k": cfg.eval.knn_k,
                "knn_temperature": cfg.eval.knn_temperature, "kind": trainer.source.kind, "data": cfg.data.name}
    data = {"train": trainer.source.dataset, "test": trainer.test_set}
    floor: dict[str, dict[str, float]] = {}
    if labelled:
        floor.update(random_init_floor(fresh.eval_encoder(), lambda encoder: frozen(trainer, encoder)[0],
                                       data=data, settings=settings))
    if labelled and cfg.eval.projection and fresh.projection_encoder() is not None:
        floor.update(random_init_floor(fresh.projection_encoder(), lambda encoder: projection_evaluations(trainer, encoder),
                                       data=data, settings={**settings, "projection": True}))
    if own:
        floor.update(random_init_floor(fresh, lambda method: method.to(trainer.fabric.device).extra_evaluations(
            trainer.test_set, data=cfg.data.name, device=trainer.fabric.device), data=data,
            # the method's arguments too: some change what its evaluations read (colorization's input) while
            # leaving its modules, and so its weights and repr, as they were
            settings={**settings, "extra_evaluations": cfg.method, "method_args": dict(cfg.method_args)}))
    return floor


def kept_checkpoints(trainer: Trainer) -> dict[str, Any]:
    """The checkpoint files the run keeps: last, step-<N> (train.keep_last), best (train.save_best)."""
    folder = trainer.ckpt_path.parent
    kept: dict[str, Any] = {"last": str(trainer.ckpt_path)}
    steps = sorted(folder.glob("step-*.ckpt"), key=lambda p: int(p.stem.removeprefix("step-")))
    if steps:
        kept["steps"] = [str(p) for p in steps]
    if trainer.best is not None and (folder / "best.ckpt").is_file():
        best = dict(trainer.best)
        if best["metric"] == "loss":
            best["value"] = -best["value"]
        kept["best"] = {"path": str(folder / "best.ckpt"), **best}
    return kept


def draw_views(trainer: Trainer, count: int = 8) -> None:
    """``views.png``, drawn when a run starts (and when it ends, for a method that learns its views): a
    few training images (or signal windows) and the views the method gets from them (hand-made, and
    a viewmaker's learned ones)."""
    learned = getattr(trainer.method, "learned_views", None)  # a method that makes views (Viewmaker)
    signals = trainer.source.kind == "sequences"
    if not (trainer.cfg.eval.plots and (trainer.augment is not None or (signals and learned is not None))):
        return

    def draw() -> None:
        images = (trainer.source.inputs[:4] if signals else trainer.source.images[:count]).to(trainer.fabric.device)
        if trainer.augment is not None:
            generator = torch.Generator(images.device).manual_seed(trainer.cfg.train.seed)
            compiled, trainer.augment.compiled = trainer.augment.compiled, False  # 8 images: no compile per view
            try:
                views = trainer.augment(images, generator=generator)  # its own generator: training RNG untouched
            finally:
                trainer.augment.compiled = compiled
            n_global = len(trainer.augment.views)
            names = [f"view {i + 1}" if i < n_global else f"local {i - n_global + 1}" for i in range(len(views))]
        else:
            views, names = [images], ["signal"]
        if learned is not None:
            with eval_mode(trainer.method), torch.random.fork_rng(devices=[] if images.device.type == "cpu"
                                                               else [images.device]):
                torch.manual_seed(trainer.cfg.train.seed)
                views, names = learned(views)
        plot = evaluate.plot_signal_views if signals else evaluate.plot_views
        plot(images, views, trainer.out_dir / "views.png", names=names,
             title=f"{trainer.cfg.method} views of {trainer.cfg.data.name}")

    trainer.on_rank_zero("drawing views.png", draw)


def finish(trainer: Trainer) -> dict[str, float]:
    """Final evaluation and pictures on rank 0, on the test split (read here only): linear probe,
    kNN, few-shot episodes, retrieval (``evaluate.frozen_evaluations``), each with its floor (the same
    evaluation at the run's random initialisation, ``random_init``); curves, embedding map,
    retrieval grid, embeddings, ``results.json`` (schema in ``selfsup.evaluate.report``) and the
    run's page ``report.html``."""
    cfg, out = trainer.cfg, trainer.out_dir
    metrics: dict[str, float] = {}
    if not trainer.is_main:
        return metrics
    if cfg.eval.plots:
        curves = {k: v for k, v in trainer.history.items() if v and k not in ("lr", "images_per_s")}
        evaluate.plot_curves(curves, out / "curves.png", title=f"{cfg.method} on {cfg.data.name}")
    evaluations: dict[str, dict[str, Any]] = {}
    test = trainer.test_set
    labelled = test is not None and test.labels is not None and trainer.train_set.labels is not None
    device = trainer.fabric.device
    if labelled:
        train_images, train_y = trainer.source.inputs, trainer.train_set.labels
        evaluations, train_x, test_x = frozen(trainer, trainer.method.eval_encoder(), progress=cfg.train.progress)
        bank = trainer.method.memory_bank() if cfg.eval.knn else None
        if bank is not None and train_y is not None:
            evaluations["bank_knn"] = bank_knn_entry(bank, train_y, test, data=cfg.data.name, k=cfg.eval.knn_k,
                                                     device=device)
        metrics.update({f"{key}_accuracy": evaluations[key]["accuracy"] for key in ("linear", "knn", "bank_knn")
                        if key in evaluations})
        if cfg.eval.projection:
            projection = trainer.method.projection_encoder()
            if projection is None:
                say(f"eval.projection: {cfg.method} has no projection head to evaluate; left out")
            else:
                evaluations.update(projection_evaluations(trainer, projection))
        if cfg.eval.save_embeddings:
            evaluate.save_embeddings(out, test_x, test.labels, prefix="test_embeddings")
        if cfg.eval.plots:
            evaluate.plot_embedding(test_x, test.labels, out / f"{cfg.eval.embedding_map}.png",
                                    method=cfg.eval.embedding_map, classes=test.classes)
            if trainer.source.kind in ("images", "image_text", "video"):
                evaluate.retrieval_picture(train_images, train_x, train_y, test.images, test_x, test.labels,
                                           out / "retrieval.png", classes=test.classes)
    describe = getattr(trainer.method, "descriptor_encoder", None)  # a dense method: its matches, drawn
    if cfg.eval.plots and describe is not None and test is not None and hasattr(test, "images"):
        from selfsup.evaluate.correspondence import correspondence_pck, plot_matches
        from selfsup.nn import eval_mode

        with eval_mode(describe()):
            pairs = correspondence_pck(describe(), test.images[:4], device=device, keep=4)["pairs"]
        plot_matches(pairs, out / "correspondence.png",
                     title=f"{cfg.method}: predicted matches under known warps (green: within 3 px)")
    own = getattr(trainer.method, "extra_evaluations", None)  # what only this method can measure (CLIP: zero-shot)
    if test is not None and own is not None:
        entries = own(test, data=cfg.data.name, device=device)
        evaluations.update(entries)
        metrics.update({f"{key}_accuracy": entry["accuracy"] for key, entry in entries.items() if "accuracy" in entry})
    if cfg.eval.floor and evaluations:
        with_floor(evaluations, random_init_scores(trainer, labelled, own is not None and test is not None))
    skipped = dict(getattr(trainer.source, "skipped", {}) or {})
    if test is not None:
        skipped.update(getattr(test, "skipped", {}) or {})
    if skipped:
        shown = "; ".join(f"{path} ({why})" for path, why in list(skipped.items())[:5])
        note = getattr(trainer.source, "skip_note", "")  # what became of a skipped file's place
        say(f"skipped {len(skipped)} unreadable file(s){', ' + note if note else ''}: {shown}"
            + (" ..." if len(skipped) > 5 else ""))
    rates = [rate for _, rate in trainer.history.get("images_per_s", [])[1:]]  # the first window warms up
    results = {"name": cfg.name, "method": cfg.method, "data": cfg.data.name, "backbone": cfg.backbone.name,
               "epochs": round(trainer.max_steps / trainer.steps_per_epoch, 4) if trainer.time_plan else cfg.train.epochs,
               "batch_size": cfg.train.batch_size, "steps": trainer.max_steps,
               **({"time_plan": trainer.time_plan} if trainer.time_plan else {}),
               **({"compile_plan": trainer.compile_plan} if trainer.compile_plan else {}),
               "precision": trainer.precision, "device": trainer.fabric.device.type,
               "devices": trainer.fabric.world_size, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "command": trainer.command, "commit": commit(),
               "wall_time_s": round(time.perf_counter() - trainer.started, 1),
               "pretrain_time_s": round(trainer.train_seconds, 1),
               "images_per_s": round(float(np.median(rates)), 1) if rates else None,
               "checkpoints": kept_checkpoints(trainer),
               "training": monitor.training_summary(trainer.history),
               **({"skipped_files": [{"path": p, "reason": r} for p, r in skipped.items()]} if skipped else {}),
               **metrics, "evaluations": evaluations}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if cfg.eval.plots:
        evaluate.write_report(out)  # report.html; `selfsup report` redraws it after more evaluations
    return metrics
