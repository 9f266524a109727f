"""selfsup.config: recipes and overrides validated into typed configs, with one-line errors."""

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
    ("optim.name=adam", "Invalid value 'adam'"),
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
