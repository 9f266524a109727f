"""Gradient caching (train.micro_batch_size): the exact gradient of the full batch's loss, computed one
micro-batch of activations at a time, against the plain full-batch backward of the same step."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import ConfigError, load_config
from selfsup.engine import Trainer
from selfsup.engine import grad_cache
from selfsup.methods import METHODS as REGISTRY
from selfsup.methods import Batch, Progress, SimCLR
from selfsup.methods.base import splits_into_embeddings

TINY = ["data.name=digits", "data.size=16", "train.batch_size=32", "train.epochs=1", "train.progress=false",
        "train.knn_every=0", "eval.plots=false", "train.precision=32-true", "backbone.name=vit_tiny"]
METHODS = {
    "simclr": ["method_args.proj_hidden_dim=16", "method_args.proj_dim=8"],
    "supcon": ["method_args.proj_hidden_dim=16", "method_args.proj_dim=8"],
    "mocov3": ["method_args.hidden_dim=16", "method_args.proj_dim=8"],
    "moco": ["method_args.proj_dim=8", "method_args.queue_size=64"],
    "invaspread": ["method_args.proj_dim=8"],
    "clip": ["data.captions=templates", "method_args.embed_dim=8", "method_args.text_width=16",
             "method_args.text_layers=1", "method_args.text_heads=2", "method_args.context_length=8"],
}


def _gradients(method: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_cached_gradient_is_the_full_batch_gradient(tmp_path, name):
    trainer = Trainer(load_config(None, [f"method={name}", *TINY, *METHODS[name], f"train.out_dir={tmp_path}"]))
    method = trainer.method
    # The ViT has no BatchNorm; the heads' BatchNorms (SimCLR, SupCon, MoCo v3) normalise per micro-batch
    # in training, so they use their running statistics here to make the two functions one.
    for module in method.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    batch, progress = trainer.make_batch(0, 0), Progress(0, 10, 10)
    saved, rng = {k: v.clone() for k, v in method.state_dict().items()}, torch.get_rng_state()
    full = trainer.forward(batch, progress)
    trainer.fabric.backward(full["loss"])
    expected = _gradients(method)
    method.load_state_dict(saved)  # MoCo's queue moved in loss_from: put it back
    method.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    trainer.cfg.train.micro_batch_size = 5  # 32 rows: six of 5 and one of 2
    cached = grad_cache.cached_step(trainer, batch, progress)
    got = _gradients(method)
    assert cached["loss"].item() == pytest.approx(full["loss"].item(), rel=1e-5)
    assert got.keys() == expected.keys() and len(got) > 10
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-4, msg=key)


def test_a_run_with_micro_batches_ends_where_the_full_batch_run_ends(tmp_path):
    # InvaSpread on a ViT: no BatchNorm anywhere, so three optimiser steps land on the same weights.
    def run(*extra):
        trainer = Trainer(load_config(None, ["method=invaspread", *TINY, "method_args.proj_dim=8",
                                             f"train.out_dir={tmp_path / str(len(extra))}", *extra]))
        for step in range(3):
            trainer.train_step(step)
        return trainer.method.state_dict()

    plain, cached = run(), run("train.micro_batch_size=8")
    for key, value in plain.items():
        torch.testing.assert_close(cached[key], value, atol=1e-5, rtol=1e-4, msg=key)


def test_one_micro_batch_as_large_as_the_batch_is_the_plain_step_batchnorm_statistics_included(tmp_path):
    """The first pass (no graph) must leave BatchNorm's running statistics alone: each micro-batch moves
    them once, in the pass that back-propagates, as gradient accumulation would."""
    def run(*extra):
        trainer = Trainer(load_config(None, ["method=simclr", *TINY[:-1], "backbone.name=convnet", "backbone.width=4",
                                             *METHODS["simclr"], f"train.out_dir={tmp_path / str(len(extra))}", *extra]))
        for step in range(2):
            trainer.train_step(step)
        return trainer.method.state_dict()

    plain, cached = run(), run("train.micro_batch_size=32")
    tracked = [key for key in plain if key.endswith("num_batches_tracked")]
    assert tracked and all(int(cached[key]) == int(plain[key]) == 2 for key in tracked)
    for key, value in plain.items():
        torch.testing.assert_close(cached[key], value, atol=1e-5, rtol=1e-4, msg=key)


class DropoutSimCLR(SimCLR):
    """SimCLR with dropout (p=0.5) on the backbone's features: a gradient path that draws random numbers."""

    def embed(self, batch, progress):
        features = F.dropout(self.backbone(torch.cat(batch.views)), p=0.5, training=self.training)
        z1, z2 = self.projector(features).chunk(2)
        return {"z1": z1, "z2": z2}


