"""The training engine under real DDP: 2 gloo CPU processes started by torchrun and by Fabric itself."""

import json
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.engine import load_checkpoint

pytestmark = pytest.mark.distributed


def _check_two_rank_run(out_dir: Path) -> None:
    state = load_checkpoint(out_dir / "checkpoints" / "last.ckpt")
    # digits: 1437 training images, global batch 64 split 32 + 32 -> 22 steps per epoch
    assert state["step"] == 22
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0], state["rng"][1])
    assert len(state["history"]["knn"]) == 1 and 0.1 < state["history"]["knn"][0][1] <= 1.0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_pretrain_command_self_launched_by_fabric(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "selfsup", "pretrain", "name=digits_test", "data.name=digits", "data.size=16",
           "backbone.width=8", "train.batch_size=64", "train.progress=false", "train.knn_every=1",
           "train.knn_train_samples=500", "eval.plots=false", "eval.save_embeddings=false", "eval.linear=false",
           "eval.floor=false", f"train.out_dir={out}", "train.epochs=1", "train.accelerator=cpu", "train.devices=2",
           "train.strategy=ddp", "method_args.proj_hidden_dim=32", "method_args.proj_dim=16"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_two_rank_run(out)
    # Both ranks return from pretrain; only rank 0, which evaluated and wrote the files, says so.
    assert result.stdout.count("checkpoint:") == 1 and f"checkpoint: {out / 'checkpoints' / 'last.ckpt'}" in result.stdout


def _train_ranks(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).parent / "scripts" / "train_ranks.py"), str(tmp_path), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _ranks(tmp_path: Path) -> list[dict]:
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


