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


def test_the_plan_times_steps_after_the_warmup_and_spends_what_calibration_left(tmp_path, monkeypatch):
    """A clock that the calibration moves by hand: the first step takes 0.25 s of start-up and 0.0625 s, every
    other 0.0625 s. Of the 12 steps the last 9 are timed: their 8 intervals span 0.5 s, so 0.0625 s a step.
    Calibration ended at 0.25 + 12 * 0.0625 = 1 s, leaving 3 - 1 = 2 s of the limit: 2 / 0.0625 = 32 steps."""
    from types import SimpleNamespace

    from selfsup.engine import monitor

    trainer = Trainer(load_config(None, [*BASE, f"train.out_dir={tmp_path}"]))
    assert trainer.max_steps >= 12
    now = [0.0]

    def step(index):
        now[0] += (0.25 if index == 0 else 0.0) + 0.0625
        return {"loss": torch.tensor(1.0)}, 0.0

    monkeypatch.setattr(monitor, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(trainer, "train_step", step)
    monitor.plan_time_limit(trainer, 3.0)
    assert trainer.time_plan == {"time_limit_s": 3.0, "step_s": 0.0625, "calibration_steps": 12}
    assert trainer.max_steps == 32 and len(trainer.schedule.lr) == 32


# ----------------------------------------------------------------------------- train.compile unset


def test_compile_pays_when_the_saving_exceeds_the_cost():
    from selfsup.engine.monitor import COMPILE_COST_S, COMPILE_SAVING, compile_pays

    # The H200 figures: the step at 0.63 of bare eager, 0.80 compiled, so compiled takes 0.7875 of it.
    assert COMPILE_SAVING == pytest.approx(1 - 0.63 / 0.80, abs=0.005) and COMPILE_COST_S == 60
    assert not compile_pays(351 * 0.026)          # 3 epochs of CIFAR at 26 ms: 0.21 * 9.1 s = 1.9 s
    assert not compile_pays(285.0)                # 59.85 s saved
    assert compile_pays(286.0)                    # 60.06 s saved
    assert compile_pays(100.0, saving=0.5, cost_s=49.0) and not compile_pays(100.0, saving=0.5, cost_s=50.0)


def test_an_unset_compile_stays_eager_on_a_cpu_and_on_a_gpu_follows_the_runs_length(tmp_path, monkeypatch):
    from selfsup.engine import monitor, trainer as trainer_module

    run = [*BASE, "train.epochs=0.2"]
    cpu = Trainer(load_config(None, [*run, f"train.out_dir={tmp_path / 'cpu'}"]))
    assert load_config(None, []).train.compile is None and cpu.compile_plan == {}
    assert cpu.method.backbone.net._compiled_call_impl is None and not cpu.augment.compiled
    eager = Trainer(load_config(None, [*run, "train.compile=false", f"train.out_dir={tmp_path / 'eager'}"]))
    after_eager = torch.get_rng_state()

    # The GPU's rule, exercised on this CPU: the decision from the timed eager steps, compiling recorded by a spy.
    monkeypatch.setattr(monitor, "AUTO_COMPILE_DEVICES", ("cpu",))
    compiled = []
    monkeypatch.setattr(trainer_module, "compile_for_speed", lambda method, views: compiled.append(method))
    for cost, pays in ((1e9, False), (0.0, True)):
        monkeypatch.setattr(monitor, "COMPILE_COST_S", cost)
        compiled.clear()
        auto = Trainer(load_config(None, [*run, f"train.out_dir={tmp_path / f'auto{cost:g}'}"]))
        plan = auto.compile_plan
        assert plan["compile"] is pays and len(compiled) == pays and plan["cost_s"] == cost
        assert plan["eager_run_s"] == pytest.approx(plan["step_s"] * auto.max_steps, abs=0.01)
        assert ("compiled" if pays else "eager") in plan["reason"]
        # The timed steps left no trace: the weights and the RNG as a run that never timed them.
        assert torch.equal(torch.get_rng_state(), after_eager)
        for key, value in eager.method.state_dict().items():
            assert torch.equal(auto.method.state_dict()[key], value), key

    auto.fit()   # the run that compiled: its checkpoint keeps the decision, and a resume follows it untimed
    state = load_checkpoint(tmp_path / "auto0" / "checkpoints" / "last.ckpt")
    assert state["run"]["compile_plan"] == plan
    monkeypatch.setattr(monitor, "timed_steps", lambda trainer: pytest.fail("a resume timed steps again"))
    compiled.clear()
    resumed = Trainer(load_config(None, [*run, f"train.out_dir={tmp_path / 'auto0'}"]), state)
    assert resumed.compile_plan == plan and len(compiled) == 1
    compiled.clear()  # an explicit choice on resuming wins over the plan
    explicit = Trainer(load_config(None, [*run, "train.compile=false", f"train.out_dir={tmp_path / 'auto0'}"]), state)
    assert compiled == []
    assert explicit.compile_plan["compile"] is False and "resumed with train.compile=false" in explicit.compile_plan["reason"]

    # Under train.time_limit the limit is the run's length: nothing timed for the decision.
    monkeypatch.setattr(monitor, "COMPILE_COST_S", 0.21 * 100 - 0.01)
    monkeypatch.setattr(monitor, "plan_time_limit", lambda trainer, limit_s: None)
    limited = Trainer(load_config(None, [*run, "train.time_limit=100s", f"train.out_dir={tmp_path / 'limited'}"]))
    assert limited.compile_plan["compile"] and limited.compile_plan["eager_run_s"] == 100
    assert "step_s" not in limited.compile_plan


def test_a_checkpoint_from_before_compile_was_unset_resumes_under_the_new_default():
    from selfsup.config import check_resume

    old = load_config(None, [*BASE, "train.compile=false"])   # what every checkpoint before the change holds
    assert check_resume(old, load_config(None, BASE)) == [("train.compile", False, None)]
    with pytest.raises(ConfigError, match="train.seed"):
        check_resume(old, load_config(None, [*BASE, "train.compile=false", "train.seed=1"]))


def test_the_timed_steps_leave_the_optimiser_and_the_fp16_scaler_as_they_found_them(tmp_path):
    """Under fp16 every step moves the gradient scaler (its growth count; its scale on an overflow): the
    timed steps must give back the scaler and the optimiser's state as well as the weights."""
    from lightning_fabric.plugins.precision import MixedPrecision

    from selfsup.engine import monitor

    trainer = Trainer(load_config(None, [*BASE, f"train.out_dir={tmp_path}"]))
    # Fabric runs fp16 only on GPUs; the scaler's bookkeeping is the same on the CPU, so put one in place.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40, growth_interval=1000)
    trainer.fabric.strategy.precision = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    before = dict(scaler.state_dict())
    optimizer_before = trainer.optimizer.state_dict()["state"]
    assert not optimizer_before  # no step taken yet: no momentum buffers
    monitor.timed_steps(trainer)
    assert scaler.state_dict() == before
    assert trainer.optimizer.state_dict()["state"] == optimizer_before
