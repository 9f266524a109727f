"""What long runs on shared machines meet: a folder that holds another run, a requeued job (--resume
auto), SIGTERM before preemption, a disk that fills during a checkpoint, a 2-rank job killed and
resumed, a rank that dies. Each ends with a checkpoint that resumes to bit-identical weights, or one
line saying what happened."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.engine import load_checkpoint

TINY = ["data.name=digits", "data.size=16", "backbone.width=4", "method_args.proj_hidden_dim=16",
        "method_args.proj_dim=8", "train.batch_size=64", "train.progress=false", "train.knn_every=0",
        "eval.plots=false", "eval.save_embeddings=false", "eval.linear=false", "eval.floor=false"]
# digits: 1437 training images, batch 64 -> 22 steps per epoch


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfsup", *args], capture_output=True, text=True, timeout=600,
                          **kwargs)


def _same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["step"] == second["step"]
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    for key in ("optimizer", "rng"):
        assert repr(first[key]) == repr(second[key]), key
    for curve in ("loss", "lr", "knn"):  # the logged curves too (images/s is a clock's, not the run's)
        assert first["history"][curve] == second["history"][curve], curve


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """A 3-epoch run nothing happened to: what every interrupted one must end as."""
    out = tmp_path_factory.mktemp("whole") / "run"
    done = _cli("pretrain", *TINY, "train.epochs=3", f"train.out_dir={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "checkpoints" / "last.ckpt"


def test_a_folder_that_holds_another_run_is_refused_unless_told(tmp_path, capsys, monkeypatch):
    from selfsup import cli

    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "train.epochs=0.2", f"train.out_dir={out}"]) == 0
    capsys.readouterr()
    (out / "evaluations").mkdir()
    (out / "evaluations" / "knn.json").write_text("{}")  # a later evaluation of the first run
    assert main(["pretrain", *TINY, "train.epochs=0.2", f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"selfsup: error: train.out_dir: {out} holds another run (a checkpoint); continue it with "
                   f"--resume, start it over with --overwrite, or give this run another name (name=... or "
                   f"train.out_dir=...)")
    assert main(["pretrain", *TINY, "train.epochs=0.2", f"train.out_dir={out}", "--overwrite"]) == 0
    assert not (out / "evaluations").exists()  # the old run's files went with it
    assert main(["pretrain", *TINY, f"train.out_dir={out}", "--resume", "--overwrite"]) == 2
    # A checkpoint from elsewhere (a colleague's, whose out_dir is this same folder) continues into that folder:
    # the run there is another one, refused; the checkpoint continues in a folder of its own.
    colleague = tmp_path / "colleague.ckpt"
    colleague.write_bytes((out / "checkpoints" / "last.ckpt").read_bytes())
    assert main(["pretrain", *TINY, "train.epochs=0.3", f"train.out_dir={out}", "--overwrite"]) == 0
    before = (out / "checkpoints" / "last.ckpt").read_bytes()
    capsys.readouterr()
    assert main(["pretrain", str(colleague), "--resume"]) == 2
    assert f"holds another run (a checkpoint) than the checkpoint {colleague} continues" in capsys.readouterr().err
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == before  # nothing of that run lost
    assert main(["pretrain", str(colleague), "--resume", f"train.out_dir={tmp_path / 'mine'}"]) == 0
    # Its own checkpoints resume in place as before.
    assert main(["pretrain", str(out / "checkpoints" / "last.ckpt"), "--resume", "train.epochs=0.4"]) == 0


def test_resume_auto_starts_or_continues(tmp_path, uninterrupted):
    out = tmp_path / "run"
    first = _cli("pretrain", *TINY, "train.epochs=1", f"train.out_dir={out}", "--resume", "auto")
    assert first.returncode == 0 and f"no checkpoint yet in {out}" in first.stderr
    # Extended to 3 epochs by the same command a requeued job runs (overrides after --resume too).
    again = _cli("pretrain", *TINY, f"train.out_dir={out}", "--resume", "auto", "train.epochs=3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"continuing the checkpoint in {out}" in again.stderr and "resuming at step 22 of 66" in again.stderr
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["step"] == 66


def test_sigterm_stops_after_the_step_with_a_checkpoint_that_resumes_exactly(tmp_path, uninterrupted):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "selfsup", "pretrain", *TINY, "train.epochs=3", f"train.out_dir={out}"]
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:  # after the first epoch
        time.sleep(0.02)
    running.send_signal(signal.SIGTERM)
    stdout, stderr = running.communicate(timeout=120)
    assert running.returncode == 75, stderr[-2000:]
    step = load_checkpoint(out / "checkpoints" / "last.ckpt")["step"]
    assert 22 <= step < 66
    assert f"stopped by SIGTERM after step {step} of 66" in stderr and "requeue me" in stderr
    assert not (out / "results.json").exists()  # no evaluation of a run that has not finished
    resumed = _cli("pretrain", *TINY, "train.epochs=3", f"train.out_dir={out}", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_weights(out / "checkpoints" / "last.ckpt", uninterrupted)


def test_a_full_disk_keeps_the_last_checkpoint_and_the_resume_ends_identical(tmp_path, uninterrupted):
    out = tmp_path / "run"
    # The first checkpoint is written; then the file-size limit drops below a checkpoint's size, as a
    # filling disk would: the second write fails part-way.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        from selfsup.engine import checkpoint
        real = checkpoint.save_atomic
        def save_then_fill(state, path):
            written = real(state, path)
            limit = written.stat().st_size // 2
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            return written
        checkpoint.save_atomic = save_then_fill
        from selfsup.cli import main
        sys.exit(main({["pretrain", *TINY, "train.epochs=3", f"train.out_dir={out}"]!r}))
    """)
    full = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert full.returncode == 2, full.stderr[-2000:]
    line, = [line for line in full.stderr.splitlines() if line.startswith("selfsup: error:")]
    assert f"could not write checkpoint {out / 'checkpoints' / 'last.ckpt'} (File too large)" in line
    assert "it needs about" in line and "the previous checkpoint there is intact" in line
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["step"] == 22  # the first, whole and verified
    assert not list((out / "checkpoints").glob(".*tmp"))  # the cut temporary was removed
    resumed = _cli("pretrain", *TINY, "train.epochs=3", f"train.out_dir={out}", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_weights(out / "checkpoints" / "last.ckpt", uninterrupted)


def _torchrun(script: str, *args: str, restarts: int = 0, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               f"--max-restarts={restarts}", "--monitor-interval=0.5", script, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kwargs)


RANKS = ["train.devices=2", "train.accelerator=cpu", "train.strategy=ddp"]
SCRIPT = str(Path(__file__).parent / "scripts" / "cli_main.py")


@pytest.fixture(scope="module")
def two_ranks_uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two") / "run"
    run = _torchrun(SCRIPT, "pretrain", *TINY, *RANKS, "train.epochs=3", f"train.out_dir={out}")
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.distributed
@pytest.mark.slow
def test_a_two_rank_job_killed_and_resumed_ends_identical(tmp_path, two_ranks_uninterrupted, kill_after_checkpoint):
    out = tmp_path / "run"
    command = ["pretrain", *TINY, *RANKS, "train.epochs=3", f"train.out_dir={out}"]
    running = _torchrun(SCRIPT, *command)
    kill_after_checkpoint(running, out / "checkpoints" / "last.ckpt")  # SIGKILL the job, both ranks
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["step"] < 66
    resumed = _torchrun(SCRIPT, *command, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    _same_weights(out / "checkpoints" / "last.ckpt", two_ranks_uninterrupted)
    # One process cannot continue what two wrote (each rank's RNG is in the checkpoint): refused, named.
    alone = _cli("pretrain", *TINY, "train.epochs=4", f"train.out_dir={out}", "--resume")
    line = alone.stderr.splitlines()[-1]
    assert alone.returncode == 2 and line.startswith("selfsup: error: train.") and "a resumed run" in line


@pytest.mark.distributed
@pytest.mark.slow
def test_sigterm_to_a_torchrun_job_stops_both_ranks_at_one_step_with_a_checkpoint(tmp_path, two_ranks_uninterrupted):
    out = tmp_path / "run"
    command = ["pretrain", *TINY, *RANKS, "train.epochs=3", f"train.out_dir={out}"]
    job = _torchrun(SCRIPT, *command)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)  # to the launcher, as a scheduler's scancel reaches it; it tells its workers
    output, _ = job.communicate(timeout=120)
    step = load_checkpoint(out / "checkpoints" / "last.ckpt")["step"]
    assert 22 <= step < 66 and f"stopped by SIGTERM after step {step} of 66" in output, output[-3000:]
    resumed = _torchrun(SCRIPT, *command, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    _same_weights(out / "checkpoints" / "last.ckpt", two_ranks_uninterrupted)


def _rank_one(job: subprocess.Popen):
    import psutil

    for child in psutil.Process(job.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == "1" and "cli_main.py" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


@pytest.mark.distributed
@pytest.mark.slow
def test_a_rank_that_dies_is_restarted_from_the_checkpoint_and_ends_identical(tmp_path, two_ranks_uninterrupted):
    out = tmp_path / "run"
    job = _torchrun(SCRIPT, "pretrain", *TINY, *RANKS, "train.epochs=3", f"train.out_dir={out}", "--resume", "auto",
                    restarts=1)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.05)
    victim = _rank_one(job)
    assert victim is not None
    victim.kill()  # rank 1 dies mid-epoch; torchrun restarts both from the command: --resume auto
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-3000:]
    assert "continuing the checkpoint in" in output
    _same_weights(out / "checkpoints" / "last.ckpt", two_ranks_uninterrupted)


@pytest.mark.distributed
@pytest.mark.slow
def test_without_restarts_the_surviving_rank_stops_in_bounded_time_naming_the_dead_one(tmp_path):
    out = tmp_path / "run"
    job = _torchrun(SCRIPT, "pretrain", *TINY, *RANKS, "train.epochs=20", f"train.out_dir={out}")
    deadline = time.time() + 300
    while not (out / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.05)
    victim = _rank_one(job)
    killed = time.time()
    victim.kill()
    output, _ = job.communicate(timeout=120)  # never a hang: bounded well below the process group's timeout
    assert time.time() - killed < 90 and job.returncode != 0
    assert "rank      : 1" in output or "rank: 1" in output, output[-3000:]  # torchrun's report names the dead one
    assert "selfsup: rank 0 stops: another rank of this job stopped first" in output  # one line, no traceback
    assert "Traceback" not in output.split("selfsup: rank 0 stops")[0].split("Initializing distributed")[-1]
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["step"] >= 22  # the last good checkpoint is whole


def test_keep_last_and_save_best_keep_the_checkpoints_they_name(tmp_path):
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    out = tmp_path / "run"
    cfg = load_config(None, [*TINY, "train.epochs=4", "train.checkpoint_every=8", "train.keep_last=2",
                             "train.save_best=knn", "train.knn_every=1", "train.knn_train_samples=300",
                             f"train.out_dir={out}"])
    pretrain(cfg)
    folder = out / "checkpoints"
    # Checkpoints at every 8 steps and every epoch end (22 steps): 8, 16, 22, 24, 32, 40, 44, 48, ..., 88.
    saved = sorted({s for s in range(1, 89) if s % 8 == 0 or s % 22 == 0})
    assert sorted(p.name for p in folder.glob("step-*.ckpt")) == sorted(f"step-{s}.ckpt" for s in saved[-2:])
    history = load_checkpoint(folder / "last.ckpt")["history"]["knn"]  # measured at each epoch end
    best_step, best_knn = max(history, key=lambda point: (point[1], -point[0]))
    best = load_checkpoint(folder / "best.ckpt")
    assert best["step"] == best_step and best["history"]["knn"][-1] == (best_step, best_knn)
    listed = json.loads((out / "results.json").read_text())["checkpoints"]
    assert listed["best"] == {"path": str(folder / "best.ckpt"), "metric": "knn", "value": best_knn, "step": best_step}
    assert listed["steps"] == [str(folder / f"step-{s}.ckpt") for s in saved[-2:]]
    with pytest.raises(Exception, match="train.save_best=knn keeps the checkpoint of the best kNN monitor"):
        pretrain(load_config(None, [*TINY, "train.save_best=knn", f"train.out_dir={tmp_path / 'other'}"]))


def test_a_resumed_run_keeps_the_best_checkpoint_it_had(tmp_path):
    # train.save_best=loss with a loss logged and a checkpoint written every step: best.ckpt is the step of
    # the lowest loss over the whole run, the part before the resume included. Here (digits, the first steps
    # of the 22-step warmup) the lowest is step 2, before the resume at step 5, and step 6 is worse by 0.1:
    # the resumed run must not take step 6 for its best because it forgot the score it had.
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    out, folder = tmp_path / "run", tmp_path / "run" / "checkpoints"
    settings = [*TINY, "eval.knn=false", "train.save_best=loss", "train.log_every=1", "train.checkpoint_every=1",
                f"train.out_dir={out}"]
    pretrain(load_config(None, [*settings, "train.epochs=0.2"]))  # steps 1..5
    before = load_checkpoint(folder / "best.ckpt")["step"]
    pretrain(load_config(None, [*settings, "train.epochs=0.25"]), resume=True)  # step 6
    losses = load_checkpoint(folder / "last.ckpt")["history"]["loss"]
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6]
    best_step, best_loss = min(losses, key=lambda point: (point[1], point[0]))
    assert best_step == before < 6  # what this test needs: the best score comes from before the resume
    assert load_checkpoint(folder / "best.ckpt")["step"] == best_step
    listed = json.loads((out / "results.json").read_text())["checkpoints"]["best"]
    assert listed == {"path": str(folder / "best.ckpt"), "metric": "loss", "value": best_loss, "step": best_step}
