"""The floor beside every number (selfsup.engine.floor): the same evaluation of the run's own
initial encoder, computed independently here from a copy taken before training; the cache and
what invalidates it; the command line's evaluations carrying it."""

import copy
import json

import pytest
import torch

from selfsup import evaluate
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.engine import Trainer
from selfsup.engine.finish import finish
from selfsup.engine.floor import floor_key, random_init_floor, seeded_build

TINY = ["method=simclr", "data.name=digits", "data.size=16", "backbone.width=8", "train.epochs=2",
        "train.batch_size=128", "train.progress=false", "train.knn_every=0", "eval.plots=false",
        "method_args.proj_hidden_dim=32", "method_args.proj_dim=16"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))


def test_the_floor_is_the_same_evaluation_of_the_runs_own_initial_encoder(tmp_path):
    trainer = Trainer(load_config(None, [*TINY, f"train.out_dir={tmp_path / 'run'}"]))
    initial = copy.deepcopy(trainer.method.eval_encoder())
    train, test = trainer.train_set, trainer.test_set
    train_x, test_x = evaluate.extract_features(initial, train.images), evaluate.extract_features(initial, test.images)
    expected_linear = evaluate.linear_probe(train_x, train.labels, test_x, test.labels).accuracy
    expected_knn = evaluate.knn_accuracy(train_x, train.labels, test_x, test.labels, k=200, temperature=0.1)
    trainer.fit()
    finish(trainer)
    evaluations = json.loads((tmp_path / "run" / "results.json").read_text())["evaluations"]
    assert evaluations["linear"]["random_init"] == {"accuracy": pytest.approx(expected_linear, abs=1e-6)}
    assert evaluations["knn"]["random_init"] == {"accuracy": pytest.approx(expected_knn, abs=1e-6)}
    # Training moved the encoder away from its floor: the two numbers are not one number twice.
    assert evaluations["knn"]["accuracy"] != pytest.approx(expected_knn, abs=1e-4)
    assert set(evaluations["fewshot_5way_1shot"]["random_init"]) == {"accuracy", "ci95"}
    assert set(evaluations["retrieval"]["random_init"]) == {"recall@1", "recall@5", "recall@10"}

    # `selfsup evaluate knn` on the checkpoint finds the same floor (same seed, same data, same protocol).
    assert main(["evaluate", "knn", str(tmp_path / "run" / "checkpoints" / "last.ckpt")]) == 0
    written = json.loads((tmp_path / "run" / "evaluations" / "knn.json").read_text())
    assert written["random_init"]["accuracy"] == pytest.approx(expected_knn, abs=1e-6)
    assert written["accuracy"] == pytest.approx(evaluations["knn"]["accuracy"], abs=1e-6)
    assert main(["evaluate", "knn", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "--no-floor"]) == 0
    assert "random_init" not in json.loads((tmp_path / "run" / "evaluations" / "knn.json").read_text())


def _encoder(seed: int) -> torch.nn.Module:
    return seeded_build(lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)), seed)


def test_the_cache_serves_the_same_floor_and_anything_that_changes_it_computes_it_again(tmp_path):
    images, labels = torch.rand(30, 1, 3, 4), torch.arange(30) % 3
    calls = []

    def evaluations(encoder):
        calls.append(1)
        features = encoder(images).detach()
        return {"knn": {"accuracy": evaluate.knn_accuracy(features, labels, features, labels, k=3), "k": 3,
                        "protocol": "p"}}

    def floor(encoder, data_labels=labels, settings=None):
        data = {"train": {"inputs": images, "labels": data_labels}}
        return random_init_floor(encoder, evaluations, data=data, settings=settings or {"k": 3})

    first = floor(_encoder(0))
    assert set(first) == {"knn"} and set(first["knn"]) == {"accuracy"} and len(calls) == 1  # settings dropped
    assert floor(_encoder(0)) == first and len(calls) == 1  # served from the cache
    changed = labels.clone()
    changed[0] = 2
    floor(_encoder(0), data_labels=changed)  # one label
    floor(_encoder(1))  # other weights
    floor(_encoder(0), settings={"k": 5})  # other settings
    assert len(calls) == 4
    cached, = [p for p in (tmp_path / "cache" / "floors").iterdir() if json.loads(p.read_text())["settings"] == {"k": 5}]
    cached.write_text("{ not json")  # a damaged file is computed again and replaced
    assert floor(_encoder(0), settings={"k": 5}) and len(calls) == 5
    assert json.loads(cached.read_text())["settings"] == {"k": 5}


