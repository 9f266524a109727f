"""Fixtures shared by several test files, and the ``vision`` marker."""

import importlib.util
import os
import signal
import time

import pytest

VISION = all(importlib.util.find_spec(name) is not None for name in ("torchvision", "timm"))
"""Whether torchvision and timm are installed: not in CI's lower-bound environment (torch 2.13's CPU
build, beside which the registries' torchvision does not import), where ``vision`` tests skip."""


def pytest_collection_modifyitems(config, items):
    if VISION:
        return
    skip = pytest.mark.skip(reason="needs torchvision and timm, absent in the lower-bound torch environment")
    for item in items:
        if "vision" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def restore_umask():
    """Put the process umask back after a test that sets its own."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def kill_after_checkpoint():
    """``kill(run, ckpt)``: wait until the running subprocess ``run`` has written ``ckpt``, then SIGKILL
    it, its whole process group when it leads one (DataLoader workers included)."""

    def kill(run, ckpt, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not ckpt.exists() and time.time() < deadline and run.poll() is None:
            time.sleep(0.05)
        assert run.poll() is None, "the run finished before it could be killed"
        if os.getpgid(run.pid) == run.pid:
            os.killpg(run.pid, signal.SIGKILL)
        else:
            run.send_signal(signal.SIGKILL)
        run.wait()

    return kill


def knn_by_hand(train_x, train_y, test_x, k: int, temperature: float) -> list[int]:
    """InstDisc's weighted kNN vote written out row by row in NumPy float64: cosine similarity, the k
    most similar train rows (ties in train order), each voting exp(s / T) for its class."""
    import numpy as np

    train = np.asarray(train_x, dtype=np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True).clip(1e-12)
    labels = np.asarray(train_y)
    predictions = []
    for row in np.asarray(test_x, dtype=np.float64):
        similarity = train @ (row / max(np.linalg.norm(row), 1e-12))
        nearest = np.argsort(-similarity, kind="stable")[:k]
        votes = np.zeros(int(labels.max()) + 1)
        for j in nearest:
            votes[labels[j]] += np.exp((similarity[j] - similarity[nearest[0]]) / temperature)
        predictions.append(int(np.argmax(votes)))
    return predictions


@pytest.fixture(name="knn_by_hand")
def knn_by_hand_fixture():
    """:func:`knn_by_hand`, for test files (conftest is not imported by name)."""
    return knn_by_hand


@pytest.fixture
def recheck_knn():
    """``recheck_knn(run_dir)``: reload the run's last checkpoint from disk, embed its own train and test
    splits afresh, check the saved test embeddings are that checkpoint's, and return the kNN accuracy the
    run reported beside the one :func:`knn_by_hand` gives on those features (with the run's k and
    temperature), so that a test can assert they agree: a run that evaluated another network, another
    split or a stale copy of its weights disagrees."""
    import json
    from pathlib import Path

    import numpy as np

    def recheck(run) -> tuple[float, float]:
        from selfsup import cli, data, evaluate

        run = Path(run)
        results = json.loads((run / "results.json").read_text())
        entry = results["evaluations"]["knn"]
        cfg, encoder, (channels, size), device, _ = cli.common.load_encoder(str(run / "checkpoints" / "last.ckpt"))
        kind = data.kind_of(cfg.data)
        train, test = (cli.common.dataset(cfg, None, None, split, channels, size) for split in ("train", "test"))
        train_x, test_x = (evaluate.extract_features(encoder, d.inputs, kind=kind) for d in (train, test))
        saved = np.load(run / "test_embeddings.npy")
        np.testing.assert_allclose(saved, test_x.numpy(), rtol=1e-4, atol=1e-5)
        predicted = knn_by_hand(train_x.numpy(), train.labels.numpy(), test_x.numpy(), entry.get("k", 200),
                                entry.get("temperature", 0.1))
        return entry["accuracy"], float(np.mean(np.asarray(predicted) == test.labels.numpy()))

    return recheck
