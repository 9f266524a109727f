"""A run's state: what a checkpoint holds, writing it, and continuing from it exactly.

:func:`save` writes the weights, optimiser, gradient scaler, history, every rank's RNG and the
run's plan atomically (all ranks take part, rank 0 writes); :func:`restore` puts them back and
refuses what would break an exact resume (other process count, precision, device or data).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from selfsup import distributed
from selfsup.config import to_dict
from selfsup.engine import checkpoint
from selfsup.errors import ConfigError, DataError, NonFiniteLossError

if TYPE_CHECKING:
    from selfsup.engine.trainer import Trainer


def rng_state(device: torch.device) -> Tensor:
    """This process's torch RNG state (the CPU's, and the GPU's when training there)."""
    state = torch.get_rng_state()
    if device.type == "cuda":
        state = torch.cat([state, torch.cuda.get_rng_state(device)])
    return state


def set_rng_state(state: Tensor, device: torch.device) -> None:
    """Put back a state from :func:`rng_state`."""
    cpu_size = torch.get_rng_state().numel()
    torch.set_rng_state(state[:cpu_size].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[cpu_size:].clone(), device)


def finite_state(module: nn.Module) -> bool:
    """Whether every floating weight and buffer is finite."""
    # Buffers too: BatchNorm's running variance overflows before any weight does.
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


def restore(trainer: Trainer, state: dict[str, Any]) -> None:
    """Continue from a checkpoint: weights, optimiser, scaler, history and every rank's RNG."""
    step = int(state["step"])
    if step > trainer.max_steps:
        raise ConfigError(f"train.epochs={trainer.cfg.train.epochs} ends at step {trainer.max_steps}, before the "
                          f"checkpoint's step {step}")
    rng = state["rng"]
    if len(rng) != trainer.fabric.world_size:
        raise ConfigError(f"the checkpoint was written by {len(rng)} processes, this run has "
                          f"{trainer.fabric.world_size}; resume with the same devices x nodes")
    saved = state.get("run", {})
    for key, now in (("precision", trainer.precision), ("device", trainer.fabric.device.type)):
        if key in saved and saved[key] != now:
            raise ConfigError(f"train.{'precision' if key == 'precision' else 'accelerator'}: the checkpoint "
                              f"was trained with {key} {saved[key]!r}, this run resolves to {now!r}; an exact "
                              f"resume needs the same (set train.precision / train.accelerator explicitly)")
    check_same_data(trainer, state.get("data", {}))
    try:
        trainer.method.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:  # weights or optimiser groups of another build
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__
        raise DataError(f"--resume: the checkpoint does not fit {trainer.cfg.method} as this selfsup builds it "
                        f"({detail[:300]}); was it written by another version? Start a new run, or resume with "
                        f"the version that wrote it") from None
    if state.get("precision"):  # the fp16 gradient scaler's state; empty for other precisions
        trainer.fabric.strategy.precision.load_state_dict(state["precision"])
    trainer.start_step = step
    trainer.time_plan = dict(saved.get("time_plan", {}))
    trainer.compile_plan = dict(saved.get("compile_plan", {}))
    trainer.best = saved.get("best")
    trainer.history = {"images_per_s": [], **state["history"]}
    trainer.train_seconds = float(saved.get("train_seconds", 0.0))
    window_loss, trainer.window_steps = saved.get("loss_window", (0.0, 0))
    # Each rank's own loss sum since the last log (older checkpoints kept rank 0's only).
    per_rank = saved.get("loss_windows")
    trainer.window_loss.fill_(per_rank[trainer.fabric.global_rank] if per_rank else window_loss)
    set_rng_state(rng[trainer.fabric.global_rank], trainer.fabric.device)
    old_steps = int(saved.get("max_steps", trainer.max_steps))
    trainer.say(f"resuming at step {step} of {trainer.max_steps} (epoch {step / trainer.steps_per_epoch:g})")
    if old_steps != trainer.max_steps and step < trainer.max_steps:
        trainer.say(f"the run now has {trainer.max_steps} steps instead of {old_steps}: the warmup + cosine LR "
                    f"schedule and the method's schedules are recomputed over the new length (as timm does), "
                    f"so the LR at step {step} is {trainer.schedule.lr[step]:.4g} where the old schedule ended at "
                    f"{trainer.schedule.base_lr * trainer.cfg.optim.min_lr_ratio:.4g}")


