"""Tests for selfsup.evaluate.retrieval against independent references (numpy brute force, hand cases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.evaluate import nearest_neighbours, plot_retrieval, recall_at_k
from test_fewshot import one_thread  # noqa: F401 (autouse: one thread for these tiny ops)


def brute_force_neighbours(query, gallery, k, exclude_self=False):
    """Cosine similarities in float64 numpy, every query ranked by (-similarity, gallery index)."""
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    indices, similarities = [], []
    for i, row in enumerate(query):
        scores = [(float(row @ item), j) for j, item in enumerate(gallery) if not (exclude_self and i == j)]
        best = sorted(scores, key=lambda pair: (-pair[0], pair[1]))[:k]
        indices.append([j for _, j in best])
        similarities.append([s for s, _ in best])
    return np.array(indices), np.array(similarities)


def brute_force_recall(query, query_y, gallery, gallery_y, k, exclude_self=False):
    indices, _ = brute_force_neighbours(query, gallery, k, exclude_self)
    return float(np.mean([any(gallery_y[j] == query_y[i] for j in row) for i, row in enumerate(indices)]))


@pytest.mark.parametrize("k, batch_size", [(1, 4), (5, 3), (13, 1024)])
def test_nearest_neighbours_match_brute_force(k, batch_size):
    rng = np.random.default_rng(k)
    query, gallery = rng.normal(size=(11, 4)), rng.normal(size=(13, 4))
    indices, similarities = nearest_neighbours(torch.from_numpy(query), torch.from_numpy(gallery), k,
                                               batch_size=batch_size)
    expected_indices, expected_similarities = brute_force_neighbours(query, gallery, k)
    assert indices.dtype == torch.int64 and indices.shape == (11, k)
    assert indices.tolist() == expected_indices.tolist()
    np.testing.assert_allclose(similarities.numpy(), expected_similarities, rtol=1e-12)


def test_exclude_self_never_retrieves_the_query():
    features = np.random.default_rng(0).normal(size=(9, 3))
    indices, similarities = nearest_neighbours(features, features, 8, exclude_self=True, batch_size=4)
    assert all(i not in row for i, row in enumerate(indices.tolist()))
    assert indices.tolist() == brute_force_neighbours(features, features, 8, exclude_self=True)[0].tolist()
    assert torch.isfinite(similarities).all()
    # Without it, every row finds itself first (similarity 1).
    assert nearest_neighbours(features, features, 1)[0][:, 0].tolist() == list(range(9))


def test_equal_similarities_go_to_lower_gallery_index():
    gallery = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    indices, _ = nearest_neighbours(torch.tensor([[1.0, 0.0], [0.0, 5.0]]), gallery, 2)
    assert indices.tolist() == [[1, 2], [0, 1]]


def test_recall_at_k_by_hand():
    # Points on the unit circle at these angles, every point querying the others (gallery labels
    # differ from the query labels so that each case below occurs).
    angles = np.array([0.0, 0.1, 0.25, 1.5])
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 1, 2])
    gallery_labels = np.array([0, 0, 0, 1])
    recall = recall_at_k(features, labels, features, gallery_labels, ks=(1, 2, 3), exclude_self=True)
    # query 0 -> [1, 2, 3]: hit at 1; query 1 -> [0, 2, 3]: hit at 1; query 2 -> [1, 0, 3]:
    # hit only at 3 (row 3 has label 1); query 3 -> [2, 1, 0]: never (class 2 not in gallery).
    assert recall == {1: 0.5, 2: 0.5, 3: 0.75}


@pytest.mark.parametrize("exclude_self", [False, True])
def test_recall_at_k_matches_brute_force(exclude_self):
    rng = np.random.default_rng(int(exclude_self))
    labels = rng.integers(0, 4, size=20)
    features = rng.normal(size=(20, 5)) + labels[:, None]
    if exclude_self:
        query, query_y, gallery, gallery_y = features, labels, features, labels
    else:
        query, query_y, gallery, gallery_y = features[:8], labels[:8], features[8:], labels[8:]
    ks = (5, 1, 2, 5)  # unordered, repeated
    recall = recall_at_k(query, query_y, gallery, gallery_y, ks=ks, exclude_self=exclude_self)
    assert list(recall) == [1, 2, 5]
    for k, value in recall.items():
        assert value == pytest.approx(brute_force_recall(query, query_y, gallery, gallery_y, k, exclude_self))
    assert recall[1] <= recall[2] <= recall[5]


def test_bad_inputs_are_refused():
    features, labels = torch.randn(6, 3), torch.arange(6) % 2
    with pytest.raises(ValueError, match="3 feature dimensions but gallery_x has 4"):
        nearest_neighbours(features, torch.randn(5, 4), 1)
    with pytest.raises(ValueError, match="k must be at most 5"):
        nearest_neighbours(features, torch.randn(5, 3), 6)
    with pytest.raises(ValueError, match=r"k must be at most 5, .* \(itself excluded\)"):
        nearest_neighbours(features, features, 6, exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self=True needs"):
        nearest_neighbours(features, features[:5], 1, exclude_self=True)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        nearest_neighbours(features, features, 0)
    with pytest.raises(ValueError, match="every k in ks must be at most 6"):
        recall_at_k(features, labels, features, labels, ks=(1, 7))
    with pytest.raises(ValueError, match="ks is empty"):
        recall_at_k(features, labels, features, labels, ks=())
    with pytest.raises(ValueError, match="query_y has 5 labels"):
        recall_at_k(features, labels[:5], features, labels)


def picture_set(count, channels, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, channels, 10, 12), dtype=torch.uint8, generator=generator)


def coloured_pixels(path, colour):
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target).sum(axis=2) < 30).sum())


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_retrieval_writes_a_png_of_the_expected_size(tmp_path, channels):
    queries, gallery = picture_set(3, channels, 0), picture_set(7, channels, 1)
    neighbours = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0], [1, 1, 2, 2]])
    path = plot_retrieval(queries, gallery.float() / 255, neighbours, tmp_path / "grid" / "retrieval.png",
                          query_labels=torch.tensor([0, 1, 2]), gallery_labels=torch.arange(7) % 3,
                          classes=["shirt", "shoe", "bag"])
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (125 * 5, 125 * 3)


def test_plot_retrieval_frames_matches_green_and_misses_red(tmp_path):
    queries, gallery = picture_set(2, 1, 0), picture_set(4, 1, 1)  # grayscale: frames are the only colour
    labels = torch.tensor([0, 1, 0, 1])
    from selfsup.evaluate.retrieval import MATCH_COLOUR, MISS_COLOUR
    all_right = plot_retrieval(queries, gallery, torch.tensor([[0, 2], [1, 3]]), tmp_path / "right.png",
                               query_labels=torch.tensor([0, 1]), gallery_labels=labels)
    assert coloured_pixels(all_right, MATCH_COLOUR) > 0 and coloured_pixels(all_right, MISS_COLOUR) == 0
    half = plot_retrieval(queries, gallery, torch.tensor([[0, 1], [1, 2]]), tmp_path / "half.png",
                          query_labels=torch.tensor([0, 1]), gallery_labels=labels)
    green, red = coloured_pixels(half, MATCH_COLOUR), coloured_pixels(half, MISS_COLOUR)
    assert green > 0 and red > 0 and abs(green - red) < 0.2 * green  # two frames of each
    plain = plot_retrieval(queries, gallery, torch.tensor([[0, 1], [1, 2]]), tmp_path / "plain.png")
    assert coloured_pixels(plain, MATCH_COLOUR) == coloured_pixels(plain, MISS_COLOUR) == 0


def test_plot_retrieval_refuses_bad_input(tmp_path):
    queries, gallery = picture_set(2, 1, 0), picture_set(4, 1, 1)
    neighbours = torch.tensor([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="png"):
        plot_retrieval(queries, gallery, neighbours, tmp_path / "out.jpg")
    with pytest.raises(ValueError, match="Q = 2"):
        plot_retrieval(queries, gallery, neighbours[:1], tmp_path / "out.png")
    with pytest.raises(ValueError, match="gallery_images has 4"):
        plot_retrieval(queries, gallery, torch.tensor([[0, 4], [1, 2]]), tmp_path / "out.png")
    with pytest.raises(ValueError, match="both query_labels and gallery_labels"):
        plot_retrieval(queries, gallery, neighbours, tmp_path / "out.png", query_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="classes has 1 names"):
        plot_retrieval(queries, gallery, neighbours, tmp_path / "out.png", query_labels=torch.tensor([0, 1]),
                       gallery_labels=torch.tensor([0, 1, 0, 1]), classes=["a"])
    with pytest.raises(ValueError, match="C = 1 or 3"):
        plot_retrieval(queries.repeat(1, 2, 1, 1), gallery, neighbours, tmp_path / "out.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_retrieval(queries.float(), gallery, neighbours, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []
