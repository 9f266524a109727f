"""Tests for selfsup.evaluate.finetune: label subsets by counting, fine-tuning on a tiny separable set."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.augment import Augmentation, View
from selfsup.evaluate import few_label_finetune, finetune, label_subset
from test_fewshot import one_thread  # noqa: F401 (autouse: one thread for these tiny ops)


# ---------------------------------------------------------------- label_subset

@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 1.0])
def test_label_subset_keeps_round_fraction_of_each_balanced_class(fraction):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 200))
    rows = label_subset(torch.from_numpy(labels), fraction, seed=3)
    assert rows.dtype == torch.int64 and len(rows) == round(fraction * len(labels))
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert np.bincount(labels[rows.numpy()], minlength=10).tolist() == [round(fraction * 200)] * 10


def test_label_subset_imbalanced_classes_stay_proportional():
    sizes = np.array([500, 300, 150, 50])
    labels = np.repeat(np.arange(4), sizes)
    rows = label_subset(labels, 0.03, seed=0)
    counts = np.bincount(labels[rows.numpy()], minlength=4)
    assert counts.sum() == round(0.03 * sizes.sum())
    assert np.all(counts >= np.floor(0.03 * sizes)) and np.all(counts <= np.ceil(0.03 * sizes))
    assert np.all(counts >= 1)


def test_label_subset_seeds():
    labels = np.repeat(np.arange(5), 40)
    first, again, other = (label_subset(labels, 0.1, seed=seed).tolist() for seed in (0, 0, 1))
    assert first == again and first != other


@pytest.mark.parametrize("fraction, match", [
    (0.0, r"\(0, 1\]"), (1.5, r"\(0, 1\]"), (-0.1, r"\(0, 1\]"), (True, r"\(0, 1\]"),
    (0.004, "fewer than the 5 classes"),
])
def test_label_subset_refuses_bad_fractions(fraction, match):
    with pytest.raises(ValueError, match=match):
        label_subset(np.repeat(np.arange(5), 100), fraction)


def test_label_subset_refuses_a_fraction_that_drops_a_rare_class():
    labels = np.repeat(np.arange(3), [300, 296, 4])  # 1% = 6 rows: 3 + 3 + 0
    with pytest.raises(ValueError, match=r"rare classes \[2\]"):
        label_subset(labels, 0.01)


# ---------------------------------------------------------------- finetune

def brightness_images(count, seed, classes=4):
    """8x8 grayscale images whose class is their brightness band: separable, and crops keep it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % classes
    level = (labels.float() + 0.5) / classes * 255
    noise = torch.randn(count, 1, 8, 8, generator=generator) * 12
    return (level.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8), labels


