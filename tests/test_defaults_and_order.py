"""What a mutation review of the suite found no test for: the methods' defaults against their papers and
official code, the order the engine's step runs the method's hooks in, fractional epochs, the modes that
fine-tuning and export run the network in, Jigsaw++'s foreign tiles and the clip sampler's uniform start."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.augment.pretext import replace_with_foreign_tiles
from selfsup.config import load_config
from selfsup.data.video import window_times
from selfsup.engine import Trainer
from selfsup.evaluate import finetune, knn_predict
from selfsup.methods import METHODS, Progress

# (method, argument): value, and where it comes from.
PAPER = {
    ("moco", "momentum"): 0.999,          # facebookresearch/moco main_moco.py --moco-m
    ("moco", "queue_size"): 65536,        # --moco-k
    ("moco", "temperature"): 0.2,         # --moco-t with --mlp --aug-plus (v2)
    ("byol", "base_momentum"): 0.996,     # Grill et al. 2020, section 3.2: tau_base
    ("byol", "proj_hidden_dim"): 4096,    # section 3.3
    ("byol", "proj_dim"): 256,
    ("dino", "center_momentum"): 0.9,     # facebookresearch/dino main_dino.py DINOLoss
    ("dino", "base_momentum"): 0.996,     # --momentum_teacher
    ("dino", "student_temp"): 0.1,
    ("dino", "teacher_temp"): 0.04,
    ("dino", "out_dim"): 65536,
    ("simclr", "temperature"): 0.5,       # Chen et al. 2020, CIFAR-10 (appendix B.9)
    ("simclr", "proj_dim"): 128,
    ("simsiam", "pred_hidden_dim"): 512,  # Chen & He 2021, section 3: the predictor's bottleneck
    ("simsiam", "proj_dim"): 2048,
    ("mocov3", "base_momentum"): 0.99,    # facebookresearch/moco-v3 main_moco.py --moco-m
    ("instdisc", "temperature"): 0.07,    # Wu et al. 2018, section 3.1
    ("instdisc", "bank_momentum"): 0.5,   # lemniscate.pytorch --nce-m
    ("instdisc", "num_noise"): 4096,      # --nce-k
}


@pytest.mark.parametrize("method,argument", sorted(PAPER))
def test_defaults_are_the_papers(method, argument):
    assert inspect.signature(METHODS[method].__init__).parameters[argument].default == PAPER[method, argument]


def test_knn_defaults_are_the_moco_demos():
    parameters = inspect.signature(knn_predict).parameters  # MoCo's CIFAR demo: knn_k 200, knn_t 0.1
    assert parameters["k"].default == 200 and parameters["temperature"].default == 0.1


def test_a_config_without_method_args_builds_the_papers_method(tmp_path):
    trainer = Trainer(load_config(None, ["method=moco", "data.name=digits", "data.size=16", "backbone.width=4",
                                         "train.progress=false", "eval.plots=false", f"train.out_dir={tmp_path}"]))
    assert trainer.method.momentum == 0.999 and trainer.method.temperature == 0.2


TINY = ["data.name=digits", "data.size=16", "backbone.width=4", "train.batch_size=32", "train.progress=false",
        "train.knn_every=0", "eval.plots=false", "train.precision=32-true"]


def test_the_key_encoder_moves_after_the_optimiser_step_toward_the_new_weights(tmp_path):
    """MoCo's key encoder: k <- m k + (1 - m) q with q the query encoder *after* the step (the official
    update runs at the start of the next forward, so it reads the stepped weights)."""
    trainer = Trainer(load_config(None, ["method=moco", *TINY, "method_args.proj_dim=8", "method_args.queue_size=64",
                                         "method_args.momentum=0.9", f"train.out_dir={tmp_path}"]))
    moco = trainer.method
    online = [*moco.backbone.parameters(), *moco.projector.parameters()]
    before = [p.detach().clone() for p in moco.key_encoder.parameters()]
    trainer.train_step(0)
    after_step = [p.detach() for p in online]
    for key, old, new in zip(moco.key_encoder.parameters(), before, after_step, strict=True):
        torch.testing.assert_close(key.detach(), 0.9 * old + 0.1 * new, atol=1e-6, rtol=1e-5)


def test_gradient_clipping_comes_after_the_methods_own_gradient_changes(tmp_path, monkeypatch):
    """The engine's step: the method's after_backward, then optim.grad_clip over what it left. Weight
    gradient of norm 3, bias gradient of norm 4 (total 5); the method drops the bias's (as DINO's last-layer
    freeze does), so a clip at 3.5 leaves the weight's 3 whole, where clipping first would scale it by 3.5/5."""
    trainer = Trainer(load_config(None, [*TINY, "train.batch_size=64", "optim.warmup_epochs=0", "optim.weight_decay=0",
                                         "optim.grad_clip=3.5", "method_args.proj_hidden_dim=16",
                                         "method_args.proj_dim=8", f"train.out_dir={tmp_path}"]))
    params = dict(trainer.method.named_parameters())
    weight, bias = params["backbone.net.0.weight"], params["backbone.net.1.bias"]
    torch.manual_seed(0)
    g_weight, g_bias = torch.randn(weight.shape), torch.randn(bias.shape)
    g_weight, g_bias = 3 * g_weight / g_weight.norm(), 4 * g_bias / g_bias.norm()
    monkeypatch.setattr(trainer, "forward", lambda batch, progress: {
        "loss": (g_weight * weight).sum() + (g_bias * bias).sum()})

    def drops_the_bias(progress):
        bias.grad = None
    monkeypatch.setattr(trainer.method, "after_backward", drops_the_bias)
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    _, lr = trainer.train_step(0)
    torch.testing.assert_close(weight.detach(), w0 - lr * g_weight)  # SGD's first step: the gradient itself
    torch.testing.assert_close(bias.detach(), b0)


