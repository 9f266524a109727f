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


# -- any file given as a checkpoint: a checkpoint, or one line naming the file -------------------

import io  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import random  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402

from selfsup.cli import main  # noqa: E402
from selfsup.engine import checkpoint  # noqa: E402
from selfsup.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real")
    cfg = load_config(None, ["data.name=digits", "data.size=16", "backbone.width=2", "method_args.proj_hidden_dim=8",
                             "method_args.proj_dim=4", "train.batch_size=128", "train.epochs=0.2", "train.progress=false",
                             "train.knn_every=0", "eval.plots=false", "eval.save_embeddings=false", "eval.linear=false",
                             "eval.knn=false", "eval.floor=false", f"train.out_dir={out / 'run'}"])
    return pretrain(cfg).checkpoint


def _tensor_storage_offset(path: Path) -> tuple[int, int]:
    """(offset, size) of the first tensor storage (``data/0``) inside torch's zip file."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    with open(path, "rb") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = int.from_bytes(file.read(2), "little"), int.from_bytes(file.read(2), "little")
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def fuzz_files(real: Path, folder: Path, count: int, every_prefix: bool = False) -> list[Path]:
    """Files a careless or hostile user could pass as a checkpoint (see the test)."""
    rng = random.Random(0)
    data = real.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    files = []

    def add(name: str, content: bytes) -> None:
        path = folder / f"{name}.ckpt"  # the suffix `selfsup pretrain FILE --resume` reads as a checkpoint
        path.write_bytes(content)
        files.append(path)

    for k in range(count):  # random bytes
        add(f"random{k}", rng.randbytes(rng.randrange(0, 4096)))
    cuts = range(len(data)) if every_prefix else sorted({*range(0, 80), *rng.sample(range(len(data)), count)})
    for cut in cuts:  # every (or a sample of) prefix of a real checkpoint: a copy cut short
        add(f"prefix{cut}", data[:cut])
    for k in range(count):  # one flipped byte anywhere: zip headers, the pickle, tensor bytes
        position = rng.randrange(len(data))
        add(f"flip{k}", data[:position] + bytes([data[position] ^ (1 << rng.randrange(8))]) + data[position + 1:])
    opcodes = [bytes([op.code.encode("latin-1")[0]]) for op in __import__("pickletools").opcodes]
    for k in range(count):  # pickle opcode soup, and the two bytes that broke /etc/passwd
        add(f"opcodes{k}", b"".join(rng.choice(opcodes) for _ in range(rng.randrange(1, 40))) + b".")
    add("paren_stop", b"(.")
    add("passwd", b"root:x:0:0:root:/root:/bin/bash\n")
    add("empty", b"")
    for name, value in (("tensor", torch.zeros(3)), ("list", [1, 2]), ("no_keys", {"weights": torch.ones(2)}),
                        ("model_not_dict", {"model": 3, "config": {}, "step": 0, "data": {}}),
                        ("bool_step", {"model": {}, "config": {}, "step": True, "data": {}})):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        add(f"torch_{name}", buffer.getvalue())
    from safetensors.torch import save

    add("safetensors", save({"w": torch.ones(2)}))
    add("plain_pickle", pickle.dumps({"model": {}, "config": {}, "step": 0, "data": {}}))
    (folder / "a_folder.ckpt").mkdir(exist_ok=True)
    files.append(folder / "a_folder.ckpt")
    return files


def _loads_or_says_so(path: Path) -> str:
    try:
        checkpoint.load(path)
        return "loaded"
    except (DataError, FileNotFoundError) as error:
        assert str(path) in str(error) and "\n" not in str(error), str(error)
        return "refused"


def test_any_file_given_as_a_checkpoint_loads_or_is_refused_in_one_line(real_checkpoint, tmp_path):
    files = fuzz_files(real_checkpoint, tmp_path / "fuzz", count=150)
    outcomes = {path.stem: _loads_or_says_so(path) for path in files}  # any other exception fails the test
    assert len(files) > 600 and outcomes["passwd"] == outcomes["paren_stop"] == outcomes["empty"] == "refused"
    assert outcomes["prefix0"] == outcomes["prefix79"] == "refused"
    assert all(outcome == "refused" for name, outcome in outcomes.items() if name.startswith("prefix"))
    # A flip that lands on nothing checked (a zip comment, the pickle's padding) may still load; most refuse.
    assert sum(outcome == "refused" for name, outcome in outcomes.items() if name.startswith("flip")) > 100


def test_every_command_that_takes_a_checkpoint_answers_a_bad_file_in_one_line(real_checkpoint, tmp_path, capsys,
                                                                               monkeypatch):
    from selfsup import cli

    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)
    files = fuzz_files(real_checkpoint, tmp_path / "fuzz", count=4)
    chosen = [f for f in files if not f.name.startswith("prefix") or f.stem in ("prefix0", "prefix13", "prefix70")]
    commands = [["evaluate", "linear"], ["evaluate", "knn", "--no-floor"], ["evaluate", "finetune"], ["embed"],
                ["export"], ["verify"], ["pretrain", "--resume"]]
    for path in chosen:
        if _loads_or_says_so(path) == "loaded":
            continue
        for command in commands:
            code = main([*command, str(path)] if command[0] != "pretrain" else ["pretrain", str(path), "--resume"])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2, (command, path.name, err)
            assert len(err) == 1 and err[0].startswith("selfsup: error:") and str(path) in err[0], (command, err)


@pytest.mark.heavy
def test_every_prefix_of_a_real_checkpoint_is_refused_in_one_line(real_checkpoint, tmp_path):
    for path in fuzz_files(real_checkpoint, tmp_path / "fuzz", count=1000, every_prefix=True):
        _loads_or_says_so(path)


def test_a_flipped_byte_in_a_weight_is_named(real_checkpoint, tmp_path, capsys):
    offset, size = _tensor_storage_offset(real_checkpoint)
    data = bytearray(real_checkpoint.read_bytes())
    data[offset + size // 2] ^= 0x10
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(data))
    state = torch.load(damaged, map_location="cpu", weights_only=True)  # torch alone reads it without a word
    assert "integrity" in state
    with pytest.raises(DataError, match=r"tensor [\w./]+ does not match its recorded crc32"):
        checkpoint.load(damaged)
    assert main(["verify", str(damaged)]) == 2
    assert "does not match its recorded crc32" in capsys.readouterr().err
    assert main(["verify", str(real_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {real_checkpoint}: ") and "tensors and the configuration match" in out
    # A changed configuration (the tensors intact) is caught too.
    state = checkpoint.load(real_checkpoint)
    state["config"]["method"] = "byol"
    torch.save(state, tmp_path / "other_config.ckpt")  # the integrity record kept from the real file
    with pytest.raises(DataError, match="configuration does not match"):
        checkpoint.load(tmp_path / "other_config.ckpt")
    # So are the other contents the model is rebuilt from: a data.size changed from 28 to 30 was read as 30.
    for change in (lambda st: st["data"].update(size=st["data"]["size"] + 2), lambda st: st.update(step=st["step"] + 1)):
        state = checkpoint.load(real_checkpoint)
        change(state)
        torch.save(state, tmp_path / "other_rest.ckpt")
        with pytest.raises(DataError, match=r"its other contents \(data, step, history\) do not match"):
            checkpoint.load(tmp_path / "other_rest.ckpt")
    # A record written before "rest" existed still loads.
    state = checkpoint.load(real_checkpoint)
    del state["integrity"]["rest"]
    torch.save(state, tmp_path / "earlier.ckpt")
    assert checkpoint.load(tmp_path / "earlier.ckpt")["step"] == state["step"]


def test_an_export_records_and_verifies_its_files(real_checkpoint, tmp_path, capsys, monkeypatch):
    from selfsup import cli

    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)
    out = tmp_path / "export"
    assert main(["export", str(real_checkpoint), "--out", str(out), "--formats", "safetensors,torchscript"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0 and "encoder.safetensors, encoder.torchscript.pt" in capsys.readouterr().out
    card = json.loads((out / "encoder.json").read_text())
    assert all(len(entry["sha256"]) == 64 for entry in card["files"].values())
    data = bytearray((out / "encoder.safetensors").read_bytes())
    data[-3] ^= 0x01  # the last tensor's bytes
    (out / "encoder.safetensors").write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert "encoder.safetensors does not match the sha256 in encoder.json: tensor" in err


def test_a_checkpoint_with_the_earlier_sha256_record_still_loads_and_is_checked(tmp_path):
    """selfsup at ab69e0d recorded sha256 digests (hashlib, over the same bytes); they stay readable."""
    import hashlib
    import json

    from selfsup.engine import checkpoint

    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "config": {"method": "simclr"}, "step": 3,
             "data": {"channels": 1, "size": 8}}

    def sha(t):
        digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
        return digest.hexdigest()

    record = {"algorithm": "sha256", "tensors": {"model/w": sha(state["model"]["w"])},
              "config": hashlib.sha256(json.dumps(state["config"], sort_keys=True).encode()).hexdigest()}
    assert checkpoint.verify({**state, "integrity": record}, "old.ckpt") == 1
    damaged = {**state, "model": {"w": state["model"]["w"] + 1}, "integrity": record}
    with pytest.raises(DataError, match="tensor model/w does not match its recorded sha256"):
        checkpoint.verify(damaged, "old.ckpt")


def test_a_checkpoint_whose_run_does_not_read_is_one_line_naming_it(real_checkpoint, tmp_path, capsys):
    # Digests intact (recomputed), contents not selfsup's: no data shape, an unknown method.
    for name, change in (("no_data", lambda st: st.update(data={})),
                         ("no_method", lambda st: st["config"].update(method="nosuch"))):
        state = checkpoint.load(real_checkpoint)
        state.pop("integrity")
        change(state)
        checkpoint.save_atomic(state, tmp_path / f"{name}.ckpt")
        capsys.readouterr()
        assert main(["export", str(tmp_path / f"{name}.ckpt"), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"selfsup: error: checkpoint {tmp_path / f'{name}.ckpt'}: the run it records does "
                              f"not read") and "\n" not in err


def test_a_checkpoint_whose_configuration_reads_the_environment_is_refused(real_checkpoint, tmp_path, capsys,
                                                                              monkeypatch):
    # A sent checkpoint (digests recomputed) naming its run "${oc.env:...}": resolved, the secret would be written
    # into the export's encoder.json, the file a user hands on. Saved configurations are resolved: refused.
    monkeypatch.setenv("SELFSUP_TEST_SECRET", "hunter2-secret")
    from selfsup import cli

    # pretrain and embed tune the process's malloc first (the command line's own setting): not this test process's
    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)
    state = checkpoint.load(real_checkpoint)
    state.pop("integrity")
    state["config"]["name"] = "${oc.env:SELFSUP_TEST_SECRET}"
    sent = tmp_path / "sent.ckpt"
    checkpoint.save_atomic(state, sent)
    for args in (["export", str(sent), "--out", str(tmp_path / "out")], ["embed", str(sent)],
                 ["pretrain", str(sent), "--resume", f"train.out_dir={tmp_path / 'resumed'}"]):
        capsys.readouterr()
        assert main(args) == 2, args
        captured = capsys.readouterr()
        last = captured.err.strip().splitlines()[-1]
        assert last.startswith("selfsup: error:") and "name holds an interpolation" in last, captured.err
        assert "hunter2" not in captured.err + captured.out
    assert not (tmp_path / "out").exists() and not (tmp_path / "resumed").exists()
    assert not any("hunter2" in p.read_text(errors="replace") for p in tmp_path.rglob("*.json"))
