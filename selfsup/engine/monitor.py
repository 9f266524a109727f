"""What a run measures about itself while it trains: the time plan, the kNN monitor, spikes.

:func:`plan_time_limit` turns ``train.time_limit`` into a number of steps (timed calibration steps,
undone); :func:`plan_compile` decides whether an unset ``train.compile`` compiles (on a CUDA GPU, when
the run repays it); :func:`knn_monitor` measures the weighted kNN accuracy of the evaluation encoder on
held-out training images (:func:`monitor_split`) at the end of an epoch; :func:`training_summary`
counts the spikes of the logged loss and gradient norm (MoCo v3's instability, section 4).
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from selfsup import data, evaluate
from selfsup.config import parse_duration
from selfsup.engine import state
from selfsup.engine.optim import Schedule
from selfsup.evaluate._common import stratified_sample

if TYPE_CHECKING:
    from selfsup.engine.trainer import Trainer

SPIKE_WINDOW = 20
"""Logged values a spike is measured against: the median of the ones before it."""
LOSS_SPIKE, GRAD_NORM_SPIKE = 1.25, 3.0
"""A logged loss above 1.25x, a gradient norm above 3x, the median of the previous ``SPIKE_WINDOW``."""


def count_spikes(values: list[float], factor: float, window: int = SPIKE_WINDOW) -> int:
    """How many values exceed ``factor`` times the median of the ``window`` values before them (the
    first ``window`` values have too little history and are not counted). A value rises above its
    median by more than ``factor - 1`` times the median's size, so a negative loss (SimSiam's −cos)
    spikes upwards too, and a flat one never.

    Examples:
        >>> count_spikes([1.0] * 30 + [5.0] + [1.0] * 10, factor=3.0)
        1
        >>> count_spikes([1.0 + 0.01 * k for k in range(50)], factor=1.25)  # a slow rise is no spike
        0
        >>> count_spikes([-0.9] * 30 + [-0.2] + [-0.9] * 9, factor=1.25)
        1
    """
    spikes = 0
    for k in range(window, len(values)):
        median = float(np.median(values[k - window:k]))
        if values[k] - median > (factor - 1) * abs(median):
            spikes += 1
    return spikes


def training_summary(history: dict[str, list[tuple[int, float]]]) -> dict[str, float | int]:
    """``loss_spikes`` and, when the run logged it (``train.log_grad_norm``), ``grad_norm_spikes`` and
    ``grad_norm_peak`` (the largest gradient norm over the median of all), over the logged values."""
    summary: dict[str, float | int] = {"logged_steps": len(history.get("loss", [])),
                                       "loss_spikes": count_spikes([v for _, v in history.get("loss", [])], LOSS_SPIKE)}
    norms = [v for _, v in history.get("grad_norm", [])]
    if norms:
        summary["grad_norm_spikes"] = count_spikes(norms, GRAD_NORM_SPIKE)
        summary["grad_norm_peak"] = float(max(norms) / max(float(np.median(norms)), 1e-12))
    summary["definition"] = (f"a logged value above {LOSS_SPIKE}x (loss) or {GRAD_NORM_SPIKE}x (gradient norm) the median "
                             f"of the {SPIKE_WINDOW} logged values before it; train.log_every sets how often values are "
                             f"logged (1: every step)")
    return summary


CALIBRATION_STEPS, CALIBRATION_WARMUP = 12, 3
"""``train.time_limit``: steps timed before the run (undone), of which the first few warm up."""


def timed_steps(trainer: Trainer) -> tuple[float, int]:
    """Seconds per step over a few training steps, undone (weights, optimiser, the fp16 gradient scaler,
    RNG), and how many were run. Every rank takes rank 0's measurement, so every rank plans the same."""
    started = time.perf_counter()
    weights = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    optimizer_state = copy.deepcopy(trainer.optimizer.state_dict())
    precision = trainer.fabric.strategy.precision
    scaler_state = copy.deepcopy(precision.state_dict())  # empty but under fp16, whose scale the steps move
    rng = state.rng_state(trainer.fabric.device)
    calibration = min(CALIBRATION_STEPS, trainer.max_steps)
    marks = []
    for step in range(calibration):
        outputs, _ = trainer.train_step(step)
        float(outputs["loss"].detach())  # wait for the device
        marks.append(time.perf_counter())
    timed = marks[CALIBRATION_WARMUP:] if calibration > CALIBRATION_WARMUP + 1 else marks
    per_step = (timed[-1] - (timed[0] if len(timed) > 1 else started)) / max(1, len(timed) - 1)
    per_step = float(trainer.fabric.broadcast(torch.tensor(per_step, device=trainer.fabric.device), src=0))
    trainer.method.load_state_dict(weights)
    trainer.optimizer.load_state_dict(optimizer_state)
    if scaler_state:
        precision.load_state_dict(scaler_state)
    state.set_rng_state(rng, trainer.fabric.device)
    return per_step, calibration