def test_the_key_reads_every_weight_and_the_architecture():
    base = _encoder(0)
    nudged = copy.deepcopy(base)
    with torch.no_grad():
        nudged[1].weight[3, 11] += 1e-7
    other_shape = seeded_build(lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4),
                                                           torch.nn.ReLU()), 0)
    keys = {floor_key(net, {}, {}) for net in (base, nudged, other_shape)}
    assert len(keys) == 3 and floor_key(copy.deepcopy(base), {}, {}) == floor_key(base, {}, {})


def test_the_key_reads_settings_a_module_keeps_as_plain_attributes():
    # CPC's evaluation encoder keeps its patch grid (patch, stride) as plain attributes: the same weights and
    # repr, other features. Two strides must not share a floor; the same settings must.
    from selfsup.methods.cpc import PatchGridEncoder
    from selfsup.nn import build_backbone

    def grid(stride):
        return seeded_build(lambda: PatchGridEncoder(build_backbone("convnet", in_channels=1, image_size=8, width=8), 8, stride), 0)

    images = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert not torch.equal(grid(4).eval()(images), grid(8).eval()(images))
    assert repr(grid(4)) == repr(grid(8))
    assert floor_key(grid(4), {}, {}) != floor_key(grid(8), {}, {})
    assert floor_key(grid(4), {}, {}) == floor_key(grid(4), {}, {})


class _ReadsItsArgs(torch.nn.Module):
    """A method whose own evaluation depends on an argument that leaves its modules and weights alike
    (as colorization's ``input``)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode, self.layer = mode, torch.nn.Linear(2, 2)

    def extra_evaluations(self, test, *, data, device=None):
        return {"own": {"accuracy": 0.25 if self.mode == "gray" else 0.75}}


def test_a_methods_own_floor_is_not_served_to_a_method_with_other_arguments():
    from types import SimpleNamespace

    from selfsup.engine.finish import random_init_scores

    def trainer(mode):
        cfg = load_config(None, TINY)
        cfg.method_args = {"input": mode}
        return SimpleNamespace(cfg=cfg, build_method=lambda: _ReadsItsArgs(mode), test_set=None,
                               source=SimpleNamespace(kind="image", dataset=None),
                               fabric=SimpleNamespace(device=torch.device("cpu")))

    # the same seed builds the same weights for both; a cache keyed on the weights alone served the first's floor
    assert random_init_scores(trainer("gray"), labelled=False, own=True) == {"own": {"accuracy": 0.25}}
    assert random_init_scores(trainer("lab_dropout"), labelled=False, own=True) == {"own": {"accuracy": 0.75}}
    assert random_init_scores(trainer("gray"), labelled=False, own=True) == {"own": {"accuracy": 0.25}}


def test_the_floor_keeps_every_number_a_sweep_compares_with_it():
    """Each measure a sweep reads beside its floor (``sweep.VALUE_METRICS`` under ``evaluations``, but the
    baselines, which have none) survives the floor's filter: a key missing there leaves a verdict
    "incomplete" (the task alignment's did)."""
    from selfsup import sweep
    from selfsup.engine.floor import scores

    for metric, where in sweep.VALUE_METRICS.items():
        if where[0] != "evaluations" or "baselines" in where:
            continue
        entry = {where[-1]: 0.5, "protocol": "p", "data": "d"}
        assert scores({where[1]: entry}) == {where[1]: {where[-1]: 0.5}}, metric


def test_the_cache_key_follows_every_annotation_a_floor_is_scored_on():
    """A video's masks and its grouping of frames into videos, a pair's matches: the propagation, temporal and
    correspondence floors depend on them, so changing any of them must not return a cached floor."""
    import dataclasses

    from selfsup.data.pairs import ImagePairs
    from selfsup.data.video import VideoSet

    net = torch.nn.Conv2d(1, 2, 3)
    frames = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    videos = VideoSet(frames, None, None, "clips", video=torch.tensor([0, 0, 1, 1]), time=torch.tensor([0, 1, 0, 1]),
                      names=["a", "b"], masks=torch.zeros(4, 8, 8, dtype=torch.uint8))
    marked = videos.masks.clone()
    marked[:, 2:5, 2:5] = 1
    changed = [dataclasses.replace(videos, masks=marked),                            # an object drawn in
               dataclasses.replace(videos, video=torch.zeros(4, dtype=torch.int64),  # one video, not two
                                   time=torch.arange(4), names=["ab"])]
    key = floor_key(net, {"test": videos}, {})
    assert key == floor_key(net, {"test": dataclasses.replace(videos)}, {})       # the same content, the same key
    assert all(floor_key(net, {"test": other}, {}) != key for other in changed)
    matches = torch.tensor([[[1.0, 1.0, 2.0, 2.0]]]).repeat(4, 1, 1)
    pairs = ImagePairs(frames, None, None, "pairs", images_b=frames.clone(), matches=matches,
                       counts=torch.ones(4, dtype=torch.int64))
    moved = dataclasses.replace(pairs, matches=matches + 1)
    assert floor_key(net, {"test": pairs}, {}) != floor_key(net, {"test": moved}, {})


def test_the_key_of_a_streamed_split_follows_how_its_files_are_read(tmp_path):
    # The same files read at another size (or stored side) are other images: their floors differ.
    import numpy as np
    from PIL import Image

    from selfsup.data.stream import folder_split
    for index in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * index, np.uint8)).save(tmp_path / f"{index}.png")
    encoder = _encoder(0)

    def key(size, ratio):
        return floor_key(encoder, {"train": folder_split(tmp_path, "train", size, 3, ratio=ratio, workers=0)}, {})

    assert key(24, 1.0) == key(24, 1.0)
    assert len({key(24, 1.0), key(32, 1.0), key(24, 1.5)}) == 3


