"""Training: the loop on Lightning Fabric, optimisers and schedules, checkpoints."""

from selfsup.engine.allocator import tune_allocator
from selfsup.engine.checkpoint import load as load_checkpoint
from selfsup.engine.checkpoint import save_atomic
from selfsup.engine.loop import NonFiniteLossError, RunResult, Trainer, build_method, pretrain, resolve_precision
from selfsup.engine.optim import LARS, build_optimizer, learning_rate

__all__ = ["LARS", "NonFiniteLossError", "RunResult", "Trainer", "build_method", "build_optimizer",
           "learning_rate", "load_checkpoint", "pretrain", "resolve_precision", "save_atomic",
           "tune_allocator"]
