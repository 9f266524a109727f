"""Where a run's metrics go: ``train.loggers``, any of tensorboard, csv, wandb and mlflow.

``metrics.csv`` (:class:`MetricsCSV`) is the run's own record, which the report draws: Lightning's
CSV logger deletes an existing file when a run starts again, so a resumed run would lose its
first part; this writer keeps the rows up to the resumed step (dropping any logged after the
checkpoint by a run that was then killed) and appends from there. TensorBoard is Fabric's logger;
Weights & Biases and MLflow go through Fabric's logger interface with their own clients (the
``wandb`` and ``mlflow`` extras), and keep their run ids in the checkpoint, so a resumed run
continues the same logged run.
"""

from __future__ import annotations

import csv
import os
import secrets
import time
from pathlib import Path
from typing import Any

from lightning_fabric.loggers.logger import Logger
from lightning_fabric.utilities.rank_zero import rank_zero_only

from selfsup._optional import require_extra
from selfsup.errors import ConfigError


class MetricsCSV:
    """Rows of ``{"step": ..., metric: value}``; columns grow as new metrics appear.

    Args:
        path: the CSV file.
        resume_step: keep the rows of an existing file up to this step (None: start afresh).
    """

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as file:
                self.rows = [row for row in csv.DictReader(file) if float(row["step"]) <= resume_step]
        self.columns = ["step"] + sorted({key for row in self.rows for key in row} - {"step"})
        self._write()

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Append one row; rewrites the file only when a new column appears."""
        row = {"step": str(step), **{key: repr(float(value)) for key, value in metrics.items()}}
        self.rows.append(row)
        if set(row) - set(self.columns):
            self.columns += sorted(set(row) - set(self.columns))
            self._write()
            return
        with open(self.path, "a", newline="") as file:
            csv.DictWriter(file, self.columns).writerow(row)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as file:
            writer = csv.DictWriter(file, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)


LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")
"""What ``train.loggers`` may name."""


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class WandbLogger(Logger):
    """Weights & Biases through Fabric's logger interface: one W&B run per selfsup run, its id kept in
    the checkpoint so that a resumed run goes on logging into the same W&B run (``resume="allow"``).
    W&B's own settings apply: ``WANDB_MODE=offline`` writes the run under ``<out_dir>/wandb`` for a
    later ``wandb sync``, ``WANDB_PROJECT`` names the project (default ``selfsup``). Rank 0 logs."""

    def __init__(self, save_dir: Path, run_name: str, config: dict[str, Any], run_id: str | None = None) -> None:
        super().__init__()
        self._wandb = require_extra("wandb", "wandb")
        self.save_dir, self.run_name, self.config = Path(save_dir), run_name, config
        self._id = run_id or secrets.token_hex(4)  # a W&B run id: lower-case letters and digits
        self._run = None

    @property
    def name(self) -> str:
        return "wandb"

    @property
    def version(self) -> str:
        return self._id

    @property
    def experiment(self):
        if self._run is None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self._run = self._wandb.init(project=os.environ.get("WANDB_PROJECT", "selfsup"), name=self.run_name,
                                         id=self._id, resume="allow", dir=str(self.save_dir), config=self.config)
        return self._run

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.experiment.log(dict(metrics), step=step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.experiment.config.update(dict(params), allow_val_change=True)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if status == "success" else 1)
            self._run = None


class MLflowLogger(Logger):
    """MLflow through Fabric's logger interface: one MLflow run per selfsup run, its id kept in the
    checkpoint so that a resumed run logs into the same MLflow run. ``MLFLOW_TRACKING_URI`` picks the
    server; without it, the local file store ``<out_dir>/mlruns`` (MLflow's own offline mode, which
    MLflow 3 serves only when ``MLFLOW_ALLOW_FILE_STORE`` is set: set here for that store alone).
    ``MLFLOW_EXPERIMENT_NAME`` names the experiment (default ``selfsup``). Rank 0 logs."""

    def __init__(self, save_dir: Path, run_name: str, config: dict[str, Any], run_id: str | None = None) -> None:
        super().__init__()
        self._mlflow = require_extra("mlflow", "mlflow")
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path(save_dir).resolve() / "mlruns").as_uri()
        self.run_name, self.config, self._id, self._client = run_name, config, run_id, None

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str | None:
        if self._id is None and rank_zero_only.rank == 0:
            self.client  # creates the run
        return self._id

    @property
    def client(self):
        if self._client is None:
            if self.uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self._client = self._mlflow.MlflowClient(tracking_uri=self.uri)
            if self._id is None:
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "selfsup")
                found = self._client.get_experiment_by_name(name)
                experiment = found.experiment_id if found else self._client.create_experiment(name)
                self._id = self._client.create_run(experiment, run_name=self.run_name).info.run_id
        return self._client

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.version, metrics=[Metric(key, float(value), now, step or 0)
                                                     for key, value in metrics.items()])

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        from mlflow.entities import Param

        flat = _flat(dict(params))
        self.client.log_batch(self.version, params=[Param(k, str(v)[:500]) for k, v in sorted(flat.items())])

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._client is not None and self._id is not None:
            state = {"success": "FINISHED", "preempted": "KILLED"}.get(status, "FAILED")
            self._client.set_terminated(self._id, status=state)


def build_loggers(names: list[str], out_dir: Path, run_name: str, config: dict[str, Any],
                  run_ids: dict[str, str] | None = None) -> list[Logger]:
    """Fabric loggers for ``train.loggers`` (``csv`` is :class:`MetricsCSV`, which the trainer keeps
    itself); ``run_ids`` are the W&B / MLflow runs to continue."""
    from lightning_fabric.loggers import TensorBoardLogger

    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ConfigError(f"train.loggers: unknown {unknown}; choose among {', '.join(LOGGERS)}")
    run_ids = run_ids or {}
    loggers: list[Logger] = []
    for name in names:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(out_dir, name="", version="tensorboard", default_hp_metric=False))
        elif name == "wandb":
            loggers.append(WandbLogger(out_dir, run_name, config, run_ids.get("wandb")))
        elif name == "mlflow":
            loggers.append(MLflowLogger(out_dir, run_name, config, run_ids.get("mlflow")))
    return loggers
