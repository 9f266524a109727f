"""The selfsup command line: list, pretrain -> evaluate -> embed -> plot, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parent.parent


def selfsup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfsup.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_list_names_every_method_and_recipe():
    out = selfsup("list")
    assert out.returncode == 0, out.stderr
    for word in ("simclr", "SimCLR", "moco", "MoCo", "convnet", "fashion_mnist", "recipes/simclr_fashion_mnist.yaml"):
        assert word in out.stdout


def assert_one_line_error(args, message):
    out = selfsup(*args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("selfsup: error:") and message in last, out.stderr


@pytest.mark.parametrize("args,message", [
    (["pretrain", "recipes/simclr_fashion_mnist.yaml", "train.epohcs=1"], "train.epohcs: Key 'epohcs' not in 'TrainConfig'"),
    (["pretrain", "recipes/missing.yaml"], "recipe recipes/missing.yaml does not exist"),
    (["pretrain", "data.name=fashion_mnist", "data.root=/nonexistent/fm"], "/nonexistent/fm"),
    (["pretrain", "data.name=imagenet"], "unknown dataset 'imagenet'"),
    (["evaluate", "linear", "/nonexistent.ckpt"], "checkpoint /nonexistent.ckpt does not exist"),
])
def test_user_errors_are_one_line(args, message):
    assert_one_line_error(args, message)


def test_corrupt_idx_file_is_reported_by_name(tmp_path):
    folder = tmp_path / "fm"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 3)  # header cut short
    assert_one_line_error(["pretrain", "data.name=fashion_mnist", f"data.root={folder}"], "train-images-idx3-ubyte")


def test_empty_image_folder_is_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(["pretrain", "data.name=folder", f"data.root={tmp_path / 'empty'}", "data.size=16"], "empty")


def test_pretrain_evaluate_embed_plot_round_trip(tmp_path):
    run = tmp_path / "run"
    out = selfsup("pretrain", "data.name=digits", "data.size=16", "backbone.width=8", "method_args.proj_hidden_dim=32",
                  "train.epochs=1", "train.batch_size=64", "train.progress=false", "eval.embedding_map=tsne",
                  f"train.out_dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.splitlines()[0])
    assert 0.1 < summary["linear_accuracy"] <= 1 and 0.1 < summary["knn_accuracy"] <= 1
    for name in ("curves.png", "tsne.png", "results.json", "logs/metrics.csv", "test_embeddings.npy"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = run / "checkpoints" / "last.ckpt"

    knn = selfsup("evaluate", "knn", str(ckpt))
    assert knn.returncode == 0, knn.stderr[-2000:]
    assert json.loads(knn.stdout.splitlines()[-1])["knn_accuracy"] == pytest.approx(summary["knn_accuracy"], abs=1e-4)

    linear = selfsup("evaluate", "linear", str(ckpt))
    assert linear.returncode == 0, linear.stderr[-2000:]
    assert json.loads(linear.stdout.splitlines()[-1])["linear_accuracy"] == pytest.approx(summary["linear_accuracy"], abs=1e-3)

    embed = selfsup("embed", str(ckpt), "digits", "--out", str(tmp_path / "emb"))
    assert embed.returncode == 0, embed.stderr[-2000:]
    features = np.load(tmp_path / "emb" / "digits_test.npy")
    assert features.shape == (360, 64)
    assert np.array_equal(np.load(tmp_path / "emb" / "digits_test_labels.npy"), np.load(run / "test_embeddings_labels.npy"))
    assert np.allclose(features, np.load(run / "test_embeddings.npy"), atol=1e-4)

    plot = selfsup("plot", str(run), "--method", "tsne")
    assert plot.returncode == 0, plot.stderr[-2000:]


def test_python_dash_m_selfsup_is_the_command_line():
    def python_m_selfsup(*args):
        return subprocess.run([sys.executable, "-m", "selfsup", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)

    out = python_m_selfsup("list")
    assert out.returncode == 0, out.stderr
    assert "methods:" in out.stdout and "simclr" in out.stdout
    assert python_m_selfsup("pretrain", "recipes/missing.yaml").returncode == 2  # the usage-error status comes through
