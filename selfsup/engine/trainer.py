"""The pretraining loop, written out plainly on Lightning Fabric.

A :class:`Trainer` is put together from the steps of :mod:`selfsup.engine.setup`, read top to
bottom: Fabric (devices, precision, DDP), the data source and the labelled test split, the
method, global BN and memory format, the augmentation, the optimiser and its
:class:`~selfsup.engine.optim.Schedule`, then a resume from a checkpoint
(:mod:`selfsup.engine.state`) or a time plan (:mod:`selfsup.engine.monitor`).

One step of :meth:`Trainer.fit`: the data source's batch of (epoch, position, rank), the views
from one batched augmentation call, ``training_step`` under autocast, a NaN/Inf check that
every rank takes together, backward, ``after_backward``, optional clipping, the optimiser
step, ``on_step_end``. Around it: atomic checkpoints, the kNN monitor, CSV/TensorBoard logs and
a progress bar; :func:`pretrain` ends with :func:`selfsup.engine.finish.finish` (evaluations,
pictures, results.json, the report page).
"""

from __future__ import annotations

import functools
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from selfsup import augment, data, distributed, evaluate, losses
from selfsup.augment import _triton
from selfsup.config import Config, check_resume, from_dict, parse_duration, to_dict
from selfsup.engine import checkpoint, grad_cache, monitor, state
from selfsup.engine.finish import finish
from selfsup.engine.logs import MetricsCSV
from selfsup.engine.optim import Schedule, build_optimizer
from selfsup.engine.setup import (build_augmentation, build_method, check_view_sizes, load_data, prepare_method, say,
                                  start_fabric)
from selfsup.errors import ConfigError, NonFiniteLossError, Preempted
from selfsup.methods import METHODS, Batch, Progress
from selfsup.methods.base import splits_into_embeddings
from selfsup.nn import eval_mode


@dataclass
class RunResult:
    """What a finished run leaves behind."""

    out_dir: Path
    checkpoint: Path
    history: dict[str, list[tuple[int, float]]]
    metrics: dict[str, float] = field(default_factory=dict)
    main: bool = True
    """Whether this process is rank 0 (the one that evaluated and wrote the files)."""


