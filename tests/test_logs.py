"""train.loggers: W&B (offline) and MLflow (its local file store) for real, each continuing the same
logged run after a resume, against the run's own metrics.csv; one line for a missing extra."""

import csv
import json
import sys

import pytest

from selfsup.config import ConfigError, load_config
from selfsup.engine import load_checkpoint, pretrain

TINY = ["data.name=digits", "data.size=16", "backbone.width=4", "method_args.proj_hidden_dim=16",
        "method_args.proj_dim=8", "train.batch_size=128", "train.progress=false", "train.knn_every=0",
        "train.log_every=2", "eval.plots=false", "eval.save_embeddings=false", "eval.linear=false", "eval.knn=false",
        "eval.floor=false"]


def _csv_losses(out) -> dict[int, float]:
    with open(out / "logs" / "metrics.csv") as file:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(file) if row.get("loss")}


def test_mlflow_logs_every_point_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    pretrain(load_config(None, [*TINY, "train.epochs=1", "train.loggers=[csv,mlflow]", f"train.out_dir={out}"]))
    run_id = load_checkpoint(out / "checkpoints" / "last.ckpt")["run"]["loggers"]["mlflow"]
    pretrain(load_config(None, [*TINY, "train.epochs=2", "train.loggers=[csv,mlflow]", f"train.out_dir={out}"]),
             resume=True)
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["run"]["loggers"]["mlflow"] == run_id
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert logged == pytest.approx(_csv_losses(out), rel=1e-6) and max(logged) == 22  # both halves, one run
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["method"] == "simclr"
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_wandb_offline_logs_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    pretrain(load_config(None, [*TINY, "train.epochs=1", "train.loggers=[csv,wandb]", f"train.out_dir={out}"]))
    run_id = load_checkpoint(out / "checkpoints" / "last.ckpt")["run"]["loggers"]["wandb"]
    pretrain(load_config(None, [*TINY, "train.epochs=2", "train.loggers=[csv,wandb]", f"train.out_dir={out}"]),
             resume=True)
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["run"]["loggers"]["wandb"] == run_id
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(path.name.endswith(f"-{run_id}") for path in runs)  # one W&B run, twice
    # The offline run files hold W&B's protobuf records, whose history items keep each value as JSON
    # text: every loss metrics.csv holds must be in them, the first half's in the first file.
    records = [(run / f"run-{run_id}.wandb").read_bytes() for run in runs]
    losses = _csv_losses(out)
    assert len(losses) == 12 and max(losses) == 22  # every 2 steps, and the last of each half (11, 22)
    for step, loss in losses.items():
        assert json.dumps(loss).encode() in records[0 if step <= 11 else 1], (step, loss)


def test_a_logger_without_its_extra_or_unknown_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"^wandb is not installed: pip install 'selfsup\[wandb\]'$"):
        pretrain(load_config(None, [*TINY, "train.epochs=0.1", "train.loggers=[wandb]", f"train.out_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="train.loggers: unknown \\['comet'\\]"):
        pretrain(load_config(None, [*TINY, "train.epochs=0.1", "train.loggers=[comet]", f"train.out_dir={tmp_path}"]))