def pixel_mlp(dropout=0.0):
    """A tiny encoder on raw pixels in [0, 1]; seeded so every call builds the same network."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(dropout))
    torch.random.set_rng_state(generator_state)
    return encoder


def test_finetune_learns_a_separable_set_quickly():
    train_images, train_labels = brightness_images(64, seed=0)
    test_images, test_labels = brightness_images(200, seed=1)
    result = finetune(pixel_mlp(), train_images, train_labels, test_images, test_labels, steps=60,
                      batch_size=32, lr=0.2)
    assert result.steps == 60 and result.epochs == pytest.approx(60 * 32 / 64)
    assert result.accuracy > 0.9 and result.train_accuracy > 0.9  # chance is 0.25


def test_finetune_leaves_the_encoder_and_global_rng_alone():
    encoder = pixel_mlp(dropout=0.2)
    encoder[3].eval()  # a submodule the caller froze
    before = {name: tensor.clone() for name, tensor in encoder.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    images, labels = brightness_images(32, seed=0)
    finetune(encoder, images, labels, images, labels, steps=10, batch_size=16)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert encoder.training and not encoder[3].training
    after = encoder.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_finetune_is_reproducible_with_a_seed():
    images, labels = brightness_images(48, seed=2)
    test_images, test_labels = brightness_images(100, seed=3)
    noisy = dict(steps=20, batch_size=16, lr=0.2)  # too short to saturate, so runs can differ

    def run(seed):
        return finetune(pixel_mlp(dropout=0.3), images, labels, test_images, test_labels, seed=seed, **noisy)

    assert run(0) == run(0)
    assert len({run(seed).accuracy for seed in (0, 1, 2, 3)}) > 1


def test_finetune_epochs_set_the_step_count():
    images, labels = brightness_images(40, seed=0)
    result = finetune(pixel_mlp(), images, labels, images, labels, epochs=2.5, batch_size=16)
    assert result.steps == math.ceil(2.5 * 40 / 16) and result.epochs == pytest.approx(result.steps * 16 / 40)
    small = finetune(pixel_mlp(), images[:10], labels[:10], images, labels, steps=2, batch_size=256)
    assert small.epochs == 2.0  # the batch is the whole set


@pytest.mark.parametrize("change, match", [
    (dict(train_images=torch.rand(8, 1, 8, 8)), "train_images must be uint8"),
    (dict(test_images=torch.zeros(8, 8, 8, dtype=torch.uint8)), "test_images must be a non-empty"),
    (dict(test_images=torch.zeros(8, 3, 8, 8, dtype=torch.uint8)), "3 channels"),
    (dict(train_labels=torch.zeros(7, dtype=torch.long)), "train_labels has 7 labels"),
    (dict(steps=5, epochs=1.0), "steps or epochs, not both"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(steps=None, epochs=-1.0), "epochs must be a number > 0"),
    (dict(lr=0.0), "lr must be"),
    (dict(weight_decay=-1.0), "weight_decay must be"),
    (dict(augmentation=Augmentation([View(size=(8, 8)), View(size=(8, 8))])), "exactly one view"),
])
def test_finetune_refuses_bad_input(change, match):
    images, labels = brightness_images(8, seed=0)
    arguments = dict(train_images=images, train_labels=labels, test_images=images, test_labels=labels,
                     steps=1) | change
    with pytest.raises(ValueError, match=match):
        finetune(pixel_mlp(), **arguments)


def test_finetune_reports_divergence():
    from selfsup.errors import NonFiniteError

    images, labels = brightness_images(16, seed=0)
    with pytest.raises(NonFiniteError, match="lower lr"):
        finetune(pixel_mlp(), images, labels, images, labels, steps=20, batch_size=16, lr=1e30)


def test_finetune_defaults_are_nesterov_sgd_at_the_scaled_lr_on_a_cosine_from_a_zero_head(monkeypatch):
    # Two full-batch steps written out in float64: the head starts at zero, lr = 0.05 * 16 / 256 at
    # step 0 and half of it at step 1 (cosine over 2 steps), Nesterov momentum 0.9 (torch's form:
    # buf = 0.9 buf + g, step g + 0.9 buf), no weight decay; no augmentation.
    module = sys.modules["selfsup.evaluate.finetune"]  # the package's name `finetune` is the function
    trained = []
    monkeypatch.setattr(module, "_accuracy", lambda model, *rest: trained.append(model) or 0.0)
    generator = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (16, 1, 2, 2), dtype=torch.uint8, generator=generator)
    labels = torch.arange(16) % 3
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        encoder[1].weight.copy_(torch.randn(3, 4, generator=generator))
        encoder[1].bias.copy_(torch.randn(3, generator=generator))
    plain = Augmentation([View(size=(2, 2), scale=None, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)])
    finetune(encoder, images, labels, images, labels, steps=2, batch_size=16, augmentation=plain)

    x = images.double().flatten(1) / 255
    params = [encoder[1].weight.detach().double().clone(), encoder[1].bias.detach().double().clone(),
              torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]
    buffers = [None] * 4
    peak = 0.05 * 16 / 256
    for step, lr in enumerate([peak, peak * (1 + math.cos(math.pi / 2)) / 2]):
        leaves = [p.requires_grad_() for p in params]
        weight, bias, head_weight, head_bias = leaves
        logits = (x @ weight.T + bias) @ head_weight.T + head_bias
        loss = -torch.log_softmax(logits, dim=1)[torch.arange(16), labels].mean()
        grads = torch.autograd.grad(loss, leaves)
        buffers = [g if step == 0 else 0.9 * b + g for b, g in zip(buffers, grads)]
        params = [(p - lr * (g + 0.9 * b)).detach() for p, g, b in zip(leaves, grads, buffers)]

    (model,) = set(trained)
    got = [model[0][1].weight, model[0][1].bias, model[1].weight, model[1].bias]
    for ours, reference in zip(got, params):
        torch.testing.assert_close(ours.detach().double(), reference, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- few_label_finetune

def test_few_label_finetune_summarises_the_individual_runs():
    train_images, train_labels = brightness_images(80, seed=0)
    test_images, test_labels = brightness_images(60, seed=1)
    settings = dict(steps=6, batch_size=8, lr=0.05)
    made = []

    def make_scratch():
        made.append(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU()))
        return made[-1]

    table = few_label_finetune(pixel_mlp(), make_scratch, train_images, train_labels, test_images, test_labels,
                               fractions=(0.1, 0.25), seeds=(0, 1, 2), **settings)
    assert list(table) == [0.1, 0.25] and len(made) == 6
    for fraction, entry in table.items():
        assert entry["labels"] == round(fraction * 80) and entry["seeds"] == [0, 1, 2]
        expected = [finetune(pixel_mlp(), train_images[rows], train_labels[rows], test_images, test_labels,
                             seed=seed, **settings).accuracy
                    for seed in (0, 1, 2) for rows in [label_subset(train_labels, fraction, seed=seed)]]
        assert entry["pretrained"]["accuracies"] == expected
        for summary in (entry["pretrained"], entry["scratch"]):
            accuracies = np.array(summary["accuracies"])
            assert len(accuracies) == 3
            assert summary["mean"] == pytest.approx(accuracies.mean(), abs=1e-12)
            assert summary["std"] == pytest.approx(np.sqrt(((accuracies - accuracies.mean()) ** 2).sum() / 2),
                                                   abs=1e-12)
    # Scratch networks are built with the seed's RNG: two calls give the same table.
    again = few_label_finetune(pixel_mlp(), make_scratch, train_images, train_labels, test_images, test_labels,
                               fractions=(0.1, 0.25), seeds=(0, 1, 2), **settings)
    assert again == table
    assert json.loads(json.dumps(table))["0.1"]["scratch"]["mean"] == table[0.1]["scratch"]["mean"]


def test_finetune_entry_states_the_batch_each_fraction_ran():
    # finetune() caps the batch at the subset's size: 10% of 80 images is 8 labels, one batch of 8, while 50%
    # (40 labels) runs the asked 16. The protocol must say 8 / 16, not "batch 16" for both.
    from selfsup.evaluate import finetune_entry
    train_images, train_labels = brightness_images(80, seed=0)
    test_images, test_labels = brightness_images(20, seed=1)
    entry = finetune_entry(pixel_mlp(), pixel_mlp, train_images, train_labels, test_images, test_labels,
                           data="toy", fractions=(0.1, 0.5), seeds=(0,), steps=1, batch_size=16)
    assert [row["labels"] for row in entry["fractions"].values()] == [8, 40]
    assert [row["batch"] for row in entry["fractions"].values()] == [8, 16]
    assert "1 steps of batch 8 / 16 (a subset smaller than 16 labels" in entry["protocol"]


def test_few_label_finetune_scratch_column_trains_make_scratch_seeded_by_the_subset_seed():
    # Each seed's scratch network is make_scratch() built after torch.manual_seed(seed), fine-tuned on
    # that seed's subset; the pretrained encoder here is dead (all zeros: no feature, no gradient, so a
    # fine-tuned copy predicts one class), so its column cannot stand in for the scratch one.
    train_images, train_labels = brightness_images(80, seed=0)
    test_images, test_labels = brightness_images(60, seed=1)
    plain = Augmentation([View(size=(8, 8), scale=None, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)])
    settings = dict(steps=30, batch_size=10, lr=0.3, augmentation=plain)
    dead = pixel_mlp()
    with torch.no_grad():
        for parameter in dead.parameters():
            parameter.zero_()

    def make_scratch():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())

    def built_by_hand(seed):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return make_scratch()

    table = few_label_finetune(dead, make_scratch, train_images, train_labels, test_images, test_labels,
                               fractions=(0.25,), seeds=(0, 1, 2), **settings)
    expected = [finetune(built_by_hand(seed), train_images[rows], train_labels[rows], test_images, test_labels,
                         seed=seed, **settings).accuracy
                for seed in (0, 1, 2) for rows in [label_subset(train_labels, 0.25, seed=seed)]]
    assert table[0.25]["scratch"]["accuracies"] == expected
    assert table[0.25]["pretrained"]["accuracies"] == [0.25] * 3  # one class of four, 15 of the 60 test images
    assert min(expected) > 0.5  # the scratch networks learn (0.75 to 0.8 here)


def test_few_label_finetune_with_one_seed_has_no_std():
    images, labels = brightness_images(40, seed=0)
    table = few_label_finetune(pixel_mlp(), pixel_mlp, images, labels, images, labels, fractions=(0.5,),
                               seeds=(4,), steps=2, batch_size=8)
    assert table[0.5]["pretrained"]["std"] is None and len(table[0.5]["scratch"]["accuracies"]) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=1), r"unknown settings \['seed'\]"),
    (dict(step=5), r"unknown settings \['step'\]"),
    (dict(fractions=()), "non-empty"),
    (dict(seeds=(1, 1)), "repeat"),
    (dict(fractions=(0.5, 2.0)), r"\(0, 1\]"),
])
def test_few_label_finetune_refuses_bad_settings(kwargs, match):
    images, labels = brightness_images(40, seed=0)
    with pytest.raises(ValueError, match=match):
        few_label_finetune(pixel_mlp(), pixel_mlp, images, labels, images, labels, **kwargs)