def plan_time_limit(trainer: Trainer, limit_s: float) -> None:
    """Fix ``max_steps`` from ``train.time_limit``: time a few steps, undo them, and keep as many
    steps as fit in what is left of the limit."""
    started = time.perf_counter()
    per_step, calibration = timed_steps(trainer)
    left = limit_s - (time.perf_counter() - started)
    # Rank 0's count on every rank: each rank's clock started on its own, and ranks that planned different
    # counts would wait for each other's collectives after the shortest one stopped.
    steps = torch.tensor(max(1, int(left // per_step)), device=trainer.fabric.device)
    trainer.max_steps = int(trainer.fabric.broadcast(steps, src=0))
    trainer.schedule = Schedule.build(trainer.cfg.optim, trainer.schedule.base_lr, trainer.max_steps,
                                      trainer.steps_per_epoch)
    if note := trainer.schedule.warmup_note():
        trainer.say(note)
    trainer.time_plan = {"time_limit_s": limit_s, "step_s": per_step, "calibration_steps": calibration}
    trainer.say(f"train.time_limit={trainer.cfg.train.time_limit}: {1000 * per_step:.1f} ms per step over "
                f"{calibration} calibration steps (undone) -> {trainer.max_steps:,} steps "
                f"({trainer.max_steps / trainer.steps_per_epoch:.2f} epochs)")


AUTO_COMPILE_DEVICES = ("cuda",)
"""Where an unset ``train.compile`` compiles when it pays. Not CPUs: there the C view kernel makes RGB
views 2x faster than compiled ones (benchmarks/README.md), so an unset ``train.compile`` stays eager."""
COMPILE_SAVING = 0.21
"""The share of an eager step's time that compiling saves, as measured on an H200 (issue 21: the
ResNet-18 SimCLR step at 3x32x32, batch 512, bf16, ran at 0.63 of the bare backbone's forward and
backward eager and 0.80 compiled: the compiled step takes 0.63 / 0.80 = 0.79 of the eager one)."""
COMPILE_COST_S = 60.0
"""What compiling is taken to cost at the start of a run, in seconds (the backbone and each view shape;
tens of seconds on the GPUs it was tried on): an estimate on the safe side, since a run that compiles
for nothing loses this much, one that does not loses only the saving."""


def compile_pays(eager_s: float, *, saving: float = COMPILE_SAVING, cost_s: float = COMPILE_COST_S) -> bool:
    """Whether compiling saves more than it costs over a run of ``eager_s`` seconds of eager steps.

    Examples:
        >>> compile_pays(351 * 0.026)  # 3 epochs of CIFAR at batch 512, 26 ms a step: saves 1.9 s for 60
        False
        >>> compile_pays(100 * 98 * 0.026)  # 100 epochs: saves 53.5 s, still not 60
        False
        >>> compile_pays(200 * 98 * 0.026)  # 200 epochs: saves 107 s
        True
    """
    return saving * eager_s > cost_s


def plan_compile(trainer: Trainer) -> bool:
    """``train.compile`` unset: on a CUDA GPU, compile when the run is long enough to repay it (its eager
    step timed over a few steps, undone; under ``train.time_limit`` the limit is the run's length);
    elsewhere never. On a GPU the decision and its figures are ``trainer.compile_plan``, kept by the
    checkpoint (a resume does as the first start did) and written to results.json."""
    device = trainer.fabric.device.type
    if device not in AUTO_COMPILE_DEVICES:
        return False
    limit = trainer.cfg.train.time_limit
    if limit is not None:
        step_s, planned_s = None, parse_duration(limit)
    else:
        step_s, _ = timed_steps(trainer)
        planned_s = step_s * trainer.max_steps
    pays = compile_pays(planned_s, saving=COMPILE_SAVING, cost_s=COMPILE_COST_S)
    trainer.compile_plan = {"compile": pays, "eager_run_s": round(planned_s, 2), "saving": COMPILE_SAVING,
                            "cost_s": COMPILE_COST_S, **({"step_s": step_s} if step_s is not None else {}),
                            "reason": (f"train.compile unset on {device}: about {planned_s:,.0f} s of eager steps, "
                                       f"{COMPILE_SAVING:.0%} of which is {COMPILE_SAVING * planned_s:,.0f} s against "
                                       f"{COMPILE_COST_S:.0f} s to compile: {'compiled' if pays else 'eager'}")}
    trainer.say(trainer.compile_plan["reason"] + " (train.compile=true or false decides instead)")
    return pays


def monitor_split(trainer: Trainer) -> tuple[Tensor, Tensor | None]:
    """The kNN monitor's (bank, queries) rows of the training split, both seeded.

    Queries are a stratified ``train.knn_val_fraction`` of the training images, kept out of
    the bank, so the curve is measured on images whose labels it never compares against and
    the test split is left for the final evaluation. Every image, queries included, is still
    unlabelled pretraining data, as in any self-supervised run. With ``knn_val_fraction=0``
    the bank is the training split and the queries are the test split (None).
    """
    labels = trainer.train_set.labels
    n, t = len(trainer.train_set), trainer.cfg.train
    generator = torch.Generator().manual_seed(t.seed)
    if t.knn_val_fraction == 0:
        return torch.randperm(n, generator=generator)[: min(n, t.knn_train_samples)], None
    count = min(n - 1, max(1, round(t.knn_val_fraction * n)))
    queries = torch.from_numpy(stratified_sample(labels.cpu().numpy(), count, np.random.default_rng(t.seed)))
    rest = torch.ones(n, dtype=torch.bool)
    rest[queries] = False
    rest = rest.nonzero().squeeze(1)
    return rest[torch.randperm(len(rest), generator=generator)[: t.knn_train_samples]], queries


def knn_monitor(trainer: Trainer) -> float | None:
    """Weighted kNN accuracy of the current eval encoder on held-out training images (rank 0 computes)."""
    if trainer.train_set.labels is None or (trainer.cfg.train.knn_val_fraction == 0 and trainer.test_set is None):
        return None

    def measure() -> float:
        bank, queries = monitor_split(trainer)
        encoder = trainer.method.eval_encoder()
        autocast = trainer.fabric.device.type == "cuda" or "bf16" in trainer.precision
        kwargs = dict(device=trainer.fabric.device, autocast=autocast, kind=trainer.source.kind)
        images, labels = trainer.source.inputs, trainer.train_set.labels
        if queries is None:
            query_images, query_labels = trainer.test_set.inputs, trainer.test_set.labels
        else:
            query_images, query_labels = _rows(images, queries), labels[queries]
        bank_x = evaluate.extract_features(encoder, _rows(images, bank), **kwargs)
        query_x = evaluate.extract_features(encoder, query_images, **kwargs)
        return evaluate.knn_accuracy(bank_x, labels[bank], query_x, query_labels, k=trainer.cfg.eval.knn_k,
                                     temperature=trainer.cfg.eval.knn_temperature)

    accuracy = trainer.on_rank_zero("measuring the kNN monitor", measure)
    return float(trainer.fabric.broadcast(torch.tensor(accuracy or 0.0, device=trainer.fabric.device), src=0))


def _rows(images, index: Tensor):
    """Rows ``index`` of a tensor, or of a streamed split (still unread)."""
    if isinstance(images, data.ImageStream):
        return images.subset(index)
    return images[index.to(images.device)]