def save(trainer: Trainer, step: int) -> None:
    """Atomically write the state after ``step`` steps (all ranks take part, rank 0 writes)."""
    if not distributed.all_true(finite_state(trainer.method), trainer.fabric.device):
        raise NonFiniteLossError(f"{trainer.cfg.method}: the weights or statistics hold NaN/Inf at step {step}; "
                                 f"{kept(trainer)}. {hint(trainer)}")
    rng = distributed.gather_list(rng_state(trainer.fabric.device))
    windows = [float(w) for w in distributed.gather_list(trainer.window_loss.detach().reshape(1).float())]

    def write() -> None:
        run = {"max_steps": trainer.max_steps, "precision": trainer.precision, "device": trainer.fabric.device.type,
               "train_seconds": trainer.train_seconds + time.perf_counter() - trainer.fit_started,
               "loss_window": [float(trainer.window_loss), trainer.window_steps], "loss_windows": windows,
               "time_plan": trainer.time_plan, "compile_plan": trainer.compile_plan, "best": trainer.best,
               # The W&B / MLflow runs a resumed run goes on logging into.
               "loggers": {lg.name: str(lg.version) for lg in trainer.fabric.loggers if lg.name in ("wandb", "mlflow")}}
        state = {"model": trainer.method.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                 "precision": trainer.fabric.strategy.precision.state_dict(), "step": step,
                 "epoch": step / trainer.steps_per_epoch, "config": to_dict(trainer.cfg), "run": run,
                 "rng": [r.cpu() for r in rng], "history": trainer.history,
                 "data": {"channels": trainer.train_set.channels, "size": trainer.train_set.size,
                          "num_train": len(trainer.train_set), **data_fingerprint(trainer.train_set)}}
        checkpoint.save_atomic(state, trainer.ckpt_path)
        retain(trainer, step)

    trainer.on_rank_zero(f"writing {trainer.ckpt_path}", write)


def _link(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s bytes: a hard link (no second write) where the file system
    allows, else a copy; replaced atomically."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def best_value(trainer: Trainer) -> float | None:
    """The ``train.save_best`` metric now (higher is better: the loss is negated), None if not measured."""
    metric = trainer.cfg.train.save_best
    points = trainer.history.get("knn" if metric == "knn" else "loss") or []
    if not points:
        return None
    return points[-1][1] if metric == "knn" else -points[-1][1]


def retain(trainer: Trainer, step: int) -> None:
    """After last.ckpt is written: keep it as step-<N>.ckpt (the last ``keep_last``) and as best.ckpt
    when it is the best so far (``save_best``); the kept files are listed in ``trainer.kept_checkpoints``."""
    t, folder = trainer.cfg.train, trainer.ckpt_path.parent
    if t.keep_last:
        _link(trainer.ckpt_path, folder / f"step-{step}.ckpt")
        steps = sorted(int(p.stem.removeprefix("step-")) for p in folder.glob("step-*.ckpt")
                       if p.stem.removeprefix("step-").isdigit())
        for old in steps[:-t.keep_last]:
            (folder / f"step-{old}.ckpt").unlink(missing_ok=True)
    if t.save_best:
        value = best_value(trainer)
        if value is not None and (trainer.best is None or value > trainer.best["value"]):
            _link(trainer.ckpt_path, folder / "best.ckpt")
            trainer.best = {"metric": t.save_best, "value": value, "step": step}


def gather_skipped(trainer: Trainer) -> None:
    """Every rank's unreadable files into rank 0's report (each rank met those of its shares)."""
    skipped = getattr(trainer.source, "skipped", None)
    if skipped is None or trainer.fabric.world_size == 1 or not torch.distributed.is_initialized():
        return
    everyone: list[dict[str, str] | None] = [None] * trainer.fabric.world_size
    torch.distributed.all_gather_object(everyone, dict(skipped))
    for found in everyone:
        for path, reason in (found or {}).items():
            skipped.setdefault(path, reason)


def data_fingerprint(train_set) -> dict[str, str]:
    """A streamed split's sha256 of its file names: a resume must read the same files."""
    fingerprint = getattr(train_set, "fingerprint", None)
    return {"files_sha256": fingerprint()} if fingerprint is not None else {}


def check_same_data(trainer: Trainer, saved: dict[str, Any]) -> None:
    """Refuse to resume on other data: another count of samples, or other files."""
    count = saved.get("num_train")
    if count is not None and count != len(trainer.train_set):
        raise ConfigError(f"data: the checkpoint was trained on {count:,} samples, {trainer.cfg.data.name} now gives "
                          f"{len(trainer.train_set):,}; an exact resume needs the same data (files added or "
                          f"removed change every epoch's order)")
    if "files_sha256" in saved and saved["files_sha256"] != data_fingerprint(trainer.train_set).get("files_sha256"):
        raise ConfigError(f"data.root: the files under {trainer.cfg.data.root} are not the ones the checkpoint "
                          f"was trained on (same count, other names); an exact resume needs the same files")


def kept(trainer: Trainer) -> str:
    """Where the last good checkpoint is, for an error message."""
    if trainer.ckpt_path.exists():
        return f"the last good checkpoint is {trainer.ckpt_path}"
    return "no checkpoint was written yet"


def hint(trainer: Trainer) -> str:
    """What to change after a divergence."""
    text = (f"Try a lower optim.lr (now {trainer.cfg.optim.lr}), optim.grad_clip=1.0 or a longer "
            f"optim.warmup_epochs (now {trainer.cfg.optim.warmup_epochs})")
    return text + ("" if trainer.precision == "32-true" else ", or train.precision=32-true")
