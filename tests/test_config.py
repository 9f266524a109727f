"""selfsup.config: recipes and overrides validated into typed configs, with one-line errors."""

import re
from pathlib import Path

import pytest

from selfsup.config import ConfigError, Optimizer, from_dict, load_config, to_dict

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_is_valid(recipe):
    cfg = load_config(recipe)
    assert cfg.name == recipe.stem


def test_overrides_are_typed_and_resolved():
    cfg = load_config(None, ["name=x", "train.epochs=3", "optim.name=lars", "method_args.temperature=0.1"])
    assert cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)
    assert cfg.optim.name is Optimizer.lars
    assert cfg.method_args == {"temperature": 0.1}
    assert cfg.train.out_dir == "runs/x"


@pytest.mark.parametrize("override,message", [
    ("train.epoch=2", "train.epoch: Key 'epoch' not in 'TrainConfig'"),
    ("bogus=1", "Key 'bogus' not in 'Config'"),
    ("train.batch_size=many", "train.batch_size"),
    ("optim.name=adagrad", "Invalid value 'adagrad'"),
    ("method=simclrr", "unknown method 'simclrr'"),
    ("method_args.temp=0.5", "method_args.temp: simclr has no argument 'temp'"),
    ("method_args.temperature=hot", "method_args.temperature: expected float"),
    ("train.batch_size=0", "train.batch_size: must be > 0"),
    ("optim.weight_decay=-1", "optim.weight_decay: must be >= 0"),
    ("data.channels=2", "data.channels: must be 1 or 3"),
    ("optim.grad_clip=-1", "optim.grad_clip: must be > 0"),
    ("optim.min_lr_ratio=-0.1", "optim.min_lr_ratio: must be >= 0"),
    ("optim.momentum=-0.9", "optim.momentum: must be >= 0"),
    ("optim.betas=[0.9]", "optim.betas: must be two values in [0, 1)"),
    ("train.precision=fp8", "train.precision: must be one of auto, 32-true"),
    ("eval.knn_k=0", "eval.knn_k: must be > 0"),
    ("train.knn_val_fraction=1.0", "train.knn_val_fraction: must be in [0, 1)"),
    ("no_equals_sign", "not of the form key=value"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_best_checkpoint_is_never_chosen_on_the_test_split():
    # knn_val_fraction=0 makes the monitor query the test split; best.ckpt by that would be picked on test images.
    with pytest.raises(ConfigError, match="would choose best.ckpt on the test split"):
        load_config(None, ["train.save_best=knn", "train.knn_val_fraction=0"])
    load_config(None, ["train.save_best=knn", "train.knn_val_fraction=0.1"])
    load_config(None, ["train.save_best=loss", "train.knn_val_fraction=0"])


def test_recipes_and_settings_may_refer_to_keys_but_not_call_resolvers(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_TEST_SECRET", "hunter2")
    recipe = tmp_path / "sent.yaml"
    recipe.write_text("method: simclr\nname: run_${oc.env:SELFSUP_TEST_SECRET}\n")
    with pytest.raises(ConfigError, match="sent.yaml: name holds a resolver call") as info:
        load_config(recipe)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="holds a resolver call"):
        load_config(None, ["name=${oc.env:SELFSUP_TEST_SECRET}"])
    with pytest.raises(ConfigError, match="optim.betas\\[0\\] holds a resolver call"):
        recipe.write_text("optim:\n  betas: ['${oc.decode:0.9}', 0.99]\n")
        load_config(recipe)
    recipe.write_text("train:\n  batch_size: 64\neval:\n  knn_k: ${train.batch_size}\n")  # a reference: fine
    assert load_config(recipe).eval.knn_k == 64


def test_unknown_key_in_a_recipe_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: simclr\ntrain:\n  epochs: 1\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(recipe)


def test_missing_and_malformed_recipe(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [simclr\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_dict_round_trip():
    cfg = load_config(None, ["optim.name=adamw", "method=moco", "method_args.queue_size=100"])
    data = to_dict(cfg)
    assert data["optim"]["name"] == "adamw"
    assert from_dict(data) == cfg


def test_view_overrides_cover_every_view_parameter():
    # ViewConfig repeats selfsup.augment.View's fields for the YAML schema; they must not drift apart.
    from dataclasses import fields

    from selfsup.augment import View
    from selfsup.config import ViewConfig

    assert [f.name for f in fields(ViewConfig)] == [f.name for f in fields(View)]


def _small_data(recipe: Path, tmp_path: Path) -> list[str]:
    """Overrides that point a recipe at small offline data of its kind, keeping its method and settings."""
    cfg = load_config(recipe)
    if cfg.data.name == "wav":
        import wave

        import numpy as np

        for speaker, freq in enumerate((220.0, 330.0)):
            for i in range(5):  # every fifth file of a speaker is the test split
                path = tmp_path / "speech" / f"spk{speaker}" / f"{i}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                with wave.open(str(path), "wb") as f:
                    f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
                    t = np.arange(16000) / 16000
                    f.writeframes((8000 * np.sin(2 * np.pi * freq * (1 + 0.05 * i) * t)).astype("<i2").tobytes())
        return [f"data.root={tmp_path / 'speech'}", "data.window=4096", "train.batch_size=4"]
    if cfg.data.name in ("sbm", "karate", "planetoid"):
        return []
    if cfg.data.name == "video":
        from selfsup.data.synthetic_video import write_synthetic_videos

        views = 2 if cfg.method_args.get("multi_view") else 1  # a multi-view recipe's synchronised cameras
        root = write_synthetic_videos(tmp_path / "videos", videos=5, frames=6, size=32, sprites="digits", views=views)
        return [f"data.root={root}", "data.size=32", "data.clips_per_video=4", "train.batch_size=8"]
    data = ["data.name=photos", "data.size=24"] if cfg.data.name == "photos" else ["data.name=digits", "data.size=28"]
    if cfg.data.captions:
        data.append("data.held_out_classes=[]")
    return [*data, "data.max_samples=32", "train.batch_size=16"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_takes_two_steps_through_the_trainer(recipe, tmp_path):
    """Each shipped recipe, on small data of its kind: two optimiser steps with finite losses that
    change the evaluation encoder's weights (the full recipes are measured in benchmarks/learning_bar.py)."""
    import torch

    from selfsup.engine import Trainer

    overrides = [*_small_data(recipe, tmp_path), f"train.out_dir={tmp_path / 'run'}", "train.progress=false",
                 "train.knn_every=0", "eval.plots=false", "train.precision=32-true"]
    trainer = Trainer(load_config(recipe, overrides))
    encoder = trainer.method.eval_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items() if v.is_floating_point()}
    for step in range(2):
        outputs, _ = trainer.train_step(step)
        assert torch.isfinite(outputs["loss"]), (step, outputs["loss"])
    after = encoder.state_dict()
    assert any(not torch.equal(after[k], value) for k, value in before.items()), "no weight moved"
    # train.compile (true, or unset on a GPU when it pays) can wrap this recipe's backbone (compiled lazily: no
    # call follows here). The graph encoder, which has no inner network, once failed here.
    from selfsup.engine.setup import compile_for_speed

    compiled = compile_for_speed(trainer.method, None)
    assert compiled._compiled_call_impl is not None
    assert any(module is compiled for module in trainer.method.backbone.modules())


def test_tensor_cores_are_used_on_gpus_that_have_them_and_nothing_changes_elsewhere(monkeypatch):
    import torch

    from selfsup.engine.setup import use_tensor_cores

    before = torch.get_float32_matmul_precision()
    try:
        assert not use_tensor_cores(torch.device("cpu"), "high")
        assert torch.get_float32_matmul_precision() == before
        capability = {"value": (6, 1)}  # a Pascal GPU: no tensor cores
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
        assert not use_tensor_cores(torch.device("cuda", 0), "high")
        assert torch.get_float32_matmul_precision() == before
        capability["value"] = (9, 0)  # an H100/H200
        assert use_tensor_cores(torch.device("cuda", 0), "medium")
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert load_config(None, []).train.matmul_precision == "high"
    with pytest.raises(ConfigError, match="train.matmul_precision: must be one of"):
        load_config(None, ["train.matmul_precision=tf32"])


def test_a_recipe_that_is_not_a_mapping_or_merges_badly_names_its_file(tmp_path):
    cases = {"list.yaml": ("- a\n- b\n", "a recipe is a mapping of sections"),
             "args.yaml": ("method_args: [1, 2]\n", "args.yaml: "),
             "typo.yaml": ("trian:\n  epochs: 1\n", "typo.yaml: Key 'trian' not in 'Config'"),
             "five.yaml": ("train: 5\n", "five.yaml: ")}
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=re.escape(words)) as error:
            load_config(tmp_path / name)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError):
        load_config(None, ["train=[1]"])


@pytest.mark.parametrize("override", ["train.epochs=nan", "train.epochs=inf", "optim.lr=inf", "optim.lr=nan",
                                      "optim.weight_decay=nan", "optim.warmup_epochs=inf"])
def test_values_that_are_not_finite_numbers_are_refused(override):
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0]) + ".*finite"):
        load_config(None, [override])
