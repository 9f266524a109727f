"""Every shipped image recipe learns what its method asks, in seconds: a short run on scikit-learn's
digits, then a measure of the method's own task on the held-out digits, against the same network at
its random initialisation (the run's floor).

- Pretext tasks (rotation, jigsaw, relative location) and CPC: the accuracy of their own prediction
  on held-out images (fixed views), which starts at chance.
- Instance methods (InvaSpread, MoCo v1, CMC, InstDisc, MoCo v3, SimSiam): augmentation invariance,
  the share of held-out views whose nearest other view is the other view of the same image.
- Label methods (triplet, SupCon, N-pair): class retrieval, the share of held-out images whose
  nearest other held-out image (cosine) has their class.
- Deep InfoMax: its own local objective (the recipe's infoNCE) on held-out images.

InstDisc, MoCo v3, SimSiam, SupCon and N-pair need 60 short epochs (seconds each) before their
measure moves; at 10-20 they sit at or below their floor, the slow start that the learning bar on
Fashion-MNIST also shows for several of them.

SimCLR, MoCo v2, BYOL and DINO have their own checks in ``test_learning.py``. Whether a recipe beats
its floor downstream on Fashion-MNIST at a short budget is the learning bar
(``benchmarks/learning_bar.py``, docs/results/bar.md): several do not yet; these checks ask the
earlier question, whether each method learns its own objective at all.
"""

import pytest
import torch
import torch.nn.functional as F

from selfsup import augment, evaluate
from selfsup.config import load_config
from selfsup.engine import Trainer
from selfsup.methods import Batch, Progress
from selfsup.nn import eval_mode

pytestmark = pytest.mark.slow

BASE = ["data.name=digits", "train.batch_size=128", "train.progress=false", "train.knn_every=0",
        "eval.plots=false", "train.precision=32-true"]


def _trainer(tmp_path, recipe: str, size: int, epochs: float, width: int, extra: list[str]) -> Trainer:
    return Trainer(load_config(f"recipes/{recipe}_fashion_mnist.yaml", [
        *BASE, f"data.size={size}", f"train.epochs={epochs}", f"backbone.width={width}", f"train.out_dir={tmp_path}",
        *extra]))


@torch.no_grad()
def task_accuracy(trainer: Trainer, key: str) -> float:
    """The method's own prediction accuracy on the held-out digits, views and tasks drawn with a fixed seed."""
    method, images = trainer.method, trainer.test_set.images
    group = getattr(method, "group", None) or 1  # CPC's negatives come from groups of whole images
    images = images[:len(images) - len(images) % group]
    with torch.random.fork_rng(devices=[]), eval_mode(method):
        torch.manual_seed(123)
        views = trainer.augment(images) if trainer.augment is not None else [augment.to_float(images)]
        outputs = method.training_step(Batch(views, torch.arange(len(images)), None), Progress(0, 1, 1))
    return float(outputs[key])


def partner_retrieval(encoder, images: torch.Tensor) -> float:
    """Share of views whose nearest other view (cosine) is the other view of the same image."""
    views = augment.recipe("moco_v2", images.shape[-1])(images, generator=torch.Generator().manual_seed(123))
    z = F.normalize(torch.cat([evaluate.extract_features(encoder, v) for v in views]), dim=1)
    similarity = z @ z.T
    similarity.fill_diagonal_(float("-inf"))
    n = images.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return (similarity.argmax(dim=1) == partner).float().mean().item()


