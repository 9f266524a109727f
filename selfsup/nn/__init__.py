"""Networks and stateful building blocks: backbones, heads, momentum encoders, queues, shuffle-BN,
memory banks, global BatchNorm, schedules."""

from selfsup.nn.backbones import (BACKBONES, GRAPH_BACKBONES, SEQUENCE_BACKBONES, Backbone, GCNEncoder, SignalEncoder,
                                   WrappedEncoder, build_backbone, convnet, feature_map, resnet, split_features, vit,
                                   with_in_channels)
from selfsup.nn.batchnorm import GlobalBatchNorm, convert_sync_batchnorm
from selfsup.nn.dtypes import at_least_float32
from selfsup.nn.heads import DINOHead, projection_mlp
from selfsup.nn.memory_bank import MemoryBank
from selfsup.nn.modes import eval_mode
from selfsup.nn.momentum import check_momentum, frozen_copy, momentum_update
from selfsup.nn.queue import KeyQueue
from selfsup.nn.schedules import cosine, warmup_cosine
from selfsup.nn.shuffle_bn import SplitBatchNorm, shuffled_forward, split_batchnorm

__all__ = [
    "BACKBONES", "GRAPH_BACKBONES", "SEQUENCE_BACKBONES", "Backbone", "DINOHead", "GCNEncoder", "GlobalBatchNorm",
    "KeyQueue", "MemoryBank", "SignalEncoder", "SplitBatchNorm", "WrappedEncoder", "at_least_float32", "build_backbone",
    "check_momentum", "convert_sync_batchnorm", "convnet", "cosine", "eval_mode", "feature_map", "frozen_copy",
    "momentum_update", "projection_mlp", "resnet", "shuffled_forward", "split_batchnorm", "split_features", "vit",
    "warmup_cosine", "with_in_channels",
]
