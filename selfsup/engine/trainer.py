"""The pretraining loop, written out plainly on Lightning Fabric.

A :class:`Trainer` is put together from the steps of :mod:`selfsup.engine.setup` and
:mod:`selfsup.engine.sources`, read top to bottom: Fabric (devices, precision, DDP), the data source and the labelled test split, the
method, global BN and memory format, the augmentation, the optimiser and its
:class:`~selfsup.engine.optim.Schedule`, then a resume from a checkpoint
(:mod:`selfsup.engine.state`) or a time plan (:mod:`selfsup.engine.monitor`).

One step of :meth:`Trainer.fit`: the data source's batch of (epoch, position, rank), the views
from one batched augmentation call, ``training_step`` under autocast, a NaN/Inf check that
every rank takes together, backward, ``after_backward``, optional clipping, the optimiser
step, ``on_step_end``. Around it: atomic checkpoints, the kNN monitor, CSV/TensorBoard logs and
a progress bar. :func:`selfsup.engine.run.pretrain` builds it, fits it and ends with
:func:`selfsup.engine.finish.finish` (evaluations, pictures, results.json, the report page).
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from selfsup import augment, data, distributed, losses
from selfsup.config import Config, parse_duration, to_dict
from selfsup.engine import grad_cache, monitor, state
from selfsup.engine.logs import MetricsCSV
from selfsup.engine.optim import Schedule, build_optimizer
from selfsup.engine.finish import draw_views
from selfsup.engine.setup import (build_augmentation, build_method, check_data_kind, check_method, check_view_sizes,
                                  compile_for_speed, configure_speed, prepare_method, say, start_fabric)
from selfsup.engine.sources import load_data
from selfsup.errors import ConfigError, NonFiniteLossError, Preempted
from selfsup.methods import Batch, Progress


class Trainer:
    """Runs one pretraining job described by a :class:`Config`. Use :func:`selfsup.engine.run.pretrain`."""

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

        check_data_kind(cfg, self.source)
        # A fresh method as this run builds it; under the run's seed (set here) it has the run's initial
        # weights, which the final evaluation's floor rebuilds (selfsup.engine.floor).
        self.build_method = functools.partial(
            build_method, cfg, in_channels=self.train_set.channels, image_size=self.train_set.size,
            mean=self.train_set.mean().tolist(), std=self.train_set.std().tolist(), num_samples=len(self.train_set),
            graph=getattr(self.source, "graph", None), captions=getattr(self.source, "captions", None))
        torch.manual_seed(t.seed)
        method = self.build_method()
        check_method(cfg, method, self.train_set)
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
        configure_speed(t, fabric, self.method, self.augment, self.train_set.size)

        base_lr = cfg.optim.lr * t.batch_size / 256
        optimizer = build_optimizer(self.method, cfg.optim, base_lr)
        self.schedule = Schedule.build(cfg.optim, base_lr, self.max_steps, self.steps_per_epoch)
        if t.time_limit is None and (note := self.schedule.warmup_note()):  # a time limit plans it anew
            self.say(note)
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
        if t.save_best == "knn" and (not t.knn_every or self.train_set.labels is None):
            raise ConfigError("train.save_best=knn keeps the checkpoint of the best kNN monitor: " + (
                "set train.knn_every" if not t.knn_every else "the data has no labels for one; use train.save_best=loss"))
        self.compile_plan: dict[str, Any] = {}  # train.compile unset: whether this run compiles, and why
        if resume_state is not None:
            state.restore(self, resume_state)
            if t.compile is None and self.compile_plan.get("compile"):  # as the first start decided
                compile_for_speed(self.method, self.augment)
            elif t.compile is not None and self.compile_plan:  # an explicit choice on resuming wins: say so
                self.compile_plan = {**self.compile_plan, "compile": t.compile, "reason": (
                    f"{self.compile_plan['reason']}; resumed with train.compile={str(t.compile).lower()}, which decided")}
        else:
            torch.manual_seed(t.seed + 7919 * fabric.global_rank)  # different views on every rank
            if t.compile is None and monitor.plan_compile(self):  # before the time plan, which then times it
                compile_for_speed(self.method, self.augment)
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

    def fit(self) -> None:
        """Train from ``start_step`` to ``max_steps``: log, monitor and checkpoint along the way."""
        cfg, t, fabric = self.cfg, self.cfg.train, self.fabric
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_dict(cfg)))
        if self.start_step == 0:
            draw_views(self)
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
                draw_views(self)  # the views it learned, at the end as at the start
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
        if self.cfg.train.log_grad_norm:  # before any clipping (the method's own, DINO's, or optim.grad_clip)
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.method.parameters() if p.grad is not None])
            outputs = {**outputs, "grad_norm": norm.detach()}
        self.method.after_backward(progress)
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_step_end(progress)
        return outputs, lr

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Write metrics to TensorBoard and (rank 0) ``logs/metrics.csv``."""
        self.fabric.log_dict(metrics, step=step)
        if self.metrics_log is not None:
            self.metrics_log.log(metrics, step)
