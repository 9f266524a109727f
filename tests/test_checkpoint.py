"""selfsup.engine.checkpoint (and the atomic writes it shares with selfsup.evaluate): safe loading, modes, durability."""

import builtins
import os
import stat

import pytest
import torch

from selfsup.config import load_config
from selfsup.engine import load_checkpoint, pretrain, save_atomic
from selfsup.evaluate._common import atomic_write


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


@pytest.mark.parametrize("optimizer", ["sgd", "lars", "adamw"])
def test_every_checkpoint_the_engine_writes_loads_without_running_code(tmp_path, optimizer):
    cfg = load_config(None, ["data.name=digits", "data.size=16", "backbone.width=4", "method_args.proj_hidden_dim=16",
                             "method_args.proj_dim=8", "train.batch_size=64", "train.epochs=0.5", "train.progress=false",
                             "train.knn_every=1", "train.knn_train_samples=200", "eval.plots=false",
                             "eval.save_embeddings=false", "eval.linear=false", f"optim.name={optimizer}",
                             f"train.out_dir={tmp_path / 'run'}"])
    result = pretrain(cfg)
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "config", "rng", "history", "data", "step"} <= set(state)
    assert state["optimizer"]["state"], "the optimiser's state (momentum buffers, Adam moments) is in the file"
    assert load_checkpoint(result.checkpoint)["step"] == state["step"]


WRITERS = {
    "save_atomic": lambda path: save_atomic({"step": 1}, path),
    "evaluate.atomic_write": lambda path: atomic_write(path, lambda file: file.write(b"figure")),
}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077], ids=oct)
def test_atomic_file_gets_the_mode_of_a_plainly_created_file(tmp_path, restore_umask, writer, mask):
    os.umask(mask)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    writer(tmp_path / "out" / "last.ckpt")
    mode = stat.S_IMODE(os.stat(tmp_path / "out" / "last.ckpt").st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_atomic_file_fsyncs_its_folder_after_the_rename(tmp_path, monkeypatch, writer):
    path = tmp_path / "last.ckpt"
    synced = []  # (is a folder, the final file already exists) per fsync
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    writer(path)
    assert (False, False) in synced, "the file's own data is synced before the rename"
    assert (True, True) in synced, "the folder is synced once the new name is in it"
