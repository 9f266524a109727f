"""Tests for selfsup.evaluate against independent references (loops, scikit-learn, properties)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from selfsup.evaluate import (extract_features, knn_accuracy, knn_predict, linear_probe, plot_curves,
                              plot_embedding, save_embeddings)
from selfsup.evaluate._common import stratified_sample


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tests run many tiny ops; on a shared 2-core machine, OpenMP threads spinning for a
    # busy core make them up to 100x slower. Restored afterwards for the other test files.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- kNN

def knn_reference(train_x, train_y, test_x, k, temperature):
    """InstDisc weighted vote, written out per test row in float64 Python."""
    train = [[float(v) for v in row] for row in train_x]
    labels = [int(v) for v in train_y]
    predictions = []
    for row in test_x:
        query = [float(v) for v in row]
        query_norm = math.sqrt(sum(v * v for v in query))
        similarities = []
        for train_row in train:
            norm = math.sqrt(sum(v * v for v in train_row))
            similarities.append(sum(a * b for a, b in zip(query, train_row)) / (query_norm * norm))
        order = sorted(range(len(train)), key=lambda j: (-similarities[j], j))[:min(k, len(train))]
        scores = [0.0] * (max(labels) + 1)
        for j in order:
            scores[labels[j]] += math.exp(similarities[j] / temperature)
        predictions.append(max(range(len(scores)), key=lambda c: (scores[c], -c)))
    return predictions


@pytest.mark.parametrize("k", [1, 5, 17])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_matches_reference_loop(k, temperature):
    generator = torch.Generator().manual_seed(k)
    train_x = torch.randn(30, 6, generator=generator, dtype=torch.float64)
    train_y = torch.randint(0, 4, (30,), generator=generator)
    test_x = torch.randn(25, 6, generator=generator, dtype=torch.float64)
    predicted = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature, batch_size=7)
    assert predicted.tolist() == knn_reference(train_x, train_y, test_x, k, temperature)


def test_knn_ties_at_kth_neighbour_go_by_train_index():
    # Rows 1-5 are identical (similarity 1 to the query); k = 3 must take rows 1, 2, 3 -> labels
    # 0, 1, 1 -> class 1, while rows 1, 4, 5 (labels 0, 0, 0) would give class 0.
    train_x = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0],
                            [0.0, 1.0]])
    train_y = torch.tensor([2, 0, 1, 1, 0, 0, 2])
    # Mix a tie-free row into the batch so both paths of the selection run together.
    test_x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    predicted = knn_predict(train_x, train_y, test_x, k=3, temperature=0.1)
    assert predicted.tolist() == knn_reference(train_x, train_y, test_x, 3, 0.1) == [1, 2, 1]


def test_knn_equal_class_scores_go_to_lower_label():
    train_x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    train_y = torch.tensor([3, 1, 0])
    assert knn_predict(train_x, train_y, torch.tensor([[1.0, 0.0]]), k=2).tolist() == [1]


def test_knn_k_larger_than_train_set_is_clamped():
    generator = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(8, 3, generator=generator), torch.randn(10, 3, generator=generator)
    train_y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    clamped = knn_predict(train_x, train_y, test_x, k=1000, temperature=0.2)
    assert clamped.tolist() == knn_reference(train_x, train_y, test_x, 8, 0.2)


def test_knn_temperature_turns_weighted_vote_into_majority_vote():
    # One class-1 neighbour at similarity 1, two class-0 neighbours at similarity 0.6.
    train_x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])
    train_y = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    majority = int(torch.mode(train_y).values)
    assert majority == 0
    sharp = knn_predict(train_x, train_y, query, k=3, temperature=0.1)
    flat = knn_predict(train_x, train_y, query, k=3, temperature=100.0)
    assert sharp.tolist() == knn_reference(train_x, train_y, query, 3, 0.1) == [1]
    assert flat.tolist() == knn_reference(train_x, train_y, query, 3, 100.0) == [majority]


def test_knn_small_temperature_stays_finite():
    # exp(1 / 0.001) overflows float32; the vote must still pick the nearest class.
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    predicted = knn_predict(train_x, torch.tensor([2, 1, 0]), torch.tensor([[1.0, 0.05]]), k=3,
                            temperature=1e-3)
    assert predicted.tolist() == [2]


def test_knn_accuracy_matches_reference_and_scale_invariance():
    generator = torch.Generator().manual_seed(3)
    train_x = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    train_y = torch.randint(0, 3, (40,), generator=generator)
    test_x = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    test_y = torch.randint(0, 3, (20,), generator=generator)
    expected = np.mean(np.array(knn_reference(train_x, train_y, test_x, 7, 0.1)) == test_y.numpy())
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=7) == pytest.approx(expected)
    # Cosine similarity ignores the scale of each row.
    scaled = knn_accuracy(train_x * torch.rand(40, 1, dtype=torch.float64) * 10, train_y,
                          test_x * 3, test_y, k=7)
    assert scaled == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, "k must be"),
    ({"temperature": 0.0}, "temperature"),
    ({"num_classes": 2}, "num_classes"),
])
def test_knn_rejects_bad_settings(kwargs, match):
    train_x, train_y = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=match):
        knn_predict(train_x, train_y, torch.randn(3, 2), **kwargs)


def test_knn_rejects_bad_inputs():
    with pytest.raises(ValueError, match="train_y"):
        knn_predict(torch.randn(6, 2), torch.tensor([0, 1]), torch.randn(3, 2))
    with pytest.raises(ValueError, match="test_x"):
        knn_predict(torch.randn(6, 2), torch.zeros(6, dtype=torch.long), torch.randn(3, 4))
    with pytest.raises(ValueError, match="test_y"):
        knn_accuracy(torch.randn(6, 2), torch.zeros(6, dtype=torch.long), torch.randn(3, 2),
                     torch.zeros(3))


# ---------------------------------------------------------------- linear probe

def blobs(rng, means, count, spread):
    labels = rng.integers(0, len(means), count)
    return means[labels] + rng.normal(size=(count, means.shape[1])) * spread, labels


def test_probe_separable_blobs_reach_full_accuracy():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 10)) * 6
    train_x, train_y = blobs(rng, means, 300, 1.0)
    test_x, test_y = blobs(rng, means, 300, 1.0)
    result = linear_probe(torch.tensor(train_x), torch.tensor(train_y), torch.tensor(test_x),
                          torch.tensor(test_y))
    assert result.accuracy >= 0.99
    assert result.train_accuracy >= 0.99
    assert result.weight_decay in result.val_accuracies


@pytest.mark.parametrize("C", [0.01, 0.5, 10.0])
def test_probe_matches_sklearn_logistic_regression(C):
    rng = np.random.default_rng(1)
    means = rng.normal(size=(4, 20)) * 0.5
    spread = rng.uniform(0.5, 3, 20)
    train_x, train_y = blobs(rng, means, 600, spread)
    test_x, test_y = blobs(rng, means, 1000, spread)
    train_x, test_x = train_x + 5, test_x + 5  # standardisation must remove the offset
    scaler = StandardScaler().fit(train_x)
    reference = LogisticRegression(C=C, max_iter=10_000, tol=1e-10).fit(scaler.transform(train_x), train_y)
    # sklearn minimises C * sum(CE) + ||W||^2 / 2, i.e. mean(CE) + ||W||^2 / (2 C N).
    result = linear_probe(torch.tensor(train_x, dtype=torch.float32), torch.tensor(train_y),
                          torch.tensor(test_x, dtype=torch.float32), torch.tensor(test_y),
                          weight_decays=(1 / (C * len(train_x)),))
    assert result.accuracy == pytest.approx(reference.score(scaler.transform(test_x), test_y), abs=0.01)
    np.testing.assert_allclose(result.weight.numpy(), reference.coef_, atol=2e-3)
    standardised = torch.tensor(scaler.transform(test_x), dtype=torch.float32)
    probabilities = torch.softmax(standardised @ result.weight.T + result.bias, dim=1).numpy()
    np.testing.assert_allclose(probabilities, reference.predict_proba(scaler.transform(test_x)), atol=2e-3)
    assert result.predict(test_x).tolist() == reference.predict(scaler.transform(test_x)).tolist()


def test_probe_chooses_on_the_held_out_rows_then_refits_on_all_rows_as_sklearn():
    # The protocol by hand with sklearn: each lambda fitted on the 90% of the rows outside the stratified
    # validation draw (C = 1 / (lambda * 108)), the best validation accuracy chosen, then refitted on all
    # 120 rows (C = 1 / (lambda * 120)).
    rng = np.random.default_rng(2)
    means = rng.normal(size=(3, 6)) * 0.8
    train_x, train_y = blobs(rng, means, 120, 1.0)
    test_x, test_y = blobs(rng, means, 50, 1.0)
    x = StandardScaler().fit_transform(train_x)
    val = np.zeros(len(x), dtype=bool)
    val[stratified_sample(train_y, 12, np.random.default_rng(0))] = True
    split = {lam: LogisticRegression(C=1 / (lam * (~val).sum()), max_iter=10_000, tol=1e-10)
             .fit(x[~val], train_y[~val]) for lam in (1e-3, 1.0)}
    val_accuracies = {lam: split[lam].score(x[val], train_y[val]) for lam in split}
    assert val_accuracies == {1e-3: 10 / 12, 1.0: 7 / 12}  # no tie: the choice is the weak lambda
    refit = LogisticRegression(C=1 / (1e-3 * len(x)), max_iter=10_000, tol=1e-10).fit(x, train_y)
    result = linear_probe(torch.tensor(train_x, dtype=torch.float32), torch.tensor(train_y),
                          torch.tensor(test_x, dtype=torch.float32), torch.tensor(test_y), weight_decays=(1e-3, 1.0))
    assert result.weight_decay == 1e-3
    assert result.val_accuracies == pytest.approx(val_accuracies)
    np.testing.assert_allclose(result.weight.numpy(), refit.coef_, atol=2e-3)
    assert np.abs(split[1e-3].coef_ - refit.coef_).max() > 0.1  # the 90% fit alone would be far off


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_validation_prefers_strong_regularisation_on_noisy_tiny_set(seed):
    # 200 rows, 150 dimensions, a weak signal spread over every dimension and 30% flipped
    # labels: the unregularised fit memorises noise, heavy L2 recovers the class-mean direction.
    # (With 60 validation rows the choice is itself noisy: 10 of 10 seeds tried pick >= 0.1.)
    generator = torch.Generator().manual_seed(seed)

    def sample(count, flip):
        labels = torch.arange(count) % 2
        features = torch.randn(count, 150, generator=generator) + (2 * labels[:, None] - 1) * 0.2
        flipped = torch.rand(count, generator=generator) < flip
        return features, torch.where(flipped, 1 - labels, labels)

    train_x, train_y = sample(200, 0.3)
    test_x, test_y = sample(1000, 0.0)
    chosen = linear_probe(train_x, train_y, test_x, test_y, val_fraction=0.3, seed=seed)
    weak = linear_probe(train_x, train_y, test_x, test_y, weight_decays=(1e-6,))
    assert chosen.weight_decay >= 0.1
    assert chosen.val_accuracies[chosen.weight_decay] >= chosen.val_accuracies[1e-6]
    assert chosen.accuracy > weak.accuracy + 0.02
    assert weak.train_accuracy == 1.0  # the weak fit did memorise the flipped labels


def test_probe_constant_feature_and_unseen_test_class():
    generator = torch.Generator().manual_seed(0)
    train_y = torch.arange(60) % 2
    train_x = torch.stack([train_y * 4.0 + torch.randn(60, generator=generator), torch.full((60,), 7.0)], 1)
    test_x = torch.tensor([[0.0, 7.0], [4.0, 7.0], [4.0, 7.0]])
    # Label 2 never occurs in training, so that row is always a miss.
    result = linear_probe(train_x, train_y, test_x, torch.tensor([0, 1, 2]))
    assert result.accuracy == pytest.approx(2 / 3)
    assert torch.isfinite(result.weight).all()


@pytest.mark.parametrize("change, match", [
    (lambda args: {**args, "train_y": args["train_y"][:-1]}, "train_y"),
    (lambda args: {**args, "test_y": args["test_y"].float()}, "test_y.*integer"),
    (lambda args: {**args, "train_y": args["train_y"] - 1}, "train_y.*negative"),
    (lambda args: {**args, "train_x": args["train_x"].index_fill(0, torch.tensor([3]), float("nan"))},
     "train_x.*NaN"),
    (lambda args: {**args, "test_x": args["test_x"][:, :2]}, "test_x.*dimensions"),
    (lambda args: {**args, "train_x": args["train_x"][:, 0]}, "train_x.*2-D"),
])
def test_probe_rejects_bad_inputs(change, match):
    args = {"train_x": torch.randn(20, 3), "train_y": torch.arange(20) % 2,
            "test_x": torch.randn(5, 3), "test_y": torch.arange(5) % 2}
    with pytest.raises(ValueError, match=match):
        linear_probe(**change(args))


@pytest.mark.parametrize("kwargs, match", [
    ({"weight_decays": ()}, "weight_decays"),
    ({"weight_decays": (1e-3, -1.0)}, "weight_decays"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"max_iter": 0}, "max_iter"),
])
def test_probe_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_probe(torch.randn(20, 3), torch.arange(20) % 2, torch.randn(5, 3), torch.arange(5) % 2,
                     **kwargs)


# ---------------------------------------------------------------- extract_features

def small_encoder():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def test_extract_features_equals_one_eval_forward_and_restores_modes():
    encoder = small_encoder()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        encoder(torch.rand(16, 3, 8, 8) * 3)
    encoder.train()
    encoder[1].eval()  # a submodule the caller froze must stay frozen
    images = torch.randint(0, 256, (11, 3, 8, 8), dtype=torch.uint8)
    features = extract_features(encoder, images, batch_size=4)
    assert encoder.training and encoder[3].training and not encoder[1].training
    reference = small_encoder()
    reference.load_state_dict(encoder.state_dict())
    reference.eval()
    with torch.no_grad():
        expected = reference(images.float() / 255)
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(extract_features(encoder, images.float() / 255, batch_size=100), expected)


def test_extract_features_autocast_is_close_to_float32():
    encoder = small_encoder().eval()
    images = torch.rand(6, 3, 8, 8)
    exact = extract_features(encoder, images)
    fast = extract_features(encoder, images, autocast=True, progress=True)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.bfloat16, 0.05)])
def test_extract_features_of_an_encoder_in_another_dtype(dtype, tolerance):
    # A train.precision=64-true or bf16-true run keeps its weights in that dtype: the pixels go in as it, the
    # features come out in float32, close to the float32 encoder's (the final evaluation crashed before).
    encoder = small_encoder().eval()
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    exact = extract_features(encoder, images)
    other = extract_features(_copy_as(encoder, dtype), images)
    assert other.dtype == torch.float32
    torch.testing.assert_close(other, exact, rtol=tolerance, atol=tolerance)


def _copy_as(encoder, dtype):
    copy = small_encoder().eval()
    copy.load_state_dict(encoder.state_dict())
    return copy.to(dtype)


@pytest.mark.parametrize("images, match", [
    (torch.rand(3, 8, 8), "(N, C, H, W)"),
    (torch.rand(2, 3, 8, 8) * 2 - 0.5, r"\[0, 1\]"),
    (torch.full((2, 3, 8, 8), float("nan")), r"\[0, 1\]"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "uint8"),
    (torch.zeros(0, 3, 8, 8), "empty"),
])
def test_extract_features_rejects_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        extract_features(small_encoder(), images)


def test_extract_features_rejects_feature_maps_and_restores_mode():
    encoder = nn.Conv2d(3, 2, 1).train()
    with pytest.raises(ValueError, match="pool and flatten"):
        extract_features(encoder, torch.rand(2, 3, 4, 4))
    assert encoder.training


# ---------------------------------------------------------------- save_embeddings

def test_save_embeddings_round_trip(tmp_path):
    features = torch.randn(7, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 9])
    paths = save_embeddings(tmp_path / "out", features, labels, prefix="val")
    assert [path.name for path in paths] == ["val.npy", "val_labels.npy"]
    loaded = np.load(paths[0])
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, features.numpy(), rtol=1e-6)
    assert np.load(paths[1]).tolist() == labels.tolist()
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["val.npy", "val_labels.npy"]
    only = save_embeddings(tmp_path / "out", features[:2], prefix="val")
    assert len(only) == 1 and np.load(only[0]).shape == (2, 4)


def test_save_embeddings_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        save_embeddings(tmp_path, torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="prefix"):
        save_embeddings(tmp_path, torch.randn(3, 2), prefix="sub/name")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- plots

def clustered(count=200, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    return rng.normal(size=(classes, 16))[labels] * 4 + rng.normal(size=(count, 16)), labels


def assert_png(path, size):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size


def test_plot_embedding_tsne(tmp_path):
    features, labels = clustered()
    path = plot_embedding(features, labels, tmp_path / "maps" / "tsne.png", method="tsne",
                          classes=["a", "b", "c", "d"])
    assert_png(path, (800, 700))


@pytest.mark.heavy
def test_plot_embedding_umap(tmp_path):
    features, labels = clustered()
    assert_png(plot_embedding(features, None, tmp_path / "umap.png", method="umap"), (800, 700))


def test_plot_embedding_asks_umap_for_a_seeded_2d_map(tmp_path, monkeypatch):
    # umap-learn itself (a minute of numba compilation on a fresh machine) runs in the `heavy` test
    # above; here a stand-in records what selfsup asks of it and returns a known projection.
    import types

    features, labels = clustered(count=12)
    asked = {}

    class UMAP:
        def __init__(self, **kwargs):
            asked.update(kwargs)

        def fit_transform(self, x):
            asked["rows"] = len(x)
            return np.asarray(x)[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=UMAP))
    assert_png(plot_embedding(features, labels, tmp_path / "umap.png", method="umap", seed=7), (800, 700))
    assert asked == {"n_components": 2, "n_neighbors": 11, "random_state": 7, "n_jobs": 1, "rows": 12}


def test_plot_embedding_falls_back_to_tsne_without_umap(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` raise ImportError
    features, labels = clustered(count=60)
    with caplog.at_level("WARNING", logger="selfsup.evaluate.plots"):
        path = plot_embedding(features, labels, tmp_path / "map.png", method="umap")
    assert "t-SNE" in caplog.text
    assert_png(path, (800, 700))


def test_plot_embedding_rejects_bad_input(tmp_path):
    features, labels = clustered(count=20)
    with pytest.raises(ValueError, match="png"):
        plot_embedding(features, labels, tmp_path / "map.jpg")
    with pytest.raises(ValueError, match="classes"):
        plot_embedding(features, labels, tmp_path / "map.png", classes=["a", "b"])
    with pytest.raises(ValueError, match="method"):
        plot_embedding(features, labels, tmp_path / "map.png", method="pca")


def test_stratified_subsample_keeps_class_proportions():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    rows = stratified_sample(labels, 100, np.random.default_rng(0))
    assert len(set(rows.tolist())) == 100
    assert np.bincount(labels[rows]).tolist() == [60, 30, 10]
    again = stratified_sample(labels, 100, np.random.default_rng(0))
    assert rows.tolist() == again.tolist()


def test_plot_curves_from_mapping_and_csv(tmp_path):
    history = {"loss": [(step, 2.0 / (step + 1)) for step in range(50)],
               "knn_acc": [(10, 0.4), (20, 0.6), (30, 0.7)],
               "lr": [(step, 0.1) for step in range(50)],
               "val_loss": [(25, 1.0)]}
    assert_png(plot_curves(history, tmp_path / "curves.png", title="run"), (450 * 3, 350 * 2))
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("step,loss,knn_acc\n0,2.3,\n10,1.5,0.41\n20,1.1,\n")
    assert_png(plot_curves(csv_path, tmp_path / "from_csv.png"), (450 * 2, 350))


def test_plot_curves_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        plot_curves(tmp_path / "missing.csv", tmp_path / "out.png")
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(ValueError, match="step"):
        plot_curves(bad, tmp_path / "out.png")
    bad.write_text("step,loss\n0,oops\n")
    with pytest.raises(ValueError, match="line 2"):
        plot_curves(bad, tmp_path / "out.png")
    with pytest.raises(ValueError, match="no points"):
        plot_curves({"loss": []}, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


# ---------------------------------------------------------------- end to end

def test_digits_raw_pixels_reach_known_accuracy():
    # Raw 8x8 pixels of scikit-learn's digits: logistic regression scores about 0.97 and a
    # nearest-neighbour vote about 0.98 on a held-out 30%.
    images, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=0.3, random_state=0,
                                                        stratify=labels)
    probe = linear_probe(train_x, train_y, test_x, test_y)
    assert probe.accuracy >= 0.93
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=10, temperature=0.1) >= 0.95


def test_extract_features_takes_signals_and_node_ids_only_when_told():
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 5, 3))
    signals = torch.randn(4, 8, 5) * 3                                         # any range
    assert extract_features(encoder, signals, kind="sequences").shape == (4, 3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        extract_features(encoder, signals)                                     # images by default
    table = torch.nn.Embedding(6, 2)
    ids = torch.tensor([5, 0, 3])
    assert torch.equal(extract_features(table, ids, kind="graph"), table.weight[ids].detach())
    with pytest.raises(ValueError, match="node ids"):
        extract_features(table, ids.float(), kind="graph")
