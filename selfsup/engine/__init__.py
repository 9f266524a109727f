"""Training: the loop on Lightning Fabric, optimisers and schedules, checkpoints."""

from selfsup.engine.allocator import tune_allocator
from selfsup.engine.checkpoint import load as load_checkpoint
from selfsup.engine.checkpoint import save_atomic
from selfsup.engine.setup import build_method, resolve_precision
from selfsup.engine.run import RunResult, pretrain
from selfsup.engine.trainer import NonFiniteLossError, Trainer
from selfsup.engine.optim import Schedule, build_optimizer, param_groups

__all__ = ["NonFiniteLossError", "RunResult", "Schedule", "Trainer", "build_method", "build_optimizer",
           "load_checkpoint", "param_groups", "pretrain", "resolve_precision", "save_atomic", "tune_allocator"]
