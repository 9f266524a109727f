"""A run from start to end: :func:`pretrain` refuses a folder that holds another run (or replaces
it with ``overwrite``), loads the checkpoint a resume continues and checks what the resume changes,
then builds the :class:`~selfsup.engine.trainer.Trainer`, fits it and finishes
(:func:`selfsup.engine.finish.finish`: evaluations, pictures, results.json, the report page).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from selfsup import distributed
from selfsup.config import Config, check_resume, from_dict
from selfsup.engine import checkpoint
from selfsup.engine.finish import finish
from selfsup.engine.setup import say
from selfsup.engine.trainer import Trainer
from selfsup.errors import ConfigError


@dataclass
class RunResult:
    """What a finished run leaves behind."""

    out_dir: Path
    checkpoint: Path
    history: dict[str, list[tuple[int, float]]]
    metrics: dict[str, float] = field(default_factory=dict)
    main: bool = True
    """Whether this process is rank 0 (the one that evaluated and wrote the files)."""


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
    # Resuming a checkpoint from elsewhere writes into the out_dir it recorded: a run already there is another
    # run's (a colleague's checkpoint, whose out_dir is the same runs/<name>), refused as a fresh start is.
    foreign = resume not in (True, False) and found and not Path(resume).resolve().is_relative_to(
        (out / "checkpoints").resolve())
    if foreign and not overwrite:
        raise ConfigError(f"train.out_dir: {out} holds another run ({found}) than the checkpoint {resume} "
                          f"continues; continue it in another folder (train.out_dir=...)")
    if (not resume or foreign) and found:
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
        try:
            saved = from_dict(state["config"])
        except ConfigError as error:
            raise ConfigError(f"{path}: the run configuration this checkpoint holds does not read: {error}") from None
        for key, before, after in check_resume(saved, cfg):
            if main_process:  # every rank of a torchrun job: the process group has not started
                say(f"resume changes {key}: {before!r} -> {after!r}")
    trainer = Trainer(cfg, state, command)
    trainer.fit()
    metrics = finish(trainer)
    return RunResult(trainer.out_dir, trainer.ckpt_path, trainer.history, metrics, main=trainer.is_main)