def test_the_second_pass_draws_the_first_passs_random_numbers(tmp_path, monkeypatch):
    """With dropout on the embedding path, the cached step's loss is that of the masks its first pass drew,
    one micro-batch after another from the step's RNG state; its gradient must be that loss's gradient.
    The reference: the same micro-batches embedded in order from the same RNG state, with their graphs,
    and one plain backward through the whole batch's loss."""
    monkeypatch.setitem(REGISTRY, "dropout_simclr", DropoutSimCLR)
    trainer = Trainer(load_config(None, ["method=dropout_simclr", *TINY[:-1], "backbone.name=convnet", "backbone.width=4",
                                         *METHODS["simclr"], f"train.out_dir={tmp_path}"]))
    method = trainer.method  # its BatchNorms normalise each micro-batch alone, in the reference as in the step
    assert method.training  # so F.dropout draws its masks
    batch, progress = trainer.make_batch(0, 0), Progress(0, 10, 10)
    torch.manual_seed(3)
    pieces = [method.embed(Batch([view[start:start + 8] for view in batch.views], batch.index[start:start + 8]),
                           progress) for start in range(0, 32, 8)]
    loss = method.loss_from({key: torch.cat([piece[key] for piece in pieces]) for key in pieces[0]}, batch, progress)
    loss["loss"].backward()
    expected_loss, expected, rng_after = loss["loss"].item(), _gradients(method), torch.get_rng_state()
    method.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    trainer.cfg.train.micro_batch_size = 8
    cached = grad_cache.cached_step(trainer, batch, progress)
    got = _gradients(method)
    assert cached["loss"].item() == pytest.approx(expected_loss, rel=1e-6)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-5, msg=key)
    assert torch.equal(torch.get_rng_state(), rng_after)  # the RNG goes on from where the first pass left it


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_gives_the_same_gradient_through_the_gradient_scaler(tmp_path, precision):
    # Fabric wants every backward through fabric.backward under mixed precision, and fp16's scaler
    # has already scaled the cached gradient: the micro-batches' backward must not scale it twice.
    from lightning_fabric.plugins.precision import MixedPrecision

    trainer = Trainer(load_config(None, ["method=invaspread", *TINY[:-2], "backbone.name=convnet", "backbone.width=4",
                                         "method_args.proj_dim=8", f"train.out_dir={tmp_path}"]))
    for module in trainer.method.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    if precision == "16-mixed":  # Fabric runs fp16 only on GPUs; its scaler's bookkeeping is the same here
        trainer.fabric.strategy.precision = MixedPrecision(
            "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    else:
        trainer.fabric.strategy.precision = MixedPrecision("bf16-mixed", "cpu")
    batch, progress = trainer.make_batch(0, 0), Progress(0, 10, 10)
    full = trainer.forward(batch, progress)
    trainer.fabric.backward(full["loss"])
    expected = _gradients(trainer.method)
    trainer.method.zero_grad(set_to_none=True)
    trainer.cfg.train.micro_batch_size = 8
    grad_cache.cached_step(trainer, batch, progress)
    got = _gradients(trainer.method)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=2e-2 * float(value.abs().max()), rtol=5e-2, msg=key)


def test_split_batch_cuts_rows_and_keeps_shared_extras():
    views = [torch.arange(10.0).view(5, 2), -torch.arange(10.0).view(5, 2)]
    edges = torch.zeros(2, 7)
    batch = Batch(views, torch.arange(5), torch.arange(5) % 2, {"caption_ids": torch.arange(5) * 10, "edges": edges})
    parts = grad_cache.split_batch(batch, 2)
    assert [p.index.tolist() for p in parts] == [[0, 1], [2, 3], [4]]
    assert parts[1].views[1].tolist() == [[-4.0, -5.0], [-6.0, -7.0]] and parts[2].labels.tolist() == [0]
    assert parts[1].extra["caption_ids"].tolist() == [20, 30] and parts[1].extra["edges"] is edges


def test_methods_that_do_not_split_refuse_the_key_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        Trainer(load_config(None, ["method=byol", *TINY, "train.micro_batch_size=8", f"train.out_dir={tmp_path}"]))
    message = str(info.value)
    assert message.startswith("train.micro_batch_size: byol does not split") and "simclr" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="train.micro_batch_size: must be > 0"):
        load_config(None, ["train.micro_batch_size=0"])


def test_the_methods_said_to_split_are_exactly_those_whose_cached_gradient_is_checked():
    # InstDisc's and CMC's own `embed` (images -> features) is no embed(batch, progress): counted as a
    # split, the engine accepted them and the first cached step called it with (batch, progress).
    assert {name for name, cls in REGISTRY.items() if splits_into_embeddings(cls)} == set(METHODS)


@pytest.mark.parametrize("name, extra", [("instdisc", []), ("cmc", ["method_args.views=augment"])])
def test_bank_methods_with_an_embed_helper_refuse_the_key_in_one_line(tmp_path, name, extra):
    with pytest.raises(ConfigError) as info:
        Trainer(load_config(None, [f"method={name}", *TINY, *extra, "train.micro_batch_size=8",
                                   f"train.out_dir={tmp_path}"]))
    message = str(info.value)
    assert message.startswith(f"train.micro_batch_size: {name} does not split") and "\n" not in message
    assert sorted(message.split("methods that do: ")[1].split(", ")) == sorted(METHODS)