def test_a_pretrained_runs_floor_is_the_backbone_with_random_weights_and_its_checkpoint_needs_no_download(
        tmp_path, monkeypatch):
    # Stand-in "pretrained" weights (every parameter 0.0123), served only when torchvision is asked for weights;
    # the floor is labelled "random init", so it must be the same architecture with random weights, and reading
    # the checkpoint back (evaluate) must not fetch the weights again, which a machine without a network cannot.
    import torchvision
    import selfsup.engine.finish as finishing
    real, asked = torchvision.models.get_model, []

    def get_model(name, weights=None, **kwargs):
        net = real(name, weights=None, **kwargs)
        if weights is not None:
            asked.append(weights)
            with torch.no_grad():
                for parameter in net.parameters():
                    parameter.fill_(0.0123)
        return net

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    floors = []
    real_floor = finishing.random_init_floor
    monkeypatch.setattr(finishing, "random_init_floor",
                        lambda encoder, *args, **kwargs: floors.append(copy.deepcopy(encoder)) or real_floor(
                            encoder, *args, **kwargs))
    run = tmp_path / "run"
    trainer = Trainer(load_config(None, [*TINY, "backbone.name=torchvision/resnet18", "backbone.pretrained=true",
                                         "train.epochs=1", "data.max_samples=256", "eval.linear=false",
                                         f"train.out_dir={run}"]))
    def share_of_standin(net):
        weights = torch.cat([p.detach().flatten() for p in net.parameters()])
        return float((weights == torch.tensor(0.0123)).float().mean())

    assert share_of_standin(trainer.method.backbone) > 0.9  # the 1-channel stem sums the RGB filters
    trainer.fit()
    finish(trainer)
    assert len(asked) == 1 and floors
    trained = trainer.method.eval_encoder()
    for floor in floors:
        shapes = {name: tuple(p.shape) for name, p in floor.named_parameters()}
        assert shapes == {name: tuple(p.shape) for name, p in trained.named_parameters()}  # the same stem
        assert share_of_standin(floor) < 0.1  # random, not the pretrained stand-in
        torch.testing.assert_close(floor.mean, trained.mean)  # normalised as the run (the weights' statistics)
    assert main(["evaluate", "knn", str(run / "checkpoints" / "last.ckpt")]) == 0
    assert len(asked) == 1
