"""train.time_limit: durations parsed, steps fixed from timed calibration steps that leave no trace
(the run equals one given that many steps from the start), and a resume keeps the plan."""

import math

import pytest
import torch

from selfsup.config import load_config, parse_duration
from selfsup.engine import Trainer, load_checkpoint
from selfsup.errors import ConfigError

BASE = ["data.name=digits", "data.size=16", "backbone.width=4", "method_args.proj_hidden_dim=16",
        "train.batch_size=128", "train.progress=false", "train.knn_every=0", "eval.plots=false",
        "train.precision=32-true"]


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("90s", 90), ("1h30m", 5400), ("2.5m", 150), ("45", 45),
                                           (" 1m 5s ", 65)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "", "0s", "5d"])
def test_bad_durations_name_the_key(text):
    with pytest.raises(ConfigError, match="train.time_limit"):
        load_config(None, [f"train.time_limit={text!r}" if text else "train.time_limit=''"])


def test_time_limited_run_equals_a_run_of_that_many_steps_and_resumes_with_the_plan(tmp_path):
    limited = Trainer(load_config(None, [*BASE, "train.time_limit=2s", f"train.out_dir={tmp_path / 'limited'}"]))
    steps, per_epoch = limited.max_steps, limited.steps_per_epoch
    assert limited.time_plan["calibration_steps"] == 12 and steps >= 1
    # Steps that fit: the limit, less the calibration time already spent, over the measured step time.
    assert steps <= 2 / limited.time_plan["step_s"] + 1
    limited.fit()
    epochs = steps / per_epoch
    if math.ceil(epochs * per_epoch) != steps:
        epochs = math.nextafter(epochs, 0)
    plain = Trainer(load_config(None, [*BASE, f"train.epochs={epochs!r}", f"train.out_dir={tmp_path / 'plain'}"]))
    assert plain.max_steps == steps
    plain.fit()
    for key, value in plain.method.state_dict().items():   # the calibration steps were undone exactly
        assert torch.equal(limited.method.state_dict()[key], value), key

    state = load_checkpoint(tmp_path / "limited" / "checkpoints" / "last.ckpt")
    assert state["run"]["time_plan"]["step_s"] == pytest.approx(limited.time_plan["step_s"])
    resumed = Trainer(load_config(None, [*BASE, "train.time_limit=2s", f"train.out_dir={tmp_path / 'limited'}"]),
                      state)
    assert resumed.max_steps == steps and resumed.start_step == steps   # no new calibration, the same plan
