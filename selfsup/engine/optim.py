"""Optimisers (torch's SGD, AdamW and Adam, timm's LARS) over a method's parameter groups, and their schedules.

A method's ``param_groups()`` says what each group needs (``lr_scale``, ``fixed_lr``,
``weight_decay_scale``, or an ``optimizer`` of its own); here each group is split into decayed
weights and undecayed biases and norms, and :class:`Schedule` sets every group's LR and weight
decay at every step from the precomputed warmup + cosine LR and cosine weight-decay schedules.

A group with ``optimizer: {"name": "adam", "lr": 1e-3, ...}`` is stepped by that optimiser at that
constant LR instead (Viewmaker's generator, trained by Adam while the encoder takes SGD); the
optimisers then step together as one :class:`ComposedOptimizer`, checkpointed and resumed as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.config import OptimConfig, Optimizer
from selfsup.nn import cosine, warmup_cosine

GROUP_KEYS = frozenset({"params", "lr_scale", "fixed_lr", "weight_decay_scale", "optimizer"})
OWN_OPTIMIZERS = ("adam", "sgd")
"""What a group's own ``optimizer`` may name: torch's Adam (``lr``, ``betas``, ``weight_decay``) or SGD
(``lr``, ``momentum``, ``weight_decay``), at a constant LR."""


class ComposedOptimizer(torch.optim.Optimizer):
    """Several torch optimisers stepped as one. Its ``param_groups`` are the members' own group
    dicts (not copies), so a schedule that sets a group's LR here sets it where it is used; its
    state dict holds each member's.

    Examples:
        >>> a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
        >>> both = ComposedOptimizer([torch.optim.SGD([a], lr=0.1), torch.optim.Adam([b], lr=0.01)])
        >>> (a.sum() + b.sum()).backward(); both.step()
        >>> [round(float(a[0]), 3), round(float(b[0]), 3)]   # SGD: 1 - 0.1; Adam's first step: 1 - 0.01
        [0.9, 0.99]
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        super().__init__([group for member in self.optimizers for group in member.param_groups], defaults={})

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for member in self.optimizers:
            member.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for member in self.optimizers:
            member.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"members": [member.state_dict() for member in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        members = state_dict.get("members") if isinstance(state_dict, dict) else None
        if not isinstance(members, list) or len(members) != len(self.optimizers):
            raise ValueError(f"the optimiser state holds {len(members) if isinstance(members, list) else 'no'} member "
                             f"optimisers; this method has {len(self.optimizers)}")
        for member, state in zip(self.optimizers, members):
            member.load_state_dict(state)
        # Loading gives each member new group dicts: share them again, in place (wrappers hold this list).
        self.param_groups[:] = [group for member in self.optimizers for group in member.param_groups]


def param_groups(method: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The optimiser groups of ``method``: its ``param_groups()`` (or one group of all trainable
    parameters), each split into weights (decayed) and 1-D tensors, i.e. biases and norm scales
    (no weight decay, hence no LARS adaptation) when ``cfg.exclude_bias_norm`` (None: the method's
    ``exclude_bias_norm``, what its official code does; True where a method says nothing).

    Raises:
        ValueError: a group with an unknown key, a parameter in two groups, or a trainable
            parameter in none (it would silently never train).
    """
    declared = method.param_groups() if hasattr(method, "param_groups") else [{"params": list(method.parameters())}]
    groups, seen = [], set()
    exclude = cfg.exclude_bias_norm
    if exclude is None:
        exclude = bool(getattr(method, "exclude_bias_norm", True))
    for index, group in enumerate(declared):
        unknown = set(group) - GROUP_KEYS
        if unknown:
            raise ValueError(f"param group {index} has unknown keys {sorted(unknown)}; allowed: {sorted(GROUP_KEYS)}")
        params = [p for p in group["params"] if p.requires_grad]
        if seen & {id(p) for p in params}:
            raise ValueError(f"param group {index} repeats a parameter of an earlier group")
        seen |= {id(p) for p in params}
        meta = {"lr_scale": float(group.get("lr_scale", 1.0)), "fixed_lr": bool(group.get("fixed_lr", False))}
        if "optimizer" in group:
            meta["own"] = _own_optimizer(group["optimizer"], index)
        scale = float(group.get("weight_decay_scale", 1.0))
        if exclude:
            parts = [([p for p in params if p.ndim > 1], scale), ([p for p in params if p.ndim <= 1], 0.0)]
        else:
            parts = [(params, scale)]
        groups += [{"params": part, "weight_decay_scale": decay, **meta} for part, decay in parts if part]
    missing = [name for name, p in method.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"trainable parameters in no param group: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}")
    return groups


def _own_optimizer(spec: object, index: int) -> dict:
    """A group's own optimiser, checked: ``{"name": "adam" | "sgd", "lr": float, ...}``."""
    allowed = {"adam": {"name", "lr", "betas", "weight_decay"}, "sgd": {"name", "lr", "momentum", "weight_decay"}}
    if not isinstance(spec, dict) or spec.get("name") not in OWN_OPTIMIZERS:
        raise ValueError(f"param group {index}: optimizer must be a mapping with name among {OWN_OPTIMIZERS}, got {spec!r}")
    unknown = set(spec) - allowed[spec["name"]]
    if unknown or not isinstance(spec.get("lr"), (int, float)) or spec["lr"] <= 0:
        raise ValueError(f"param group {index}: optimizer {spec['name']} takes {sorted(allowed[spec['name']])} with "
                         f"lr > 0, got {spec!r}")
    return dict(spec)


def build_optimizer(method: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.name`` over :func:`param_groups` of ``method``.

    LARS is ``timm.optim.Lars`` (You et al. 2017: local LR ``η‖w‖ / (‖g‖ + β‖w‖)``, trust
    coefficient η = 0.001). SimCLR's, BYOL's and MoCo v3's own LARS divide by ``‖g + βw‖`` instead: the
    same where weight decay is small beside the gradient (a ratio of 0.99985 at BYOL's β = 1.5e-6, from a
    review's measurement), up to about 30% apart at β = 1e-4 with small gradients. Adaptation follows the split, not the weight-decay value: weights
    are adapted even at zero weight decay, biases and norms get plain SGD with momentum, as in
    SimCLR and BYOL (timm alone would adapt a group only while its weight decay is non-zero).
    """
    every = param_groups(method, cfg)
    groups = [group for group in every if "own" not in group]
    for group in groups:
        group["weight_decay"] = cfg.weight_decay * group["weight_decay_scale"]
    main = _optimizer(groups, cfg, lr)
    own = [group for group in every if "own" in group]
    if not own:
        return main
    members = [main]
    declared: dict[int, list[dict]] = {}  # the parts (weights, biases and norms) of each declared group
    for group in own:
        spec = group["own"]
        group["lr"] = group["own_lr"] = float(spec["lr"])
        group["weight_decay"] = group["own_weight_decay"] = float(spec.get("weight_decay", 0.0)) * group["weight_decay_scale"]
        declared.setdefault(id(spec), []).append(group)
    for parts in declared.values():
        spec = parts[0]["own"]
        if spec["name"] == "adam":
            members.append(torch.optim.Adam(parts, betas=tuple(spec.get("betas", (0.9, 0.999)))))
        else:
            members.append(torch.optim.SGD(parts, momentum=float(spec.get("momentum", 0.9))))
    return ComposedOptimizer(members)


def _optimizer(groups: list[dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.name == Optimizer.lars:
        from timm.optim import Lars  # here: timm takes a second to import

        for group in groups:
            group["always_adapt"] = group["weight_decay_scale"] > 0
        return Lars(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == Optimizer.sgd:
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == Optimizer.adam:  # weight decay coupled: an L2 term in the gradient, then Adam's scaling
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.betas))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))


@dataclass
class Schedule:
    """Per-step learning rate and weight decay, precomputed for the whole run.

    Attributes:
        base_lr: the peak LR (``optim.lr * batch_size / 256``), also the LR of ``fixed_lr`` groups.
        lr: ``lr[step]``, linear warmup then cosine to ``base_lr * min_lr_ratio``.
        weight_decay: ``weight_decay[step]``, cosine from ``optim.weight_decay`` to
            ``optim.weight_decay_end`` (constant when that is None).
    """

    base_lr: float
    lr: list[float]
    weight_decay: list[float]
    warmup_steps: int = 0

    def warmup_note(self) -> str | None:
        """A sentence where the warm-up is longer than the run (the LR never reaches its peak, nor decays),
        else None."""
        steps = len(self.lr)
        if self.warmup_steps <= steps or not steps:  # equal: the peak at the last step, as a 1-epoch run's
            return None
        return (f"optim.warmup_epochs is {self.warmup_steps:,} steps and the run {steps:,}: the learning rate "
                f"never reaches its peak ({self.lr[-1] / self.base_lr:.0%} of it at the last step) nor decays; "
                f"shorten the warm-up")

    @classmethod
    def build(cls, cfg: OptimConfig, base_lr: float, max_steps: int, steps_per_epoch: int) -> Schedule:
        """The schedules of ``cfg`` for a run of ``max_steps`` steps (warmup given in epochs)."""
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        end_lr = base_lr * cfg.min_lr_ratio
        end_wd = cfg.weight_decay if cfg.weight_decay_end is None else cfg.weight_decay_end
        lr = [warmup_cosine(step, max_steps, warmup, base_lr, end_lr) for step in range(max_steps)]
        wd = [cosine(step, max_steps, cfg.weight_decay, end_wd) for step in range(max_steps)]
        return cls(base_lr, lr, wd, warmup)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's LR and weight decay for ``step``; returns the scheduled LR."""
        lr = self.lr[step]
        for group in optimizer.param_groups:
            if "own_lr" in group:  # a group with its own optimiser keeps its constant settings
                group["lr"], group["weight_decay"] = group["own_lr"], group["own_weight_decay"]
                continue
            group["lr"] = (self.base_lr if group["fixed_lr"] else lr) * group["lr_scale"]
            group["weight_decay"] = self.weight_decay[step] * group["weight_decay_scale"]
        return lr
