"""What the studies measure with: SimCLR's Table 2 losses and head variants, BYOL's ablations, the
collapse measures, spike counts, the projection-head evaluation and the sweep's non-accuracy metrics.
Each against numbers worked out independently (a double loop, a closed form, a count by hand)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import losses, sweep
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.engine import monitor, pretrain
from selfsup.evaluate import collapse_entry
from selfsup.methods import BYOL, SimCLR
from selfsup.methods.base import Batch, Progress
from selfsup.nn import build_backbone


def _pairs_loop(z1, z2):
    """(anchor, positive similarity, negative similarities) for every one of the 2N anchors."""
    u = F.normalize(torch.cat((z1, z2)), dim=1).double()
    n = len(z1)
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        yield i, float(u[i] @ u[p]), [float(u[i] @ u[k]) for k in range(2 * n) if k not in (i, p)]


@pytest.mark.parametrize("t", [0.2, 1.0])
def test_nt_logistic_is_the_balanced_binary_loss_of_every_pair(t):
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    want = sum(-log_sigmoid(pos / t) - sum(log_sigmoid(-s / t) for s in neg) / len(neg)
               for _, pos, neg in _pairs_loop(z1, z2)) / 10
    assert float(losses.nt_logistic(z1, z2, t)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("margin", [0.4, 1.0])
def test_margin_triplet_is_the_mean_hinge_over_every_negative(margin):
    torch.manual_seed(1)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    want = sum(sum(max(0.0, s - pos + margin) for s in neg) / len(neg) for _, pos, neg in _pairs_loop(z1, z2)) / 12
    assert float(losses.margin_triplet(z1, z2, margin)) == pytest.approx(want, rel=1e-5)


def test_table2_losses_have_gradients_and_refuse_bad_settings():
    z1 = torch.randn(4, 3, requires_grad=True)
    losses.nt_logistic(z1, torch.randn(4, 3)).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    with pytest.raises(ValueError, match="margin"):
        losses.margin_triplet(z1, z1, margin=0.0)


def _backbone(**kwargs):
    return build_backbone("convnet", in_channels=1, image_size=16, width=4, **kwargs)


@pytest.mark.parametrize("layers, parameters", [(0, 0), (1, 32 * 8 + 8), (2, 32 * 16 + 2 * 16 + 16 * 8 + 8)])
def test_simclr_heads_none_linear_and_nonlinear(layers, parameters):
    method = SimCLR(_backbone(), proj_hidden_dim=16, proj_dim=8, proj_layers=layers)
    assert sum(p.numel() for p in method.projector.parameters()) == parameters
    images = torch.rand(3, 1, 16, 16)
    z = method.projection_encoder().eval()(images)
    assert z.shape == (3, 32 if layers == 0 else 8)
    if layers == 0:  # no head: the loss sees the backbone's features
        assert torch.equal(z, method.eval_encoder().eval()(images))


@pytest.mark.parametrize("name, fn, arg", [("nt_xent", losses.nt_xent, 0.3), ("nt_logistic", losses.nt_logistic, 0.3),
                                           ("margin_triplet", losses.margin_triplet, 0.7)])
def test_simclr_uses_the_loss_it_is_given(name, fn, arg):
    torch.manual_seed(0)
    method = SimCLR(_backbone(), proj_hidden_dim=16, proj_dim=8, temperature=0.3, margin=0.7, loss=name)
    views = [torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)]
    batch = Batch(views, index=torch.arange(6))
    progress = Progress(0, 10, 5)
    embeddings = method.embed(batch, progress)
    assert float(method.loss_from(embeddings, batch, progress)["loss"].detach()) == pytest.approx(
        float(fn(embeddings["z1"], embeddings["z2"], arg).detach()), rel=1e-6)
    with pytest.raises(ValueError, match="loss must be one of"):
        SimCLR(_backbone(), loss="nt_xnet")


def test_byol_without_predictor_regresses_the_target_projection_directly():
    torch.manual_seed(0)
    method = BYOL(_backbone(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, predictor=False)
    assert isinstance(method.predictor, nn.Identity)
    views = [torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16)]
    loss = method.training_step(Batch(views, index=torch.arange(8)), Progress(0, 10, 5))["loss"]
    with torch.no_grad():  # at step 0 the target equals the online network: 2 - 2 cos per view pair
        z1, z2 = (method.projector(method.backbone(v)) for v in views)
        t1, t2 = (method.target(v) for v in views)
    want = (2 - 2 * F.cosine_similarity(z1, t2)).mean() + (2 - 2 * F.cosine_similarity(z2, t1)).mean()
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


def test_byol_with_group_norm_and_weight_standardisation_sees_no_batch_statistics():
    method = BYOL(_backbone(norm="group_ws"), proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=32, head_norm="group")
    kinds = {type(m).__name__ for m in method.modules()}
    assert not any("BatchNorm" in kind for kind in kinds)
    assert {"GroupNorm", "StdConv2d"} <= kinds
    # Batch independence: one image's features do not depend on the others in its batch.
    method.train()
    images = torch.rand(4, 1, 16, 16)
    alone = method.projector(method.backbone(images[:1]))
    together = method.projector(method.backbone(images))[:1]
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="norm must be one of"):
        _backbone(norm="layer")


def test_collapse_measures_against_closed_forms():
    # Singular values 3 and 1 (two orthogonal directions): p = (3/4, 1/4), effective rank exp(H(p)).
    x = torch.zeros(4, 3)
    x[0, 0], x[1, 0], x[2, 1], x[3, 1] = 3, -3, 1, -1  # centred already
    entry = collapse_entry(x * math.sqrt(2), data="toy")
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert entry["effective_rank"] == pytest.approx(math.exp(h), rel=1e-6)  # float32 input
    # Collapsed: every image the same feature, std 0. Spread: the 2d unit vectors +-e_k, already normalised;
    # each coordinate is one +1, one -1 and 2d - 2 zeros: sample std sqrt(2 / (2d - 1)).
    assert collapse_entry(torch.ones(5, 4) * 7, data="toy")["feature_std"] == pytest.approx(0.0, abs=1e-12)
    d = 4
    spread = torch.cat((torch.eye(d), -torch.eye(d)))  # each coordinate: one +1, one -1, 2d - 2 zeros
    assert collapse_entry(spread, data="toy")["feature_std"] == pytest.approx(math.sqrt(2 / (2 * d - 1)), rel=1e-9)


def test_spikes_are_counted_against_the_median_before_them():
    history = {"loss": [(k, 1.0) for k in range(25)] + [(25, 1.3), (26, 1.0), (27, 1.2)],
               "grad_norm": [(k, 2.0) for k in range(22)] + [(22, 7.0), (23, 2.0), (24, 50.0)]}
    summary = monitor.training_summary(history)
    assert summary["loss_spikes"] == 1  # 1.3 > 1.25 x 1.0; 1.2 is not
    assert summary["grad_norm_spikes"] == 2  # 7 and 50 > 3 x 2
    assert summary["grad_norm_peak"] == pytest.approx(25.0)
    # A negative loss (SimSiam's -cos): flat is no spike, noise is none, one jump upwards is one.
    rng = np.random.default_rng(0)
    assert monitor.count_spikes([-0.9] * 40, 1.25) == 0
    assert monitor.count_spikes(list(-0.9 + 0.01 * rng.standard_normal(60)), 1.25) == 0
    assert monitor.count_spikes([-0.9] * 30 + [-0.2] + [-0.9] * 9, 1.25) == 1  # -0.2 is 0.7 above, > 0.25 x 0.9


def _results(tmp, point, seed, *, std, spikes):
    folder = tmp / "runs" / "study" / point / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "evaluations": {"collapse": {"feature_std": std, "effective_rank": 3.0, "random_init": {"feature_std": 0.1}}},
        "training": {"loss_spikes": spikes}}))


def test_a_sweep_summarises_numbers_that_are_not_accuracies_and_verdicts_where_lower_is_better(tmp_path):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        "name: study\nclaim: fewer spikes\npoints:\n  - {name: frozen, overrides: [a=1]}\n"
        "  - {name: trainable, overrides: [a=2]}\nseeds: 2\nmetrics: [loss_spikes, feature_std]\n"
        f"verdict: {{better: frozen, than: [trainable], lower: true}}\nout: {tmp_path / 'runs'}\n")
    for seed, (a, b) in enumerate([(0, 9), (1, 11)]):
        _results(tmp_path, "frozen", seed, std=0.2, spikes=a)
        _results(tmp_path, "trainable", seed, std=0.05, spikes=b)
    study = sweep.load_study(study_file)
    summary = sweep.collect(study)
    assert summary["points"]["frozen"]["loss_spikes"]["mean"] == pytest.approx(0.5)
    assert summary["points"]["trainable"]["feature_std"]["floor"] == pytest.approx(0.1)
    # Means 0.5 and 10 over 2 seeds: differences -9 and -10, fewer seeds than a verdict needs (3).
    word, sentence = sweep.verdict(study, summary)
    assert word == "inconclusive" and "frozen 0.5 vs trainable 10, difference -9.5 over 2 seeds: too few" in sentence
    page = sweep.page(study, summary, [], tmp_path / "page.md")
    assert "| frozen | `a=1` | 0.5 ± 0.7071" in page  # raw numbers, not percentages


@pytest.mark.slow
def test_a_run_evaluates_the_projection_and_counts_spikes(tmp_path):
    cfg = load_config(None, ["data.name=digits", "data.size=16", "backbone.width=4", "method_args.proj_hidden_dim=16",
                             "method_args.proj_dim=8", "train.batch_size=64", "train.epochs=1", "train.progress=false",
                             "train.knn_every=0", "eval.plots=false", "eval.save_embeddings=false", "eval.projection=true",
                             "train.log_every=1", "train.log_grad_norm=true", f"train.out_dir={tmp_path / 'run'}"])
    pretrain(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    evaluations = results["evaluations"]
    assert {"linear_projection", "knn_projection", "collapse_projection", "collapse"} <= set(evaluations)
    assert evaluations["collapse_projection"]["dimension"] == 8 and evaluations["collapse"]["dimension"] == 32
    assert "accuracy" in evaluations["linear_projection"]["random_init"]
    training = results["training"]
    assert training["logged_steps"] == results["steps"]
    assert training["grad_norm_peak"] >= 1.0
    metrics = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    assert "grad_norm" in metrics[0]


def test_a_study_with_several_claims_points_with_their_own_recipes_and_shared_runs(tmp_path):
    root = Path(__file__).resolve().parent.parent
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    points = (f"points:\n  - {{name: rotation, recipe: {root}/recipes/rotation_fashion_mnist.yaml}}\n"
              f"  - {{name: simclr, recipe: {root}/recipes/simclr_fashion_mnist.yaml}}\n")
    first.write_text(f"name: first\n{points}seeds: 3\nmetrics: [knn, linear]\nout: {tmp_path / 'runs'}\n"
                     "verdict:\n  - {claim: kNN, better: simclr, than: [rotation]}\n"
                     "  - {claim: linear, better: rotation, than: [simclr], metric: linear}\n")
    second.write_text(f"name: second\nruns: first\n{points}seeds: 3\nmetrics: [finetune_0.01]\nfinetune: [0.01]\n"
                      f"out: {tmp_path / 'runs'}\n")
    a, b = sweep.load_study(first), sweep.load_study(second)
    assert [run.folder for run in sweep.expand(a)] == [run.folder for run in sweep.expand(b)]
    run = sweep.expand(a)[0]
    assert str(root / "recipes/rotation_fashion_mnist.yaml") in sweep.commands(a, run)[0]
    assert "finetune" in sweep.commands(b, run)[-1]
    for k, run in enumerate(sweep.expand(a)):  # simclr above rotation in kNN, below it in linear, by far
        run.folder.mkdir(parents=True)
        knn, linear = (0.8, 0.7) if run.point.name == "simclr" else (0.6, 0.9)
        (run.folder / "results.json").write_text(json.dumps({"evaluations": {
            "knn": {"accuracy": knn + 0.001 * k}, "linear": {"accuracy": linear + 0.001 * k}}}))
    summary = sweep.collect(a)
    word, sentence = sweep.verdict(a, summary)
    assert (word, sentence) == ("reproduces", "2 of 2 claims reproduce (the 95% interval of each difference beyond "
                                              "zero); each is below.")
    page = sweep.page(a, summary, [], tmp_path / "page.md")
    assert "- kNN: **reproduces.**" in page and "- linear: **reproduces.**" in page
    assert "Each point's recipe in its row," in page
    assert f"| simclr | `{root}/recipes/simclr_fashion_mnist.yaml` | – |" in page
    assert sweep.summarise(b)["verdict"] == "no verdict" and b.folder != a.folder


def test_verdicts_against_the_floor_and_between_two_metrics_of_one_point(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\npoints:\n  - {{name: a, overrides: [x=1]}}\nseeds: 3\nmetrics: [linear, linear_projection]\n"
                    f"out: {tmp_path}\nverdict:\n  - {{claim: learns, above_floor: a}}\n"
                    "  - {claim: h beats z, point: a, beats: linear_projection}\n")
    study = sweep.load_study(spec)
    for run, (h, z) in zip(sweep.expand(study), [(0.90, 0.80), (0.91, 0.86), (0.89, 0.84)]):
        run.folder.mkdir(parents=True)
        (run.folder / "results.json").write_text(json.dumps({"evaluations": {
            "linear": {"accuracy": h, "random_init": {"accuracy": 0.85}}, "linear_projection": {"accuracy": z}}}))
    summary = sweep.collect(study)
    (_, learns, _), (_, beats, text) = sweep.verdicts(study, summary)
    # h: mean 0.90, std 0.01, t(0.975, 2) = 4.303: 0.90 - 4.303 * 0.01 / sqrt(3) = 0.8752 > 0.85.
    assert learns == "reproduces"
    # h - z per run: 0.10, 0.05, 0.05, mean 0.0667, std 0.0289: 4.303 * 0.0289 / sqrt(3) = 0.0717 reaches below zero
    # (scipy.stats.ttest_rel's interval: -0.0050 to 0.1384).
    assert beats == "inconclusive" and "a linear 90.00% vs a linear_projection 83.33%, difference +6.67 ± 7.17%" in text
    # Every cell with a floor shows it (linear's 85.00%), the others none; no recipe named, none assumed.
    page = sweep.page(study, summary, [], tmp_path / "page.md")
    assert "| a | `x=1` | 90.00 ± 1.00 [87.52, 92.48]; *floor* 85.00 | 83.33 ± 3.06 [75.74, 90.92] |" in page
    assert "No recipe (the defaults)," in page
    spec.write_text(spec.read_text().replace("beats: linear_projection", "beats: knn"))
    with pytest.raises(ConfigError, match="beats 'knn' is not among the metrics"):
        sweep.load_study(spec)