def class_retrieval(encoder, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose nearest other image (cosine) has their class."""
    z = F.normalize(evaluate.extract_features(encoder, images), dim=1)
    similarity = z @ z.T
    similarity.fill_diagonal_(float("-inf"))
    return (labels[similarity.argmax(dim=1)] == labels).float().mean().item()


# (recipe, image side, epochs, width, overrides, margin above the floor). Measured on this CPU
# (deterministic), floor -> trained; each margin sits well below the measured gain.
TASKS = [
    ("rotation", 16, 4, 8, [], 0.25),  # 4-way rotation accuracy: chance -> 0.9+
    ("jigsaw", 28, 6, 8, ["method_args.num_permutations=10", "method_args.hidden_dim=128"], 0.2),
    ("relative_location", 28, 6, 8, ["method_args.hidden_dim=128"], 0.15),
    # CPC: 0.010 -> 0.025 among the patches of 16 whole images (0.040 -> 0.108 when its groups were 4 images)
    ("cpc", 28, 6, 8, ["method_args.hidden=32"], 0.007),
]
INSTANCES = [  # partner retrieval among 720 views, floor 0.036
    ("invaspread", 16, 20, 16, [], 2.0),  # -> 0.101
    ("moco_v1", 16, 20, 16, ["method_args.queue_size=512"], 1.4),  # -> 0.064
    ("cmc", 16, 20, 16, [], 1.2),  # -> 0.051
    # Slower starters (at 20 epochs: 0.029, 0.015 and 0.042, below or at their floor):
    ("instdisc", 16, 60, 16, [], 1.6),
    ("mocov3", 16, 60, 16, ["method_args.hidden_dim=128", "method_args.proj_dim=64"], 1.4),  # -> 0.067
    ("simsiam", 16, 60, 16, ["method_args.proj_hidden_dim=128", "method_args.proj_dim=128",
                             "method_args.pred_hidden_dim=32"], 1.6),  # -> 0.081
]
LABELS = [  # class retrieval among the 360 held-out digits, floor 0.867 (width 8) / 0.939 (width 16)
    # 12 epochs: at 4 the gain hung on the arithmetic (+0.022 at one thread, +0.042 at two, none with AVX2
    # kernels: 0.867 both); at 12 it is 0.086-0.100 on all three.
    ("triplet", 16, 12, 8, [], 0.05),
    ("supcon", 16, 60, 16, [], 0.02),  # -> 0.972 (at 10 epochs 0.872: below its floor)
    ("npair", 16, 60, 16, [], 0.012),  # -> 0.964
]
@pytest.mark.parametrize("recipe,size,epochs,width,extra,gain", TASKS, ids=[t[0] for t in TASKS])
def test_pretext_recipes_learn_their_task(tmp_path, recipe, size, epochs, width, extra, gain):
    trainer = _trainer(tmp_path, recipe, size, epochs, width, extra)
    key = "accuracy" if recipe == "cpc" else "task_accuracy"
    before = task_accuracy(trainer, key)
    trainer.fit()
    after = task_accuracy(trainer, key)
    assert after > before + gain, (before, after)


@pytest.mark.parametrize("recipe,size,epochs,width,extra,factor", INSTANCES, ids=[t[0] for t in INSTANCES])
def test_instance_recipes_learn_augmentation_invariance(tmp_path, recipe, size, epochs, width, extra, factor):
    trainer = _trainer(tmp_path, recipe, size, epochs, width, extra)
    held_out = trainer.test_set.images
    before = partner_retrieval(trainer.method.eval_encoder(), held_out)
    trainer.fit()
    after = partner_retrieval(trainer.method.eval_encoder(), held_out)
    assert after > factor * before, (before, after)


@pytest.mark.parametrize("recipe,size,epochs,width,extra,gain", LABELS, ids=[t[0] for t in LABELS])
def test_label_recipes_learn_their_classes(tmp_path, recipe, size, epochs, width, extra, gain):
    trainer = _trainer(tmp_path, recipe, size, epochs, width, extra)
    test = trainer.test_set
    before = class_retrieval(trainer.method.eval_encoder(), test.images, test.labels)
    trainer.fit()
    after = class_retrieval(trainer.method.eval_encoder(), test.images, test.labels)
    assert after > before + gain, (before, after)


def held_out_objective(trainer: Trainer) -> float:
    """DIM's local infoNCE term (its training objective with the recipe's weights: local 1, global 0) on
    the held-out digits; the prior's gradient reversal needs autograd on, nothing is stepped."""
    method, images = trainer.method, trainer.test_set.images
    group = getattr(method, "group", None) or 1  # CPC's negatives come from groups of whole images
    images = images[:len(images) - len(images) % group]
    with torch.random.fork_rng(devices=[]), eval_mode(method):
        torch.manual_seed(123)
        outputs = method.training_step(Batch([augment.to_float(images)], torch.arange(len(images)), None),
                                       Progress(0, 1, 1))
    return float(outputs["local_mi"])


def test_deep_infomax_raises_its_mutual_information_estimate_on_held_out_images(tmp_path):
    trainer = _trainer(tmp_path, "dim", 16, 12, 8, [])
    before = held_out_objective(trainer)  # at chance log(1 + (B - 1) P): 8.66 for 360 digits of 4x4 positions
    trainer.fit()
    after = held_out_objective(trainer)
    assert after < before - 0.5, (before, after)  # measured 8.657 -> 7.093