JOBS = {
    "byol": ["method=byol", "method_args.proj_hidden_dim=32", "method_args.proj_dim=16", "method_args.pred_hidden_dim=32"],
    "simsiam": ["method=simsiam", "method_args.proj_hidden_dim=32", "method_args.proj_dim=16",
                "method_args.pred_hidden_dim=32"],
    "moco": ["method=moco", "method_args.queue_size=96", "method_args.proj_hidden_dim=32", "train.sync_batchnorm=true",
             "train.knn_every=1", "train.knn_train_samples=500"],
    "dino": ["method=dino", "method_args.out_dim=64", "method_args.hidden_dim=32", "method_args.bottleneck_dim=16",
             "augment.n_local=2", "augment.local.size=8"],
    "instdisc": ["--finish", "method=instdisc", "method_args.num_noise=64", "eval.plots=false", "eval.linear=false"],
    "diverges": ["optim.lr=1e8", "optim.warmup_epochs=0", "method_args.proj_hidden_dim=32"],
    # Rank 1's loss is NaN, rank 0's is not; both must stop at the same step instead of one waiting
    # in the queue's all-gather while the other has left (and then run the next job together).
    "nan_on_rank1": ["method=moco_nan_on_rank1", "method_args.queue_size=96", "method_args.proj_hidden_dim=32",
                     "method_args.proj_dim=16"],
    # Rank 1 starts planning train.time_limit half a second after rank 0 (about 50 steps here): both must
    # run rank 0's number of steps, not each its own, which would leave one waiting for the other.
    "time_limit": ["--rank1-plans-late", "train.time_limit=4s", "method_args.proj_hidden_dim=16",
                   "method_args.proj_dim=8"],
    "after_nan": ["method=simsiam", "method_args.proj_hidden_dim=16", "method_args.proj_dim=8",
                  "method_args.pred_hidden_dim=8", "train.epochs=0.2"],
    # CLIP on a ViT (no BatchNorm) gathers captions and images as negatives: with micro-batches of 8 the
    # two ranks must end where the plain full-batch run ends.
    **{name: ["method=clip", "data.captions=templates", "backbone.name=vit_tiny", "method_args.embed_dim=8",
              "method_args.text_width=16", "method_args.text_layers=1", "method_args.text_heads=2",
              "method_args.context_length=8", "train.epochs=0.1", "train.precision=32-true", *extra]
       for name, extra in (("clip_plain", []), ("clip_cached", ["train.micro_batch_size=8"]))},
}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """The runs that finish, all in one torchrun launch (one set of imports and process group)."""
    out = tmp_path_factory.mktemp("train_ranks")
    folder = out / "images"  # for the streamed job: 128 train and 32 test PNGs in two class folders
    rng = np.random.default_rng(0)
    for k in range(160):
        where = folder / ("train" if k < 128 else "test") / f"class{k % 2}"
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(where / f"{k}.png")
    streamed = ["--finish", "method=simsiam", "method_args.proj_hidden_dim=32", "method_args.proj_dim=16",
                "method_args.pred_hidden_dim=32", "data.name=folder", f"data.root={folder}", "data.stream=true",
                "data.size=16", "data.workers=1", "train.batch_size=32", "eval.plots=false", "eval.linear=false"]
    from selfsup.data.synthetic_video import write_synthetic_videos

    videos = write_synthetic_videos(out / "videos", videos=10, frames=6, size=32, sprites="digits")  # 8 train, 2 test
    video = ["--finish", "method=video_colorization", "data.name=video", f"data.root={videos}", "data.size=32",
             "data.clips_per_video=4", "train.batch_size=8", "method_args.dim=8", "method_args.references=2",
             "eval.plots=false", "eval.linear=false"]
    video_streamed = [*video, "data.stream=true", "data.workers=1"]  # clips decoded by each rank's workers
    speech = out / "speech"  # 2 speakers x 5 tones (every fifth file is the test split) and one unreadable file
    for s, freq in enumerate((220.0, 330.0)):
        (speech / f"spk{s}").mkdir(parents=True)
        for i in range(5):
            tone = np.round(8000 * np.sin(2 * np.pi * freq * (1 + 0.05 * i) * np.arange(4000) / 8000)).astype("<i2")
            with wave.open(str(speech / f"spk{s}" / f"{i}.wav"), "wb") as f:
                f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000)
                f.writeframes(tone.tobytes())
    (speech / "spk0" / "broken.wav").write_bytes(b"not a RIFF file")
    wav = ["--finish", "method=cpc_sequence", "data.name=wav", f"data.root={speech}", "data.sample_rate=8000",
           "data.window=1600", "data.eval_windows=2", "backbone.name=cpc_audio", "backbone.width=2",
           "method_args.hidden=8", "method_args.prediction_steps=[1,2]", "train.batch_size=4", "eval.plots=false",
           "eval.linear=false", "optim.name=adamw", "optim.lr=1e-3"]
    (out / "jobs.json").write_text(json.dumps({**JOBS, "streamed": streamed, "video": video,
                                               "video_streamed": video_streamed, "wav": wav}))
    result = _train_ranks(out, "--jobs", str(out / "jobs.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_global_batchnorm_methods_keep_equal_statistics_on_every_rank(jobs, method):
    first, second = _ranks(jobs / method)
    assert set(first["norms"].values()) == {"GlobalBatchNorm"}  # every BN: backbone, heads (and BYOL's target)
    # Buffers are never broadcast (broadcast_buffers=False): they agree because global BN computed them
    # from the same global batches on both ranks.
    for name, value in first["buffers"].items():
        torch.testing.assert_close(second["buffers"][name], value, atol=1e-5, rtol=1e-5, msg=name)


def test_moco_under_torchrun_keeps_per_device_batchnorm_and_equal_queues(jobs):
    _check_two_rank_run(jobs / "moco" / "run")
    first, second = _ranks(jobs / "moco")
    key_norms = {n: kind for n, kind in first["norms"].items() if n.startswith("key_encoder.")}
    # Excluded from global BN: shuffle-BN instead, each rank's own statistics (SplitBatchNorm is plain BN
    # under DDP, where every rank is a device).
    assert key_norms and set(key_norms.values()) == {"SplitBatchNorm"}
    assert {kind for n, kind in first["norms"].items() if n.startswith("backbone.")} == {"GlobalBatchNorm"}
    torch.testing.assert_close(first["buffers"]["queue.keys"], second["buffers"]["queue.keys"], atol=0, rtol=0)
    assert not torch.equal(first["buffers"]["key_encoder.0.net.1.running_mean"],
                           second["buffers"]["key_encoder.0.net.1.running_mean"])  # each rank's own sub-batches


def test_dino_centre_is_equal_on_every_rank(jobs):
    first, second = _ranks(jobs / "dino")
    torch.testing.assert_close(first["buffers"]["criterion.center"], second["buffers"]["criterion.center"])
    assert first["buffers"]["criterion.center"].abs().sum() > 0


def test_a_divergence_stops_both_ranks_together(jobs):
    messages = [(jobs / "diverges" / f"rank{r}.diverged").read_text() for r in range(2)]
    assert all(message.startswith("simclr: ") and " at step " in message for message in messages)
    steps = [int(re.search(r" at step (\d+) ", message).group(1)) for message in messages]
    assert steps[0] == steps[1], messages  # the same step on both ranks, not one rank a step later


def test_a_time_limit_plans_the_same_steps_on_every_rank(jobs):
    state = load_checkpoint(jobs / "time_limit" / "run" / "checkpoints" / "last.ckpt")
    assert state["run"]["time_plan"]["time_limit_s"] == 4 and state["step"] == state["run"]["max_steps"]
    first, second = _ranks(jobs / "time_limit")  # both ranks finished (had one planned more, it would hang)
    for name, value in first["params"].items():
        torch.testing.assert_close(second["params"][name], value, msg=name)


def test_nan_on_one_rank_stops_both_without_hanging(jobs):
    messages = [(jobs / "nan_on_rank1" / f"rank{r}.diverged").read_text() for r in range(2)]
    assert "another rank's loss is NaN/Inf at step 2 " in messages[0]
    assert "the loss is nan at step 2 " in messages[1]
    assert not (jobs / "nan_on_rank1" / "rank0.pt").exists()
    assert all((jobs / "after_nan" / f"rank{r}.pt").exists() for r in range(2))  # the ranks went on together



def test_gradient_caching_under_torchrun_ends_where_the_full_batch_run_ends(jobs):
    for rank, (plain, cached) in enumerate(zip(_ranks(jobs / "clip_plain"), _ranks(jobs / "clip_cached"))):
        assert plain["params"].keys() == cached["params"].keys()
        for key, value in plain["params"].items():
            torch.testing.assert_close(cached["params"][key], value, atol=1e-5, rtol=1e-4, msg=f"rank {rank}: {key}")


def test_instdisc_bank_is_equal_on_every_rank_and_evaluated(jobs, recheck_knn, knn_by_hand):
    from selfsup import cli, data

    first, second = _ranks(jobs / "instdisc")
    torch.testing.assert_close(first["buffers"]["bank.features"], second["buffers"]["bank.features"], atol=0, rtol=0)
    torch.testing.assert_close(first["buffers"]["log_z"], second["buffers"]["log_z"], atol=0, rtol=0)
    run = jobs / "instdisc" / "run"
    results = json.loads((run / "results.json").read_text())
    # The paper's kNN by hand: the ranks' bank (one row per training digit, in dataset order) against the
    # checkpoint's 128-d normalised features of the test digits.
    _, method, (channels, size), _, _ = cli.common.load_method(str(run / "checkpoints" / "last.ckpt"))
    torch.testing.assert_close(method.bank.features, first["buffers"]["bank.features"], atol=0, rtol=0)
    train, test = (data.load("digits", split, size=size, channels=channels) for split in ("train", "test"))
    with torch.no_grad():
        method.eval()
        test_x = method.embed(test.images.float() / 255)
    entry = results["evaluations"]["bank_knn"]
    predicted = knn_by_hand(method.bank.features.numpy(), train.labels.numpy(), test_x.numpy(), entry["k"],
                            entry["temperature"])
    assert entry["accuracy"] == pytest.approx(float(np.mean(np.asarray(predicted) == test.labels.numpy())), abs=1e-6)
    reported, by_hand = recheck_knn(run)  # and the shared kNN on the backbone's features
    assert reported == pytest.approx(by_hand, abs=1e-6)



def test_a_streamed_folder_trains_under_torchrun_on_equal_global_batches(jobs, recheck_knn):
    """Each rank's DataLoader workers read its half of every global batch: global BatchNorm then gives
    both ranks the same statistics, and rank 0 streams the evaluation."""
    first, second = _ranks(jobs / "streamed")
    from selfsup.data.sources import epoch_order

    # Each rank's workers read its own half of the global batch, which is the in-memory source's (seed 0).
    assert len(first["first_batch"]) == len(second["first_batch"]) == 16
    global_batch = torch.cat([first["first_batch"], second["first_batch"]])
    assert torch.equal(global_batch, epoch_order(128, 0, 0)[:32])
    for name, value in first["buffers"].items():
        torch.testing.assert_close(second["buffers"][name], value, atol=1e-5, rtol=1e-5, msg=name)
    state = load_checkpoint(jobs / "streamed" / "run" / "checkpoints" / "last.ckpt")
    assert state["step"] == 4  # 128 images, global batch 32
    results = json.loads((jobs / "streamed" / "run" / "results.json").read_text())
    assert results["devices"] == 2
    reported, by_hand = recheck_knn(jobs / "streamed" / "run")  # rank 0 streamed the evaluation of the checkpoint
    assert reported == pytest.approx(by_hand, abs=1e-6)


def test_a_wav_folder_with_an_unreadable_file_trains_under_torchrun_and_reports_it_once(jobs):
    """Every rank's unreadable files are gathered into rank 0's report at the end of training (a WAV
    folder's, too: its skipped files were once a list, which the gathering could not merge)."""
    results = json.loads((jobs / "wav" / "run" / "results.json").read_text())
    assert results["devices"] == 2 and results["steps"] == 4  # 8 training files x 2 windows, global batch 4
    assert [Path(s["path"]).name for s in results["skipped_files"]] == ["broken.wav"]
    first, second = _ranks(jobs / "wav")
    for name, value in first["params"].items():
        torch.testing.assert_close(second["params"][name], value, msg=name)


def test_video_clips_split_over_ranks_and_both_ranks_share_one_colour_clustering(jobs):
    """Each rank takes its half of every global batch of clips; the k-means colour centres fitted on
    the first batch are rank 0's on both ranks (broadcast), and the evaluation reports propagation."""
    first, second = _ranks(jobs / "video")
    from selfsup.data.sources import epoch_order

    assert torch.equal(torch.cat([first["first_batch"], second["first_batch"]]), epoch_order(32, 0, 0)[:8])
    assert torch.equal(first["buffers"]["centres"], second["buffers"]["centres"])
    for name, value in first["params"].items():
        torch.testing.assert_close(second["params"][name], value, msg=name)
    results = json.loads((jobs / "video" / "run" / "results.json").read_text())
    assert results["devices"] == 2 and results["steps"] == 4  # 8 videos x 4 clips, global batch 8
    assert "random_init" in results["evaluations"]["propagation"]


def test_streamed_video_under_torchrun_ends_where_the_in_memory_run_ends(jobs):
    """Each rank's DataLoader workers decode its half of every global batch of clips: the same clips as
    the in-memory source's, so the two 2-rank runs end with the same weights."""
    for rank, (memory, streamed) in enumerate(zip(_ranks(jobs / "video"), _ranks(jobs / "video_streamed"))):
        assert torch.equal(streamed["first_batch"], memory["first_batch"])
        for name, value in memory["params"].items():
            torch.testing.assert_close(streamed["params"][name], value, atol=1e-6, rtol=1e-5, msg=f"rank {rank}: {name}")
    results = json.loads((jobs / "video_streamed" / "run" / "results.json").read_text())
    assert results["devices"] == 2 and results["steps"] == 4
