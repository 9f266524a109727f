"""Few-label fine-tuning: a copy of the encoder and a linear head trained end to end on a labelled subset.

The semi-supervised protocol of SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive
Learning of Visual Representations", section 7.2 and appendix B.5): keep a class-stratified 1% or
10% of the training labels, fine-tune the whole pretrained network on them, report test top-1,
and compare with the same architecture trained from random initialisation on the same subsets.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from selfsup.augment import Augmentation, View
from selfsup.errors import NonFiniteError
from selfsup.evaluate._common import as_labels, stratified_sample
from selfsup.evaluate.features import _module_device, extract_features
from selfsup.evaluate.fewshot import _positive_int
from selfsup.nn.schedules import cosine

DEFAULT_STEPS = 200
"""Optimiser steps when neither ``steps`` nor ``epochs`` is given (see :func:`finetune`)."""

BASE_LR = 0.05
"""SimCLR's fine-tuning LR per 256 images: ``lr = 0.05 * batch_size / 256``."""


def label_subset(labels, fraction: float, *, seed: int = 0) -> Tensor:
    """Sorted row indices of a class-stratified ``fraction`` of the labelled rows.

    The subset has ``round(fraction * N)`` rows, each class in proportion to its size (per-class
    quotas rounded down, the rows left over to the largest remainders, see
    :func:`selfsup.evaluate._common.stratified_sample`), drawn without replacement with
    ``numpy.random.default_rng(seed)``. SimCLR's 1% and 10% ImageNet subsets are drawn the same
    way (stratified: balanced where the classes are). Every class keeps at least one row, or the call fails.

    Args:
        labels: ``(N,)`` integer class of each row.
        fraction: share of rows to keep, in (0, 1].
        seed: seeds the draw; different seeds give different subsets.

    Returns:
        ``(round(fraction * N),)`` int64 sorted row indices.

    Raises:
        ValueError: for a fraction outside (0, 1], or one so small that a class gets no row.

    Examples:
        >>> label_subset(torch.arange(100) % 4, 0.1, seed=0).shape
        torch.Size([10])
    """
    labels = torch.as_tensor(labels)
    labels = as_labels(labels, "labels", len(labels) if labels.ndim else 0, "labels")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1] (e.g. 0.01 for 1% of the labels), got {fraction!r}")
    if len(labels) == 0:
        raise ValueError("labels is empty; a subset needs labelled rows")
    values = labels.cpu().numpy()
    present = np.unique(values)
    count = round(fraction * len(values))
    if count < len(present):
        raise ValueError(f"fraction={fraction} of {len(values)} rows keeps {count}, fewer than the "
                         f"{len(present)} classes; pass fraction >= {len(present) / len(values):.3g} "
                         f"so that every class keeps a row")
    rows = stratified_sample(values, count, np.random.default_rng(seed))
    missing = np.setdiff1d(present, values[rows])
    if len(missing):
        raise ValueError(f"fraction={fraction} leaves the rare classes {missing.tolist()} without a row; "
                         f"pass a larger fraction")
    return torch.from_numpy(rows).long()


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` measured.

    Attributes:
        accuracy: top-1 accuracy on the test images (eval mode, no augmentation).
        train_accuracy: top-1 accuracy on the labelled training images, measured the same way.
        steps: optimiser steps taken.
        epochs: passes over the labelled images those steps made, ``steps * batch / N``.
    """

    accuracy: float
    train_accuracy: float
    steps: int
    epochs: float


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the CPU RNG (and ``device``'s, on CUDA) inside the block, restoring both afterwards.

    Dropout, stochastic depth and a ``make_scratch`` initialisation draw from the global RNGs;
    seeding them here makes a run reproducible without changing the caller's RNG state.
    """
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def _check_images(images, name: str) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a non-empty (N, C, H, W) uint8 tensor, got {shape}")
    if images.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got dtype {images.dtype}; convert float images "
                         f"in [0, 1] with (images * 255).round().to(torch.uint8)")
    return images


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device) -> float:
    logits = extract_features(model, images, device=device)  # eval mode, batches of 1024
    return (logits.argmax(dim=1) == labels.cpu()).double().mean().item()


def finetune(encoder: nn.Module, train_images: Tensor, train_labels, test_images: Tensor, test_labels, *,
             steps: int | None = None, epochs: float | None = None, batch_size: int = 256,
             lr: float | None = None, weight_decay: float = 0.0, augmentation: Augmentation | None = None,
             device: torch.device | str | None = None, seed: int = 0, progress: bool = False) -> FinetuneResult:
    """Fine-tune a copy of ``encoder`` with a linear head on labelled images; report test top-1.

    SimCLR's fine-tuning (Chen et al., 2020, appendix B.5): a linear head on the encoder's
    features (dimension read from one forward pass; weights and bias start at zero), and encoder
    and head trained together with cross-entropy, SGD with Nesterov momentum 0.9, learning rate
    ``0.05 * batch / 256`` decayed to 0 along a per-step cosine, no weight decay, and as the
    only augmentation a random resized crop (scale 0.08-1, back to the input size) with a
    horizontal flip, drawn per image on the device. Test (and train) accuracy is measured in
    eval mode (BatchNorm running statistics) on the unaugmented images.

    Length: SimCLR trains 60 epochs on 1% of ImageNet's labels and 30 on 10%. On small sets an
    epoch count is a poor measure (600 images are 2-3 steps an epoch), so the length is a number
    of optimiser steps, ``DEFAULT_STEPS = 200`` unless ``steps`` or ``epochs`` says otherwise:
    85 epochs of 600 images or 8.5 of 6000 at batch 256, the same compute for both, and
    estimated (not timed) at under a minute of two CPU cores for the 28x28 ``convnet``.
    Batches are consecutive slices of a stream of random permutations of the training rows, so
    every image is seen once before any is seen twice.

    Reproducible: the batch order and the augmentation come from a ``torch.Generator`` seeded by
    ``seed``, and the global RNGs that dropout-like layers use are seeded by ``seed`` inside the
    call and restored afterwards. ``encoder`` itself is never modified (a deep copy is trained).

    Args:
        encoder: maps float images ``(B, C, H, W)`` in [0, 1] to features ``(B, D)``, applying
            its own normalisation (as :class:`selfsup.nn.backbones.Backbone` does).
        train_images, test_images: ``(N, C, H, W)`` and ``(M, C, H', W')`` uint8 images; the
            training set is moved to ``device`` once.
        train_labels, test_labels: ``(N,)`` and ``(M,)`` integer labels; the head has
            ``max(train_labels) + 1`` outputs, so a test class absent from training is a miss.
        steps: optimiser steps; give this or ``epochs``, not both.
        epochs: passes over the training images instead, ``steps = ceil(epochs * N / batch)``.
        batch_size: images per step (at most ``N``: a smaller set is one batch per step).
        lr: peak learning rate; default ``0.05 * batch / 256``.
        weight_decay: L2 penalty on every parameter (SimCLR uses none).
        augmentation: an :class:`~selfsup.augment.Augmentation` making one view per batch;
            default the crop-and-flip view above. Pass one whose ``View`` has ``scale=None``
            and ``flip_p=0`` to train without augmentation.
        device: where to train; defaults to the encoder's device.
        seed: seeds the batch order, the augmentation and the global RNGs (see above).
        progress: show a tqdm bar over steps.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ValueError: for bad images, labels or settings.
        NonFiniteError: when the loss became NaN/Inf (lower ``lr``).

    Examples:
        >>> encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
        >>> images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
        >>> labels = (images.float().mean(dim=(1, 2, 3)) > 127).long()
        >>> finetune(encoder, images, labels, images, labels, steps=5, batch_size=16).steps
        5
    """
    train_images = _check_images(train_images, "train_images")
    test_images = _check_images(test_images, "test_images")
    if test_images.shape[1] != train_images.shape[1]:
        raise ValueError(f"test_images have {test_images.shape[1]} channels but train_images have "
                         f"{train_images.shape[1]}; load both splits the same way")
    train_labels = as_labels(train_labels, "train_labels", len(train_images), "train_images")
    test_labels = as_labels(test_labels, "test_labels", len(test_images), "test_images")
    batch = min(_positive_int(batch_size, "batch_size"), len(train_images))
    if steps is not None and epochs is not None:
        raise ValueError(f"pass steps or epochs, not both (got steps={steps}, epochs={epochs})")
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs > 0:
            raise ValueError(f"epochs must be a number > 0, got {epochs!r}")
        steps = math.ceil(epochs * len(train_images) / batch)
    steps = _positive_int(DEFAULT_STEPS if steps is None else steps, "steps")
    lr = BASE_LR * batch / 256 if lr is None else lr
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if augmentation is None:
        augmentation = Augmentation([View(size=tuple(train_images.shape[2:]), jitter_p=0.0, gray_p=0.0,
                                          blur_p=0.0)])
    elif not isinstance(augmentation, Augmentation) or len(augmentation.output_views) != 1:
        raise ValueError(f"augmentation must be an Augmentation making exactly one view, got {augmentation!r}")

    device = torch.device(device) if device is not None else _module_device(encoder)
    generator = torch.Generator().manual_seed(seed)
    # A stream of permutations, cut into consecutive batches (one loop step per epoch, not per row).
    permutations = math.ceil(steps * batch / len(train_images))
    order = torch.cat([torch.randperm(len(train_images), generator=generator) for _ in range(permutations)])
    with _seeded(seed, device):
        network = copy.deepcopy(encoder).to(device)
        width = extract_features(network, train_images[:1], device=device).shape[1]
        head = nn.Linear(width, int(train_labels.max()) + 1, device=device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        model = nn.Sequential(network, head)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                    weight_decay=weight_decay)
        images, targets = train_images.to(device), train_labels.to(device)
        model.train()
        for step in tqdm(range(steps), desc="fine-tune", unit="step", disable=not progress):
            for group in optimizer.param_groups:
                group["lr"] = cosine(step, steps, lr, 0.0)
            rows = order[step * batch:(step + 1) * batch].to(device)
            (view,) = augmentation(images[rows], generator=generator)
            loss = F.cross_entropy(model(view), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    # Checked once at the end rather than every step (a per-step check would sync the device);
    # a diverged run stays non-finite.
    if not torch.isfinite(loss):
        raise NonFiniteError(f"fine-tuning loss is {loss.item()} after {steps} steps at lr={lr}; "
                             f"lower lr")
    return FinetuneResult(accuracy=_accuracy(model, test_images, test_labels, device),
                          train_accuracy=_accuracy(model, train_images, train_labels, device),
                          steps=steps, epochs=steps * batch / len(train_images))


# The finetune settings few_label_finetune passes on; the seed is the subset's.
_FINETUNE_OPTIONS = frozenset(name for name, parameter in inspect.signature(finetune).parameters.items()
                              if parameter.kind is parameter.KEYWORD_ONLY and name != "seed")


def _summary(accuracies: list[float]) -> dict:
    return {"mean": float(np.mean(accuracies)),
            "std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else None,
            "accuracies": accuracies}


def few_label_finetune(pretrained: nn.Module, make_scratch: Callable[[], nn.Module], train_images: Tensor,
                       train_labels, test_images: Tensor, test_labels, *,
                       fractions: Sequence[float] = (0.01, 0.1), seeds: Sequence[int] = (0, 1, 2),
                       **finetune_kwargs) -> dict[float, dict]:
    """SimCLR's semi-supervised table: fine-tuned accuracy with few labels, pretrained vs from scratch.

    For each ``fraction`` and each ``seed``: draw the class-stratified subset
    ``label_subset(train_labels, fraction, seed=seed)``, :func:`finetune` ``pretrained`` on it
    with ``seed=seed``, and train a fresh ``make_scratch()`` network (built with the global RNG
    seeded by ``seed``, so it is reproducible too) the same way on the same subset. Each subset
    seed is one run; the spread over seeds is the spread over label subsets and training noise
    together (Chen et al., 2020, section 7.2; Zhai et al., 2019, "S4L").

    Args:
        pretrained: the pretrained encoder (not modified).
        make_scratch: returns a freshly initialised encoder of the same architecture.
        train_images, train_labels, test_images, test_labels: as in :func:`finetune`.
        fractions: label fractions, each in (0, 1].
        seeds: subset (and training) seeds; three give a sample std.
        **finetune_kwargs: settings passed to every :func:`finetune` call (``steps``,
            ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``augmentation``, ``device``,
            ``progress``); pass ``device`` to train both networks on the same device.

    Returns:
        ``{fraction: {"fraction", "labels", "seeds", "pretrained", "scratch"}}`` where
        ``labels`` is the subset size and ``pretrained`` / ``scratch`` are
        ``{"mean", "std", "accuracies"}``: test top-1 per seed, their mean and sample std
        (``ddof=1``; None with one seed). Plain floats, ints, lists and None, so ``json.dumps``
        writes it as it is (the fraction keys become strings).

    Examples:
        >>> make = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
        >>> images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
        >>> labels = (images.float().mean(dim=(1, 2, 3)) > 127).long()
        >>> table = few_label_finetune(make(), make, images, labels, images, labels, fractions=(0.5,),
        ...                            seeds=(0, 1), steps=3, batch_size=8)
        >>> sorted(table[0.5]["scratch"])
        ['accuracies', 'mean', 'std']
    """
    unknown = sorted(set(finetune_kwargs) - _FINETUNE_OPTIONS)
    if unknown:
        raise ValueError(f"few_label_finetune got unknown settings {unknown}; finetune takes "
                         f"{sorted(_FINETUNE_OPTIONS)} (the seed comes from seeds)")
    fractions, seeds = list(fractions), list(seeds)
    if not fractions or not seeds:
        raise ValueError(f"fractions and seeds must be non-empty, got fractions={fractions}, seeds={seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat a value ({seeds}); repeated seeds repeat the same run")
    train_images = _check_images(train_images, "train_images")
    train_labels = as_labels(train_labels, "train_labels", len(train_images), "train_images")
    subsets = {fraction: [label_subset(train_labels, fraction, seed=seed) for seed in seeds]
               for fraction in fractions}  # drawn first, so a bad fraction fails before any training

    table = {}
    for fraction, rows_per_seed in subsets.items():
        runs: dict[str, list[float]] = {"pretrained": [], "scratch": []}
        for seed, rows in zip(seeds, rows_per_seed):
            with _seeded(seed, torch.device("cpu")):
                scratch = make_scratch()
            for name, encoder in (("pretrained", pretrained), ("scratch", scratch)):
                result = finetune(encoder, train_images[rows], train_labels[rows], test_images, test_labels,
                                  seed=seed, **finetune_kwargs)
                runs[name].append(result.accuracy)
        table[fraction] = {"fraction": fraction, "labels": len(rows_per_seed[0]), "seeds": seeds,
                           "pretrained": _summary(runs["pretrained"]), "scratch": _summary(runs["scratch"])}
    return table
