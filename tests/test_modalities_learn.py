"""The recipes of the other data kinds learn, in seconds: Deep Graph Infomax on a graph, CPC on speech,
CLIP on captioned images and colorization on colour photos, each measured by what its method asks
before and after a short run (the run's own floor is the same network at its random initialisation).

- DGI: its discriminator's JSD objective on the whole graph against a fixed corruption (transductive,
  as in the paper: the graph is the data).
- CPC on a folder of WAV files: the accuracy of its own future-window prediction, which starts at chance.
- CLIP: zero-shot accuracy on the test digits (prompts of every class; 7-9 held out of training).
- Colorization: the accuracy of its quantised colour prediction on held-out photos.

The end-to-end tests of those methods elsewhere check plumbing (resume, exports, the CLI); these
ask whether the recipe learns at all.
"""


import numpy as np
import pytest
import torch

from selfsup import augment
from selfsup.config import load_config
from selfsup.engine import Trainer
from selfsup.methods import Batch, Progress
from selfsup.nn import eval_mode

pytestmark = pytest.mark.slow

QUIET = ["train.progress=false", "train.knn_every=0", "eval.plots=false", "train.precision=32-true"]


@torch.no_grad()
def own_measure(trainer: Trainer, batch: Batch, key: str) -> float:
    """``key`` of the method's ``training_step`` on a fixed batch, in eval mode, with a fixed seed."""
    with torch.random.fork_rng(devices=[]), eval_mode(trainer.method):
        torch.manual_seed(123)
        return float(trainer.method.training_step(batch, Progress(0, 1, 1))[key])


def test_deep_graph_infomax_learns_to_tell_the_graph_from_its_corruption(tmp_path):
    trainer = Trainer(load_config("recipes/dgi_sbm.yaml", [*QUIET, "train.epochs=40", f"train.out_dir={tmp_path}"]))
    graph = trainer.make_batch(0, 0)
    before = own_measure(trainer, graph, "loss")  # the JSD loss of a critic at chance: 2 log 2 = 1.386
    trainer.fit()
    after = own_measure(trainer, graph, "loss")
    assert before == pytest.approx(2 * np.log(2), abs=0.1)
    assert after < before - 0.2, (before, after)  # measured 1.395 -> 1.077


def write_wav(path, samples: np.ndarray, rate: int) -> None:
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def test_cpc_on_speech_windows_learns_to_predict_the_future(tmp_path):
    """Chirps of two speakers' pitch ranges with noise: the future of a window is predictable from its past."""
    rng = np.random.default_rng(0)
    rate, t = 8000, np.arange(8000) / 8000
    for speaker, base in enumerate((180.0, 320.0)):
        for i in range(6):
            pitch = base * (1 + 0.3 * np.sin(2 * np.pi * (0.5 + 0.2 * i) * t))       # a slowly gliding tone
            wave_ = 0.5 * np.sin(2 * np.pi * np.cumsum(pitch) / rate) + 0.05 * rng.standard_normal(len(t))
            write_wav(tmp_path / "speech" / f"spk{speaker}" / f"{i}.wav", wave_, rate)
    trainer = Trainer(load_config("recipes/cpc_speech.yaml", [
        *QUIET, f"data.root={tmp_path / 'speech'}", "data.sample_rate=8000", "data.window=2560", "backbone.width=4",
        "method_args.hidden=32", "train.batch_size=16", "train.epochs=60", "optim.lr=0.05", f"train.out_dir={tmp_path / 'run'}"]))
    batch = trainer.make_batch(0, 0)
    before = own_measure(trainer, batch, "accuracy")
    trainer.fit()
    after = own_measure(trainer, batch, "accuracy")
    assert after > before + 0.05, (before, after)  # measured 0.033 -> 0.108 in 60 epochs (chance about 1/30)


def test_clip_zero_shot_beats_the_same_model_at_its_random_initialisation(tmp_path):
    trainer = Trainer(load_config("recipes/clip_fashion_mnist.yaml", [
        *QUIET, "data.name=digits", "data.size=16", "data.held_out_classes=[7,8,9]", "train.epochs=10",
        "train.batch_size=64", "backbone.width=8", "method_args.text_width=32", "method_args.text_layers=1",
        f"train.out_dir={tmp_path}"]))

    def zero_shot() -> float:
        return trainer.method.extra_evaluations(trainer.test_set, data="digits")["zero_shot"]["accuracy"]

    before = zero_shot()
    trainer.fit()
    after = zero_shot()
    assert after > before + 0.3, (before, after)  # measured 0.097 -> 0.700


def test_colorization_learns_the_colours_of_held_out_photos(tmp_path):
    trainer = Trainer(load_config("recipes/colorization_photos.yaml", [
        *QUIET, "data.size=24", "train.epochs=4", "backbone.width=8", f"train.out_dir={tmp_path}"]))
    images = trainer.test_set.images
    with torch.random.fork_rng(devices=[]):  # one fixed set of held-out views, before and after
        torch.manual_seed(123)
        views = trainer.augment(images) if trainer.augment is not None else [augment.to_float(images)]
    held_out = Batch(views, torch.arange(len(images)))
    before = own_measure(trainer, held_out, "task_accuracy")
    trainer.fit()
    after = own_measure(trainer, held_out, "task_accuracy")
    assert after > before + 0.05, (before, after)  # measured 0.000 -> 0.130
