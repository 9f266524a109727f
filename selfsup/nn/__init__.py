"""Networks and stateful building blocks: backbones, heads, momentum encoders, queues, shuffle-BN."""

from selfsup.nn.backbones import BACKBONES, Backbone, build_backbone, convnet, resnet, vit
from selfsup.nn.heads import projection_mlp
from selfsup.nn.momentum import cosine_momentum, frozen_copy, momentum_update
from selfsup.nn.queue import KeyQueue
from selfsup.nn.shuffle_bn import shuffled_forward

__all__ = [
    "BACKBONES", "Backbone", "KeyQueue", "build_backbone", "convnet", "cosine_momentum", "frozen_copy",
    "momentum_update", "projection_mlp", "resnet", "shuffled_forward", "vit",
]
