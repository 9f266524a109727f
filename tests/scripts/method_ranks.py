"""A few steps of one method on fixed global batches, on one process or under torchrun; used by
tests/test_ddp_methods.py to compare the two.

usage: method_ranks.py OUT_DIR METHOD [METHOD ...]

Every process builds the method with the same seed around a BatchNorm-free backbone (a linear one,
or a small ConvNet for the methods that read feature maps or cut patches: DIM, CPC, colorization, the
pretext tasks), so a rank's forward pass does not depend on which other images share its batch,
except through what the method itself gathers; takes its rows of each global batch of 8 images, and
runs the engine's step order: training_step, backward, (DDP's gradient mean), SGD step, on_step_end.
Global BN methods get GlobalBatchNorm as the engine gives them.

The methods in LOCAL learn from each rank's batch alone (mining, in-batch negatives, random tasks
drawn per rank). For them one process emulates the ranks: it runs each rank's rows as its own
batch and averages the losses before the backward, which is what DDP's gradient mean computes; every
rank's draws (and each emulated rank's) come from the seed of (step, rank). So a method that
gathered where it should not, or forgot to, ends in another state than the emulation.

Every method runs in float64 (the methods keep float64 where they upcast half precision: see
``selfsup.nn.at_least_float32``), so that the comparison's tolerance measures the method, not float32 rounding:
MoCo v3's BatchNorm over 4-row batches amplified the summation order's rounding to 1.3 times the former 1e-5 in 3
steps on an AMX CPU (2026-12-07); in float64 one process and two differ by about 1e-15.

Every rank writes OUT_DIR/<METHOD>_w<world size>_r<rank>.pt with the method's state_dict after the
steps and the loss of every step (mean over ranks). Several methods run one after the other in the
same processes (one launch: the imports are most of a run's time).
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from selfsup.methods import METHODS, Batch, Progress
from selfsup.nn import Backbone, convert_sync_batchnorm

out_dir, names = Path(sys.argv[1]), sys.argv[2:]
ARGS = {"moco": {"proj_hidden_dim": 8, "proj_dim": 4, "queue_size": 12, "momentum": 0.9, "shuffle_splits": 2},
        "instdisc": {"num_samples": 40, "proj_dim": 4, "num_noise": 16, "temperature": 0.2},
        "instdisc_every_batch": {"num_samples": 40, "proj_dim": 4, "num_noise": 16, "temperature": 0.2,
                                 "normalizer": "every_batch"},
        "instdisc_softmax": {"num_samples": 40, "proj_dim": 4, "num_noise": 0, "temperature": 0.2,
                             "bank_init": "first_visit"},
        "mocov3": {"hidden_dim": 8, "proj_dim": 4, "temperature": 0.5},
        "invaspread": {"proj_dim": 4},
        "supcon": {"proj_hidden_dim": 8, "proj_dim": 4},
        "simclr": {"proj_hidden_dim": 8, "proj_dim": 4},
        "simsiam": {"proj_hidden_dim": 8, "proj_dim": 4, "pred_hidden_dim": 4},
        "triplet": {"embed_dim": 4}, "npair": {"embed_dim": 4},
        "cmc": {"num_samples": 40, "views": "augment", "proj_dim": 4, "num_negatives": 16, "temperature": 0.2},
        "cmc_batch": {"num_samples": 40, "views": "augment", "proj_dim": 4, "negatives": "batch", "temperature": 0.2},
        "clip": {"captions": ["a cat", "a dog", "a red car", "two birds on a wire", "a boat"], "embed_dim": 4,
                 "text_width": 8, "text_layers": 1, "text_heads": 2, "context_length": 8},
        "byol": {"proj_hidden_dim": 8, "proj_dim": 4, "pred_hidden_dim": 8, "base_momentum": 0.9},
        "dino": {"out_dim": 16, "hidden_dim": 8, "bottleneck_dim": 4, "base_momentum": 0.9},
        "rotation": {}, "colorization": {"grid": 20},
        "dim": {"code_dim": 4, "embed_dim": 8, "global_weight": 0.5, "prior_weight": 0.1},
        "cpc": {"patch": 8, "stride": 4, "hidden": 8, "prediction_steps": [1, 2], "group": None},
        "jigsaw": {"num_permutations": 6, "patch": 4, "gap": 1, "hidden_dim": 8},
        "relative_location": {"patch": 4, "gap": 1, "hidden_dim": 8},
        "viewmaker": {"proj_dim": 4, "num_res_blocks": 1, "temperature": 0.5},
        "densecl": {"proj_dim": 4, "queue_size": 12, "momentum": 0.9, "warmup_steps": 1, "shuffle_splits": 2},
        "dense_object_net": {"dim": 3, "matches": 8, "non_matches": 5}}
VARIANT_OF = {"instdisc_every_batch": "instdisc", "instdisc_softmax": "instdisc", "cmc_batch": "cmc"}
CONV = ("rotation", "colorization", "dim", "cpc", "jigsaw", "relative_location", "viewmaker", "densecl",
        "dense_object_net")
# Each rank draws its own views (Viewmaker's noise) and the loss gathers them: one process emulates
# it by making each rank's views with that rank's seed, then takes the loss of all of them at once.
RANK_VIEWS = ("viewmaker",)
LOCAL = ("triplet", "npair", "dim", "cpc", "jigsaw", "relative_location", "dense_object_net")
GLOBAL_BATCH, STEPS = 8, 3

distributed = "WORLD_SIZE" in os.environ
if distributed:
    dist.init_process_group("gloo")
world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)


def backbone_for(name: str) -> Backbone:
    if name not in CONV:
        return Backbone(nn.Sequential(nn.Flatten(), nn.Linear(12, 6)), 6, in_channels=1, mean=[0.0], std=[1.0])
    channels = 3 if name == "colorization" else 1
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone(net, 6, in_channels=channels, mean=[0.5] * channels, std=[0.25] * channels)


def run(name: str) -> None:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    backbone = backbone_for(name)
    method = METHODS[VARIANT_OF.get(name, name)](backbone, **ARGS[name]).train()
    if method.sync_batchnorm and world > 1:
        convert_sync_batchnorm(method, "cpu", exclude=method.sync_batchnorm_exclude)
    model = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False) if world > 1 else method
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)

    # One process emulating the ranks of a LOCAL method runs each rank's rows on its own.
    shares = [rank] if world > 1 or name not in LOCAL else [0, 1]
    parts = world if world > 1 else len(shares)
    shape = (3 if name == "colorization" else 1, 16, 16) if name in CONV else (1, 2, 6)
    step_losses = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(100 + step)
        views = [torch.rand(GLOBAL_BATCH, *shape, generator=g) for _ in range(2)]
        index = torch.randperm(40, generator=g)[:GLOBAL_BATCH]
        labels = torch.tensor([0, 1, 2, 3] * (GLOBAL_BATCH // 4))[torch.randperm(GLOBAL_BATCH, generator=g)]
        caption_ids = torch.randint(0, 5, (GLOBAL_BATCH,), generator=g)  # image-text methods
        n_views = 1 if method.views_needed == (1, 1) else 2
        progress = Progress(step, STEPS, STEPS)
        loss = 0.0
        if name in RANK_VIEWS and world == 1:
            made = []
            for share in (0, 1):
                rows = slice(share * GLOBAL_BATCH // 2, (share + 1) * GLOBAL_BATCH // 2)
                torch.manual_seed(1000 * step + share)
                made.append(method.make_views(Batch([v[rows] for v in views[:n_views]], index[rows]))[0])
            loss = method.loss_of_views(torch.cat([m[0] for m in made]), torch.cat([m[1] for m in made]))
            shares = []
        for share in shares:
            rows = slice(share * GLOBAL_BATCH // parts, (share + 1) * GLOBAL_BATCH // parts)
            batch = Batch([v[rows] for v in views[:n_views]], index[rows], labels[rows],
                          {"caption_ids": caption_ids[rows]})
            torch.manual_seed(1000 * step + share)  # this rank's draws (tasks, tiles, pairs, prior samples)
            loss = loss + model(batch, progress)["loss"] / len(shares)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_step_end(progress)
        mean_loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= world
        step_losses.append(mean_loss.item())

    torch.save({"state": method.state_dict(), "losses": step_losses}, out_dir / f"{name}_w{world}_r{rank}.pt")


for name in names:
    run(name)
if distributed:
    dist.destroy_process_group()