class Trainer:
    """Runs one pretraining job described by a :class:`Config`. Use :func:`pretrain`."""

    def __init__(self, cfg: Config, resume_state: dict[str, Any] | None = None, command: str | None = None) -> None:
        self.started = time.perf_counter()
        self.cfg, self.command = cfg, command
        self.train_seconds = 0.0
        self.fit_started = self.started
        t = cfg.train
        self.out_dir = Path(t.out_dir)
        self.ckpt_path = self.out_dir / "checkpoints" / "last.ckpt"
        run_ids = (resume_state or {}).get("run", {}).get("loggers")
        self.fabric, self.precision, precision_reason = start_fabric(t, self.out_dir, cfg.name, to_dict(cfg), run_ids)
        fabric = self.fabric
        self.is_main = fabric.global_rank == 0
        self.say(f"precision {self.precision}: {precision_reason}")

        fabric.seed_everything(t.seed, verbose=False)  # identical initial weights on every rank
        self.source, self.test_set = load_data(cfg, fabric, progress=t.progress and self.is_main)
        self.train_set = self.source.dataset
        self.steps_per_epoch = self.source.steps_per_epoch()
        # What images/s counts: images, signal windows, or a graph's nodes (its batch is the whole graph).
        self.items_per_step = len(self.source) if self.source.kind == "graph" else t.batch_size
        self.max_steps = max(1, math.ceil(t.epochs * self.steps_per_epoch))
        if t.time_limit is not None and resume_state is not None:  # the plan of the first start, not a new one
            self.max_steps = int(resume_state.get("run", {}).get("max_steps", self.max_steps))

        cls = METHODS.get(cfg.method)
        kinds = getattr(cls, "data_kinds", (cls.data_kind,)) if cls is not None else (self.source.kind,)
        kind = kinds[0]
        if self.source.kind not in kinds:
            hint = ("; pair images with captions: data.captions=templates (class-name prompts) or "
                    "data.name=captions with data.captions=<file>") if kind == "image_text" else ""
            raise ConfigError(f"method {cfg.method} learns from {kind}, but data.name={cfg.data.name} "
                              f"gives {self.source.kind}{hint}")
        # A fresh method as this run builds it; under the run's seed (set here) it has the run's initial
        # weights, which the final evaluation's floor rebuilds (selfsup.engine.floor).
        self.build_method = functools.partial(
            build_method, cfg, in_channels=self.train_set.channels, image_size=self.train_set.size,
            mean=self.train_set.mean().tolist(), std=self.train_set.std().tolist(), num_samples=len(self.train_set),
            graph=getattr(self.source, "graph", None), captions=getattr(self.source, "captions", None))
        torch.manual_seed(t.seed)
        method = self.build_method()
        if getattr(method, "needs_labels", False) and self.train_set.labels is None:
            raise ConfigError(f"method {cfg.method} learns from class labels, but data.name={cfg.data.name} has "
                              f"none; give it labelled data (a folder with one subfolder per class) or choose a "
                              f"self-supervised method")
        if t.micro_batch_size and not splits_into_embeddings(method):
            raise ConfigError(f"train.micro_batch_size: {cfg.method} does not split into per-image embeddings and a "
                              f"batch loss, which gradient caching needs; methods that do: "
                              f"{', '.join(name for name, cls in METHODS.items() if splits_into_embeddings(cls))}")
        if self.source.kind == "video":  # which frames of a video a clip holds is the method's choice
            self.source.clip_times = method.clip_times
            self.source.clip_views = getattr(method, "clip_views", 1)  # synchronised views per clip
        self.method = prepare_method(method, t, fabric)
        self.augment = build_augmentation(self.method, cfg.augment, self.train_set.size)
        # No augmentation, or views without a random crop (pretext tasks' "flip", "none"), take a streamed
        # batch's centre, the square evaluation sees, rather than the whole stored image with its 15% margin.
        self.center_first = isinstance(self.source, data.StreamedImages) and (
            self.augment is None or all(view.scale is None for view in self.augment.output_views))
        check_view_sizes(self.method.backbone, self.augment, self.train_set.channels)
        if t.fused_views and self.augment is not None:
            if not _triton.available() or not (fabric.device.type == "cuda" or _triton.interpreted()):
                raise ConfigError("train.fused_views: needs a CUDA GPU and Triton (torch's CUDA wheels bring it); "
                                  f"this run is on {fabric.device.type} with Triton "
                                  f"{'available' if _triton.available() else 'missing'}")
            self.augment.fused = True
            self.augment.fused_draws = t.fused_draws
            side = self.train_set.size
            large = sorted({view.size for view in self.augment.output_views if not _triton.fits(side, side, view.size)})
            if large and fabric.global_rank == 0:
                say(f"train.fused_views: images of {side}x{side} or views of {', '.join(f'{h}x{w}' for h, w in large)} "
                    f"exceed the kernel's {_triton.MAX_SIDE} pixels a side; those views take the unfused path")
        elif t.fused_draws:
            raise ConfigError("train.fused_draws: draws in the fused kernel, which needs train.fused_views=true")
        if t.compile:  # after the size check, which would otherwise compile for each view size
            self.method.backbone.net.compile()
            if self.augment is not None:  # RGB views on a CPU keep the C kernel, the faster there
                self.augment.compiled = True

        base_lr = cfg.optim.lr * t.batch_size / 256
        optimizer = build_optimizer(self.method, cfg.optim, base_lr)
        self.schedule = Schedule.build(cfg.optim, base_lr, self.max_steps, self.steps_per_epoch)
        self.model, self.optimizer = fabric.setup(self.method, optimizer)

        self.start_step = 0
        self.history: dict[str, list[tuple[int, float]]] = {"loss": [], "knn": [], "lr": [], "images_per_s": []}
        # The loss summed since the last logged step (a tensor, read only when logged or saved, so
        # that no step waits for the device) and how many steps that is: checkpointed, so a resumed
        # run logs the same means as an uninterrupted one.
        self.window_loss, self.window_steps = torch.zeros((), device=fabric.device), 0
        self.time_plan: dict[str, float] = {}
        self.stop_requested = self.stopping = False  # SIGTERM on this rank / on any rank (see _catch_sigterm)
        self.best: dict[str, Any] | None = None  # train.save_best: {"metric", "value", "step"} of best.ckpt
        if t.save_best == "knn" and not t.knn_every:
            raise ConfigError("train.save_best=knn keeps the checkpoint of the best kNN monitor: set train.knn_every")
        if resume_state is not None:
            state.restore(self, resume_state)
        else:
            torch.manual_seed(t.seed + 7919 * fabric.global_rank)  # different views on every rank
            if t.time_limit is not None:
                monitor.plan_time_limit(self, parse_duration(t.time_limit))
        self.metrics_log = None
        if self.is_main and "csv" in t.loggers:
            log_path = self.out_dir / "logs" / "metrics.csv"
            self.metrics_log = MetricsCSV(log_path, self.start_step if resume_state is not None else None)

    def say(self, message: str) -> None:
        """Print a ``selfsup:`` line on rank 0 (standard error)."""
        if self.is_main:
            say(message)

    def on_rank_zero(self, what: str, work: Callable[[], Any]) -> Any:
        """``work()`` on rank 0; if it raises there, every rank raises, so no rank waits forever
        in a collective the failed rank never reaches."""
        result, error = None, None
        if self.is_main:
            try:
                result = work()
            except Exception as caught:  # re-raised below, on every rank
                error = caught
        if not distributed.all_true(error is None, self.fabric.device):
            if error is not None:
                raise error
            raise RuntimeError(f"rank 0 failed while {what}; its error is in its output")
        return result

    # -- one step --------------------------------------------------------------------------
    def make_batch(self, epoch: int, position: int) -> Batch:
        """The views of this rank's share of global batch ``position`` of ``epoch``."""
        raw = self.source.batch(epoch, position, self.fabric.global_rank)
        if self.source.kind not in ("images", "image_text"):  # signals, node features: float already
            return Batch([raw.images], raw.index, raw.labels, raw.extra)
        images = data.stream.eval_view(raw.images, self.train_set.view, self.train_set.size) if self.center_first else raw.images
        if self.augment is None:  # the images as they are, one float view
            return Batch([augment.to_float(images)], raw.index, raw.labels, raw.extra)
        extra = raw.extra
        with torch.no_grad():
            if getattr(self.method, "view_geometry", False):  # where each view came from, for dense matching
                views, boxes, flips = self.augment.views_and_geometry(images)
                extra = {**(extra or {}), "view_boxes": boxes, "view_flips": flips}
            else:
                views = self.augment(images)
        if self.cfg.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return Batch(views, raw.index, raw.labels, extra)

    def forward(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        """``training_step`` through the Fabric/DDP wrapper; every rank stops together on NaN/Inf.

        The losses' own NaN checks are off here: a loss that raised on one rank would skip the
        collectives (gathered negatives, centres, queues) the other ranks wait in. A NaN input
        gives a NaN loss, and the ranks agree on the loss with one all-reduce.
        """
        with losses.finite_checks(False):
            outputs = self.model(batch, progress)
        self.check_finite(outputs["loss"], progress)
        return outputs

    def check_finite(self, loss: Tensor, progress: Progress) -> None:
        """Raise :class:`NonFiniteLossError` on every rank when the loss of any rank is NaN/Inf. The same
        all-reduce tells every rank whether any was asked to stop (SIGTERM), so they stop together."""
        loss = loss.detach()
        finite = bool(torch.isfinite(loss))
        nonfinite_anywhere, stop_anywhere = distributed.any_of([not finite, self.stop_requested], self.fabric.device)
        self.stopping = self.stopping or stop_anywhere
        if nonfinite_anywhere:
            where = f"the loss is {loss.item()}" if not finite else "another rank's loss is NaN/Inf"
            raise NonFiniteLossError(f"{self.cfg.method}: {where} at step {progress.step} (epoch "
                                     f"{progress.epoch:.2f}); {state.kept(self)}. {state.hint(self)}")

    def draw_views(self, count: int = 8) -> None:
        """``views.png``: a few training images (or signal windows) and the views the method gets from
        them (hand-made, and a viewmaker's learned ones)."""
        learned = getattr(self.method, "learned_views", None)  # a method that makes views (Viewmaker)
        signals = self.source.kind == "sequences"
        if not (self.cfg.eval.plots and (self.augment is not None or (signals and learned is not None))):
            return

        def draw() -> None:
            images = (self.source.inputs[:4] if signals else self.source.images[:count]).to(self.fabric.device)
            if self.augment is not None:
                generator = torch.Generator(images.device).manual_seed(self.cfg.train.seed)
                compiled, self.augment.compiled = self.augment.compiled, False  # 8 images: no compile per view
                try:
                    views = self.augment(images, generator=generator)  # its own generator: training RNG untouched
                finally:
                    self.augment.compiled = compiled
                n_global = len(self.augment.views)
                names = [f"view {i + 1}" if i < n_global else f"local {i - n_global + 1}" for i in range(len(views))]
            else:
                views, names = [images], ["signal"]
            if learned is not None:
                with eval_mode(self.method), torch.random.fork_rng(devices=[] if images.device.type == "cpu"
                                                                   else [images.device]):
                    torch.manual_seed(self.cfg.train.seed)
                    views, names = learned(views)
            draw_views = evaluate.plot_signal_views if signals else evaluate.plot_views
            draw_views(images, views, self.out_dir / "views.png", names=names,
                       title=f"{self.cfg.method} views of {self.cfg.data.name}")

        self.on_rank_zero("drawing views.png", draw)

    def fit(self) -> None:
        """Train from ``start_step`` to ``max_steps``: log, monitor and checkpoint along the way."""
        cfg, t, fabric = self.cfg, self.cfg.train, self.fabric
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_dict(cfg)))
        if self.start_step == 0:
            self.draw_views()
            for logger in fabric.loggers:
                if logger.name == "mlflow":  # W&B took the configuration when its run started
                    logger.log_hyperparams(to_dict(cfg))
        self.fit_started = time.perf_counter()
        bar = tqdm(total=self.max_steps, initial=self.start_step, desc=f"{cfg.method} {cfg.name}",
                   unit="step", disable=not (t.progress and self.is_main), dynamic_ncols=True)
        window_start = time.perf_counter()
        status = "failed"
        previous = self._catch_sigterm()
        try:
            for step in range(self.start_step, self.max_steps):
                outputs, lr = self.train_step(step)
                self.window_loss += outputs["loss"].detach()
                self.window_steps += 1
                done = step + 1
                if done % t.log_every == 0 or done == self.max_steps:
                    mean_loss = float(fabric.all_reduce(self.window_loss / self.window_steps, reduce_op="mean"))
                    images_per_s = self.window_steps * self.items_per_step / (time.perf_counter() - window_start)
                    metrics = {"loss": mean_loss, "lr": lr, "images_per_s": images_per_s,
                               "epoch": done / self.steps_per_epoch}
                    metrics.update({k: float(v) for k, v in outputs.items() if k != "loss"})
                    self.log(metrics, done)
                    self.history["loss"].append((done, mean_loss))
                    self.history["lr"].append((done, lr))
                    self.history["images_per_s"].append((done, images_per_s))
                    if "grad_norm" in metrics:
                        self.history.setdefault("grad_norm", []).append((done, metrics["grad_norm"]))
                    for key in getattr(self.method, "curves", ()):
                        if key in metrics:
                            self.history.setdefault(key, []).append((done, metrics[key]))
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:,.0f}", lr=f"{lr:.3g}",
                                    refresh=False)
                    bar.update(done - bar.n)
                    window_start = time.perf_counter()
                    self.window_loss.zero_()
                    self.window_steps = 0
                epoch_end = done % self.steps_per_epoch == 0
                if epoch_end and t.knn_every and (done // self.steps_per_epoch) % t.knn_every == 0:
                    accuracy = monitor.knn_monitor(self)
                    if accuracy is not None:
                        self.log({"knn_accuracy": accuracy}, done)
                        self.history["knn"].append((done, accuracy))
                        if t.progress:
                            self.say(f"epoch {done // self.steps_per_epoch}: kNN accuracy {accuracy:.4f}")
                if done % t.checkpoint_every == 0 or epoch_end or done == self.max_steps or self.stopping:
                    state.save(self, done)
                if self.stopping and done < self.max_steps:
                    status = "preempted"
                    raise Preempted(f"stopped by SIGTERM after step {done} of {self.max_steps} (epoch "
                                    f"{done / self.steps_per_epoch:.2f}); every rank finished the step and "
                                    f"{self.ckpt_path} holds it: continue with --resume")
            state.gather_skipped(self)
            if getattr(self.method, "learned_views", None) is not None:
                self.draw_views()  # the views it learned, at the end as at the start
            status = "success"
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.train_seconds += time.perf_counter() - self.fit_started
            bar.close()
            close = getattr(self.source, "close", None)
            if close is not None:  # a streamed source's workers stop before evaluation needs the cores
                close()
            for logger in fabric.loggers:
                logger.finalize(status)

    def _catch_sigterm(self):
        """While fitting, SIGTERM asks the run to stop after the current step (every rank together,
        with a checkpoint): what SLURM and most schedulers send before preempting a job. The previous
        handler is put back when fit returns; None when not in the main thread (no handler set)."""
        if not self.cfg.train.stop_on_sigterm or threading.current_thread() is not threading.main_thread():
            return None

        def ask_to_stop(signum, frame) -> None:
            self.stop_requested = True

        return signal.signal(signal.SIGTERM, ask_to_stop)

    def train_step(self, step: int) -> tuple[dict[str, Tensor], float]:
        """One optimisation step (the method's outputs and the learning rate it used)."""
        progress = Progress(step, self.max_steps, self.steps_per_epoch)
        batch = self.make_batch(*divmod(step, self.steps_per_epoch))
        lr = self.schedule.apply(self.optimizer, step)
        if self.cfg.train.micro_batch_size:  # the whole batch's gradient, one micro-batch of activations at a time
            outputs = grad_cache.cached_step(self, batch, progress)
        else:
            outputs = self.forward(batch, progress)
            self.fabric.backward(outputs["loss"])
        self.fabric.strategy.precision.unscale_gradients(self.optimizer.optimizer)  # a no-op without fp16
        self.method.after_backward(progress)
        if self.cfg.optim.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.grad_clip)
        elif self.cfg.train.log_grad_norm:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.method.parameters() if p.grad is not None])
        if self.cfg.train.log_grad_norm:  # before clipping: what the step would have been
            outputs = {**outputs, "grad_norm": norm.detach()}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_step_end(progress)
        return outputs, lr

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Write metrics to TensorBoard and (rank 0) ``logs/metrics.csv``."""
        self.fabric.log_dict(metrics, step=step)
        if self.metrics_log is not None:
            self.metrics_log.log(metrics, step)


RUN_FILES = ("results.json", "report.html", "config.yaml", "checkpoints", "evaluations", "logs", "tensorboard",
             "curves.png", "views.png", "umap.png", "tsne.png", "retrieval.png", "correspondence.png",
             "test_embeddings.npy", "test_embeddings_labels.npy", "embeddings", "export")
"""What a run writes in its folder (what ``overwrite`` replaces)."""


def _holds_a_run(folder: Path) -> str | None:
    """What shows that ``folder`` holds a run (None: nothing)."""
    if (folder / "checkpoints" / "last.ckpt").is_file():
        return "a checkpoint"
    if (folder / "results.json").is_file():
        return "a finished run's results.json"
    return None


def pretrain(cfg: Config, *, resume: str | Path | bool = False, overwrite: bool = False,
             command: str | None = None) -> RunResult:
    """Pretrain ``cfg.method`` on ``cfg.data``, evaluate, and return where everything went.

    Args:
        cfg: the run configuration (see :mod:`selfsup.config`).
        resume: ``True`` to continue from ``<out_dir>/checkpoints/last.ckpt``, or a checkpoint
            path. The run continues exactly as if it had never stopped (same data order, same
            random views, same weights). ``cfg`` must equal the checkpoint's configuration except
            for the keys in ``selfsup.config.RESUMABLE`` (``train.epochs`` extends or shortens the
            run; the schedules are then recomputed over the new length). ``"auto"``: continue
            when that checkpoint exists, else start (a requeued cluster job).
        overwrite: start over in an ``out_dir`` that holds another run, replacing its files;
            without it (and without ``resume``) such a folder is refused.
        command: the command line that started the run, recorded in ``results.json``.

    Raises:
        ConfigError: ``cfg`` changes a setting a resumed run cannot change, or ``out_dir`` holds a run.
        NonFiniteLossError: the loss or the weights became NaN/Inf (all ranks stop together).
        Preempted: SIGTERM stopped the run after a checkpoint (see ``train.stop_on_sigterm``).
    """
    out = Path(cfg.train.out_dir)
    main_process = distributed.launch_rank() == 0  # the process group may not have started yet
    if resume == "auto":
        resume = (out / "checkpoints" / "last.ckpt").is_file()
        if main_process:
            say(f"--resume auto: {'continuing the checkpoint in' if resume else 'no checkpoint yet in'} {out}")
    found = _holds_a_run(out)
    if not resume and found:
        if not overwrite:
            raise ConfigError(f"train.out_dir: {out} holds another run ({found}); continue it with --resume, start "
                              f"it over with --overwrite, or give this run another name (name=... or "
                              f"train.out_dir=...)")
        if main_process:  # the other ranks never read these files
            say(f"--overwrite: replacing the run in {out}")
            for name in RUN_FILES:
                target = out / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    state = None
    if resume:
        path = Path(cfg.train.out_dir) / "checkpoints" / "last.ckpt" if resume is True else Path(resume)
        state = checkpoint.load(path)
        for key, before, after in check_resume(from_dict(state["config"]), cfg):
            if distributed.rank() == 0:
                say(f"resume changes {key}: {before!r} -> {after!r}")
    trainer = Trainer(cfg, state, command)
    trainer.fit()
    metrics = finish(trainer)
    return RunResult(trainer.out_dir, trainer.ckpt_path, trainer.history, metrics, main=trainer.is_main)
