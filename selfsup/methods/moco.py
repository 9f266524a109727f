"""MoCo v1/v2 (He et al. 2020, "Momentum Contrast"; Chen et al. 2020, "Improved Baselines with MoCo")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed, losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import (Backbone, KeyQueue, check_momentum, frozen_copy, momentum_update, projection_mlp,
                        shuffled_forward, split_batchnorm)


class MoCo(MethodBase):
    """Momentum contrast: a query encoder trained by InfoNCE against a momentum key encoder and a queue.

    Per batch (Algorithm 1 of the MoCo paper)::

        q = normalize(f_q(x_q))                       # (N, D), with gradients
        k = normalize(f_k(x_k))                       # (N, D), no gradients, shuffle-BN
        loss = info_nce(q, k, negatives=queue, τ)     # positive q·k, K negatives from the queue
        enqueue(k of every rank)
        f_k ← m·f_k + (1 − m)·f_q                     # after the optimiser step

    Defaults are MoCo v2's: the MLP head of the official code (Linear–ReLU–Linear, no BatchNorm),
    τ = 0.2, blur in the augmentation. MoCo v1 is ``mlp=False, temperature=0.07`` with MoCo v1's
    augmentation (no blur). BatchNorm is per device (never global: the key encoder relies on
    shuffle-BN so that a query and its key see the statistics of different sub-batches); each
    rank keeps its own running statistics, and checkpoints hold rank 0's, as DDP's buffer
    broadcast would. On one process both encoders normalise over ``shuffle_splits`` interleaved
    sub-batches (:class:`~selfsup.nn.SplitBatchNorm`, the official single-GPU demo's emulation of 8
    devices, ``colab/moco_cifar10_demo.ipynb``), the keys of a permuted batch, so a query and its
    key are normalised among mostly different images, as on 8 GPUs.

    Args:
        backbone: encoder producing ``backbone.out_dim`` features.
        proj_hidden_dim: hidden width of the MLP head (None: the backbone's feature dimension, as
            the official code's ``dim_mlp``; 2048 for a ResNet-50).
        proj_dim: key/query dimension D (128).
        queue_size: number of negatives K (65536); any size, not only multiples of the batch.
        momentum: key-encoder momentum m (0.999).
        temperature: InfoNCE temperature τ (v2: 0.2; v1: 0.07).
        mlp: MLP projection head (v2) instead of a linear one (v1).
        head_batch_norm: BatchNorm on the head's hidden layer (as SimCLR's head; not in MoCo v2).
        shuffle_bn: shuffle the key batch across ranks before the key encoder; on one process,
            permute it and normalise both encoders over ``shuffle_splits`` sub-batches.
        shuffle_splits: sub-batches that emulate devices on one process (the demo's ``bn_splits``, 8).
    """

    exclude_bias_norm = False  # facebookresearch/moco main_moco.py: SGD(model.parameters(), weight_decay=...) decays every parameter

    augment_recipe = "moco_v2"
    sync_batchnorm_exclude = ("key_encoder",)

    def __init__(self, backbone: Backbone, *, proj_hidden_dim: int | None = None, proj_dim: int = 128,
                 queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.2,
                 mlp: bool = True, head_batch_norm: bool = False, shuffle_bn: bool = True,
                 shuffle_splits: int = 8) -> None:
        super().__init__()
        check_momentum("momentum", momentum)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.backbone = backbone
        hidden = backbone.out_dim if proj_hidden_dim is None else proj_hidden_dim
        self.projector = (projection_mlp(backbone.out_dim, hidden, proj_dim, batch_norm=head_batch_norm)
                          if mlp else nn.Linear(backbone.out_dim, proj_dim))
        if shuffle_bn:
            split_batchnorm(backbone, shuffle_splits)
            split_batchnorm(self.projector, shuffle_splits)
        self.key_encoder = frozen_copy(nn.Sequential(backbone, self.projector))
        self.queue = KeyQueue(queue_size, proj_dim)
        self.momentum = momentum
        self.temperature = temperature
        self.shuffle_bn = shuffle_bn
        self.shuffle_splits = shuffle_splits

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        return self.loss_from(self.embed(batch, progress), batch, progress)

    def embed(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        x_q, x_k = batch.views
        q = self.projector(self.backbone(x_q))
        with torch.no_grad():
            if self.shuffle_bn:
                k = shuffled_forward(self.key_encoder, x_k)
            else:
                k = self.key_encoder(x_k)
        return {"q": q, "k": F.normalize(k.float(), dim=1)}

    def loss_from(self, embeddings: dict[str, Tensor], batch: Batch, progress: Progress) -> dict[str, Tensor]:
        k = embeddings["k"].detach()
        loss = losses.info_nce(embeddings["q"], k, negatives=self.queue.keys.clone(), temperature=self.temperature)
        self.queue.enqueue(distributed.gather(k))
        return {"loss": loss}

    def on_step_end(self, progress: Progress) -> None:
        momentum_update(self.key_encoder, (self.backbone, self.projector), self.momentum)