def test_epochs_are_fractional():
    assert Progress(6, 100, 4).epoch == 1.5 and Progress(1, 100, 4).epoch == 0.25


class _RecordsMode(nn.Module):
    seen: list[bool] = []  # a class attribute: fine-tuning trains a deep copy

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.BatchNorm1d(4))

    def forward(self, x):
        type(self).seen.append(self.training)
        return self.net(x)


def test_fine_tuning_trains_in_training_mode_and_measures_in_eval_mode():
    """SimCLR appendix B.5 fine-tunes the whole network, BatchNorm statistics updating (train mode); the
    accuracies are read in eval mode."""
    _RecordsMode.seen = []
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 4, 4), generator=generator, dtype=torch.uint8)
    labels = torch.arange(40) % 2
    finetune(_RecordsMode(), images, labels, images[:8], labels[:8], steps=3, batch_size=16, device="cpu")
    assert _RecordsMode.seen.count(True) >= 3 and False in _RecordsMode.seen


def test_export_writes_the_eval_mode_network_whatever_mode_it_is_given(tmp_path):
    from selfsup.export import export_encoder
    from selfsup.nn import build_backbone

    backbone = build_backbone("convnet", in_channels=1, image_size=16, width=4)
    backbone.train()
    with torch.no_grad():  # running statistics far from a batch's own
        for module in backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.fill_(0.3)
                module.running_var.fill_(2.0)
    images = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    paths = export_encoder(backbone.train(), tmp_path, in_channels=1, image_size=16, name="toy", formats=["torchscript"])
    with torch.no_grad(), warnings.catch_warnings():  # torch 2.14 calls torch.jit deprecated; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        exported = torch.jit.load(str(paths["torchscript"]))(images)
        expected = backbone.eval()(images)
        trained = backbone.train()(images)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(exported, trained, atol=1e-3)


def test_foreign_tiles_always_come_from_another_image():
    """Jigsaw++: a replaced tile is another image's (the docstring's promise), whatever the draw."""
    tiles = torch.arange(2.0).view(2, 1, 1, 1, 1).expand(2, 9, 1, 2, 2).contiguous()  # tile value = its image
    for seed in range(100):
        out, mask = replace_with_foreign_tiles(tiles, 9, generator=torch.Generator().manual_seed(seed))
        assert (out[mask] == (1 - tiles[mask])).all()


def test_a_clips_start_is_uniform_over_every_window():
    """Three frames one apart in a three-frame video fit once; in five frames, at starts 0, 1 and 2, each
    a third of the time (torchvision's VideoClips and pytorchvideo's samplers enumerate every window)."""
    sample = window_times(3, stride=1)
    starts = sample(torch.full((3000,), 5), torch.Generator().manual_seed(0))[:, 0].numpy()
    counts = np.bincount(starts, minlength=3) / len(starts)
    assert set(starts.tolist()) == {0, 1, 2} and np.allclose(counts, 1 / 3, atol=0.03)
    assert (sample(torch.full((10,), 3), torch.Generator().manual_seed(0))[:, 0] == 0).all()
