"""selfsup.engine.checkpoint: loading never runs code from the file."""

import builtins
import os

import pytest
import torch

from selfsup.config import load_config
from selfsup.engine import load_checkpoint, pretrain


class RunsShell:
    """Unpickles by running a shell command: what a hostile checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class RunsPython:
    """Unpickles by running Python source."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return builtins.exec, (self.source,)


@pytest.mark.parametrize("payload", [
    lambda marker: RunsShell(f"touch {marker}"),
    lambda marker: RunsPython(f"open({str(marker)!r}, 'w').close()"),
], ids=["os.system", "builtins.exec"])
def test_load_checkpoint_refuses_a_pickle_that_runs_code(tmp_path, payload):
    marker = tmp_path / "code-ran"
    path = tmp_path / "hostile.ckpt"
    # Every key a selfsup checkpoint needs, so only the payload can make the load fail.
    torch.save({"model": payload(marker), "config": {}, "step": 0}, path)
    with pytest.raises(ValueError, match=rf"checkpoint {path} is not a plain-tensor checkpoint.*refuses to execute code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_every_checkpoint_the_engine_writes_loads_without_running_code(tmp_path):
    cfg = load_config(None, ["data.name=digits", "data.size=16", "backbone.width=4", "method_args.proj_hidden_dim=16",
                             "method_args.proj_dim=8", "train.batch_size=64", "train.epochs=1", "train.progress=false",
                             "train.knn_every=1", "train.knn_train_samples=200", "eval.plots=false",
                             "eval.save_embeddings=false", "eval.linear=false", f"train.out_dir={tmp_path / 'run'}"])
    result = pretrain(cfg)
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "config", "rng", "history", "data", "step"} <= set(state)
    assert state["history"]["knn"], "the kNN monitor ran, so the history holds every kind of entry"
    assert load_checkpoint(result.checkpoint)["step"] == state["step"]

