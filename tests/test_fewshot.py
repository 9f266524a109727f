"""Tests for selfsup.evaluate.fewshot against independent references (loops, scipy, properties)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from selfsup.evaluate import fewshot_accuracy, sample_episodes


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny ops on a shared 2-core machine: spinning OpenMP threads only slow them down.
    # test_retrieval.py and test_finetune.py import this fixture.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def uneven_labels(seed=0):
    """Eight classes of 3 to 30 rows in shuffled order; class 0 has only 3."""
    sizes = [3, 7, 12, 30, 10, 15, 20, 11]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return torch.from_numpy(np.random.default_rng(seed).permutation(labels))


@pytest.mark.parametrize("n_way, k_shot, n_query", [(5, 1, 5), (3, 5, 4), (6, 2, 8)])
def test_episodes_have_the_promised_structure(n_way, k_shot, n_query):
    labels = uneven_labels()
    drawn = sample_episodes(labels, n_way, k_shot, n_query, episodes=40, seed=3)
    assert drawn.support.shape == drawn.support_labels.shape == (40, n_way * k_shot)
    assert drawn.query.shape == drawn.query_labels.shape == (40, n_way * n_query)
    assert drawn.classes.shape == (40, n_way)
    assert all(t.dtype == torch.int64 for t in drawn)
    sizes = np.bincount(labels.numpy())
    for episode in range(40):
        support, query = drawn.support[episode].tolist(), drawn.query[episode].tolist()
        classes = drawn.classes[episode].tolist()
        assert len(set(support)) == len(support) and len(set(query)) == len(query)
        assert not set(support) & set(query)
        assert len(set(classes)) == n_way
        assert all(sizes[c] >= k_shot + n_query for c in classes)  # default pool: classes big enough
        for rows, episode_labels, shots in ((support, drawn.support_labels[episode], k_shot),
                                            (query, drawn.query_labels[episode], n_query)):
            assert np.bincount(episode_labels.numpy(), minlength=n_way).tolist() == [shots] * n_way
            # Relabelled classes point back to the original label of every row.
            assert [classes[e] for e in episode_labels.tolist()] == labels[rows].tolist()


def test_classes_restricts_episodes_to_held_out_classes():
    labels = uneven_labels()
    pretraining = {2, 3, 5}
    held_out = [4, 6, 7]
    drawn = sample_episodes(labels, 2, 2, 3, episodes=50, classes=held_out)
    used = set(drawn.classes.flatten().tolist())
    assert used == set(held_out) and not used & pretraining
    rows = torch.cat([drawn.support, drawn.query], dim=1)
    assert set(labels[rows].flatten().tolist()) <= set(held_out)


def test_draws_are_uniform():
    # One class of four rows, one support and one query: each of the 12 ordered (support, query)
    # pairs should come up equally often; and classes are drawn uniformly from the pool.
    labels = torch.tensor([0, 1, 0, 2, 0, 3, 0, 4])
    drawn = sample_episodes(labels, 1, 1, 1, episodes=6000, seed=1, classes=[0])
    pairs = list(zip(drawn.support[:, 0].tolist(), drawn.query[:, 0].tolist()))
    expected = list(itertools.permutations([0, 2, 4, 6], 2))
    assert set(pairs) == set(expected)
    counts = [pairs.count(pair) for pair in expected]
    assert stats.chisquare(counts).pvalue > 1e-3
    spread = sample_episodes(torch.arange(50) % 5, 1, 1, 1, episodes=5000, seed=2).classes[:, 0]
    assert stats.chisquare(np.bincount(spread.numpy())).pvalue > 1e-3


def test_seeded_draws_repeat():
    labels = uneven_labels()
    first = sample_episodes(labels, 4, 1, 3, episodes=20, seed=7)
    again = sample_episodes(labels, 4, 1, 3, episodes=20, seed=7)
    other = sample_episodes(labels, 4, 1, 3, episodes=20, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first.support, other.support)
    features = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(0))
    one = fewshot_accuracy(features, labels, n_way=4, n_query=3, episodes=30, seed=5)
    two = fewshot_accuracy(features, labels, n_way=4, n_query=3, episodes=30, seed=5)
    assert torch.equal(one.accuracies, two.accuracies)


def prototype_reference(features, labels, drawn):
    """ProtoNet accuracy per episode, written out as loops in float64 numpy."""
    accuracies = []
    for episode in range(len(drawn.support)):
        normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
        ways = drawn.classes.shape[1]
        prototypes = []
        for way in range(ways):
            rows = [r for r, w in zip(drawn.support[episode].tolist(), drawn.support_labels[episode].tolist())
                    if w == way]
            prototypes.append(normalised[rows].mean(axis=0))
        correct = 0
        for row, truth in zip(drawn.query[episode].tolist(), drawn.query_labels[episode].tolist()):
            distances = [float(((normalised[row] - prototype) ** 2).sum()) for prototype in prototypes]
            predicted = min(range(ways), key=lambda w: (distances[w], w))
            correct += predicted == truth
        accuracies.append(correct / drawn.query.shape[1])
    return accuracies


def test_prototype_classification_matches_loop():
    labels = uneven_labels(seed=1)
    features = np.random.default_rng(0).normal(size=(len(labels), 5))
    features[:, 0] += labels.numpy()  # some signal, so accuracies vary between episodes
    settings = dict(n_way=3, k_shot=2, n_query=4, episodes=25, seed=4)
    result = fewshot_accuracy(torch.from_numpy(features), labels, **settings)
    drawn = sample_episodes(labels, 3, 2, 4, 25, seed=4)
    reference = prototype_reference(features, labels, drawn)
    np.testing.assert_allclose(result.accuracies.numpy(), reference)
    assert len(set(reference)) > 1


def test_equal_distances_go_to_lower_episode_class():
    # Classes 0 and 1 share one feature vector, so every query is equally far from both
    # prototypes and goes to episode class 0: half the queries are right in every episode.
    labels = torch.arange(20) % 2
    features = torch.ones(20, 3)
    result = fewshot_accuracy(features, labels, n_way=2, k_shot=2, n_query=3, episodes=10)
    assert result.accuracies.tolist() == [0.5] * 10


def test_ci95_is_the_textbook_interval():
    labels = torch.arange(300) % 10
    features = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    features[:, 0] += labels / 3
    result = fewshot_accuracy(features, labels, n_way=5, k_shot=1, n_query=5, episodes=120)
    accuracies = result.accuracies.numpy()
    assert result.accuracies.dtype == torch.float64 and result.episodes == len(accuracies) == 120
    assert result.accuracy == pytest.approx(accuracies.mean(), abs=1e-12)
    assert result.ci95 == pytest.approx(1.96 * stats.sem(accuracies, ddof=1), rel=1e-12)
    by_hand = 1.96 * np.sqrt(((accuracies - accuracies.mean()) ** 2).sum() / 119) / np.sqrt(120)
    assert result.ci95 == pytest.approx(by_hand, rel=1e-12)
    assert np.isnan(fewshot_accuracy(features, labels, episodes=1).ci95)


def test_separable_features_score_one_and_noise_scores_chance():
    labels = torch.arange(200) % 10
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    perfect = fewshot_accuracy(one_hot, labels, n_way=5, k_shot=1, n_query=5, episodes=50)
    assert perfect.accuracy == 1.0 and perfect.ci95 == 0.0
    noise = torch.randn(200, 16, generator=torch.Generator().manual_seed(2))
    chance = fewshot_accuracy(noise, labels, n_way=5, k_shot=1, n_query=5, episodes=300)
    assert abs(chance.accuracy - 1 / 5) < 4 * chance.ci95


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_way=0), "n_way must be a positive integer"),
    (dict(k_shot=True), "k_shot must be a positive integer"),
    (dict(n_query=1.5), "n_query must be a positive integer"),
    (dict(episodes=0), "episodes must be a positive integer"),
    (dict(n_way=8), r"only 7 classes have .* 5 rows .* n_way=8"),
    (dict(classes=[0, 4]), r"classes \{0: 3\} .* fewer than .* 5 rows"),
    (dict(classes=[4, 9]), r"classes \[9\] do not occur"),
    (dict(classes=[4, 4]), "more than once"),
    (dict(classes=[4.0]), "integer class labels"),
    (dict(classes=[4, 5], n_way=3), "classes holds 2 classes, fewer than n_way=3"),
])
def test_bad_episode_settings_are_refused(kwargs, match):
    settings = dict(n_way=2, k_shot=2, n_query=3, episodes=4) | kwargs
    with pytest.raises(ValueError, match=match):
        sample_episodes(uneven_labels(), settings.pop("n_way"), settings.pop("k_shot"),
                        settings.pop("n_query"), settings.pop("episodes"), **settings)


def test_bad_features_and_labels_are_refused():
    labels = torch.arange(20) % 2
    with pytest.raises(ValueError, match="features has 19 rows|labels has 20 labels"):
        fewshot_accuracy(torch.randn(19, 3), labels, n_way=2)
    with pytest.raises(ValueError, match="2-D"):
        fewshot_accuracy(torch.randn(20), labels, n_way=2)
    with pytest.raises(ValueError, match="integer class indices"):
        sample_episodes(labels.float(), 2, 1, 1, 1)
    with pytest.raises(ValueError, match="NaN"):
        fewshot_accuracy(torch.full((20, 3), float("nan")), labels, n_way=2)
