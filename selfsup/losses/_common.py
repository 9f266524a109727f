"""Input checks and the blockwise softmax cross-entropy shared by the losses."""

from __future__ import annotations

import contextlib
import contextvars
import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed
from selfsup.errors import NonFiniteError

# Rows of the similarity matrix materialised at once by the blockwise log-sum-exp:
# 2**22 float32 entries (16 MiB) keeps the block small next to the full matrix while the
# matmuls stay large enough to run at full speed.
_BLOCK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------- validation


_CHECK_FINITE = contextvars.ContextVar("selfsup_losses_check_finite", default=True)


@contextlib.contextmanager
def finite_checks(enabled: bool):
    """Turn the losses' NaN/Inf input checks on or off inside the block.

    The training engine turns them off: under DDP a loss that raised on one rank would skip the
    collectives the other ranks are waiting in. It checks the loss itself instead, on every
    rank together (a NaN input gives a NaN loss).
    """
    token = _CHECK_FINITE.set(enabled)
    try:
        yield
    finally:
        _CHECK_FINITE.reset(token)


def _finite(name: str, x: Tensor) -> None:
    # Skipped under torch.compile: the check is a host sync that would break the graph.
    if not _CHECK_FINITE.get() or torch.compiler.is_compiling():
        return
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or Inf values; check the inputs (or lower the learning rate)")


def _float_tensor(name: str, x: object, ndim: int | tuple[int, ...]) -> Tensor:
    """Check type, rank and finiteness; upcast half precision to float32."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if x.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() > 0 and x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); the loss needs at least one sample")
    _finite(name, x)
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _embeddings(name: str, x: object) -> Tensor:
    return _float_tensor(name, x, 2)


def _same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape (N, D), got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _positive(name: str, value: float | Tensor) -> None:
    as_float = float(value) if not isinstance(value, Tensor) else float(value.detach())
    if not as_float > 0 or as_float == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {as_float}")


def _labels(name: str, labels: object, n: int, n_name: str) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D integer tensor, got {shape}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} must have one label per row of {n_name} ({n}), got {labels.shape[0]}")
    return labels


# ----------------------------------------------------------------------------- blockwise softmax cross-entropy


def full_precision():
    """Context in which autocast is off on every device type, so matmuls stay float32."""
    return _NoAutocast()


class _NoAutocast:
    def __enter__(self):
        self._contexts = [torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False)]
        for context in self._contexts:
            context.__enter__()

    def __exit__(self, *exc):
        for context in reversed(self._contexts):
            context.__exit__(*exc)


def float32_loss(fn):
    """Run a loss (or a custom Function's forward/backward) with autocast off, so a loss called
    inside the engine's bf16/fp16 autocast still does its matmuls and exps in float32 (inputs in
    half precision are upcast by the input checks). Autograd runs a Function's backward under
    the forward's autocast state, hence the decorator there too."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with full_precision():
            return fn(*args, **kwargs)

    return wrapper


class _BlockLogSumExp(torch.autograd.Function):
    """`lse_i = log Σ_{j ∉ excluded_i} exp(a_i · c_j)` without holding the (n, M) matrix whole.

    Forward keeps only the (n,) result; backward recomputes each row block of
    similarities, turns it into the softmax in place and accumulates both
    gradients. Peak extra memory is one block instead of the full matrix (and
    instead of the several full-size copies autograd keeps for a plain
    `cross_entropy`), at the price of one more matmul.
    """

    @staticmethod
    @float32_loss
    def forward(ctx, anchors: Tensor, candidates: Tensor, excluded: Tensor | None) -> Tensor:
        rows = max(1, _BLOCK_ELEMENTS // candidates.shape[0])
        lse = anchors.new_empty(anchors.shape[0])
        for start in range(0, anchors.shape[0], rows):
            logits = _block_logits(anchors, candidates, excluded, start, rows)
            lse[start : start + rows] = torch.logsumexp(logits, dim=1)
        ctx.save_for_backward(anchors, candidates, excluded, lse)
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    @float32_loss
    def backward(ctx, grad_lse: Tensor) -> tuple[Tensor, Tensor, None]:
        anchors, candidates, excluded, lse = ctx.saved_tensors
        rows = max(1, _BLOCK_ELEMENTS // candidates.shape[0])
        grad_anchors = torch.empty_like(anchors)
        grad_candidates = torch.zeros_like(candidates)
        for start in range(0, anchors.shape[0], rows):
            stop = start + rows
            weights = _block_logits(anchors, candidates, excluded, start, rows)
            weights.sub_(lse[start:stop, None]).exp_().mul_(grad_lse[start:stop, None])
            torch.mm(weights, candidates, out=grad_anchors[start:stop])
            grad_candidates.addmm_(weights.T, anchors[start:stop])
        return grad_anchors, grad_candidates, None


def _block_logits(anchors: Tensor, candidates: Tensor, excluded: Tensor | None, start: int, rows: int) -> Tensor:
    logits = anchors[start : start + rows] @ candidates.T
    if excluded is not None:
        logits.scatter_(1, excluded[start : start + rows], float("-inf"))
    return logits


# Below this bound on |logit|, exp(logit) and sums of up to 2**40 such terms stay far inside
# float32's normal range (e^±87), so the log-sum-exp needs no max shift: one shared scale for
# every row, which keeps exp(S) symmetric when S is.
_UNSHIFTED_MAX_LOGIT = 32.0

# `_SelfLogSumExp` keeps its exp strips for backward while they hold at most this many
# elements (256 MiB in float32, 2N <= ~11k rows); that skips recomputing the matmul and the
# exps, about 20% of forward+backward. Larger batches recompute them strip by strip.
_KEPT_EXP_ELEMENTS = 1 << 26


class _SelfLogSumExp(torch.autograd.Function):
    """`lse_i = log Σ_{j ≠ i, j ≠ i ± pair_offset} exp(scale · u_i · u_j)` for unit rows u, |scale| <= 32.

    The anchors are the candidates, so `E = exp(scale · u u^T)` is symmetric:
    forward computes only the strips right of the diagonal (row sums plus
    column sums, half the matmul and half the exps of `_BlockLogSumExp`).
    With `c_i = grad_i / Σ_j E_ij`, the gradient `scale · (diag(c) E + E diag(c)) u`
    is `scale · (c ⊙ E u + E (c ⊙ u))`: each strip multiplies `[u, c ⊙ u]` once
    as it is and once transposed. The strips are kept for backward when they
    fit in `_KEPT_EXP_ELEMENTS`, else recomputed. No max shift is needed because
    every logit lies in [-scale, scale] (see `_UNSHIFTED_MAX_LOGIT`).
    `pair_offset`, when given, also leaves out the partner `i ± pair_offset`
    (the decoupled loss's positive).
    """

    @staticmethod
    @float32_loss
    def forward(ctx, units: Tensor, scale: float, pair_offset: int | None) -> Tensor:
        total = units.shape[0]
        keep = total * (total + _strip_rows(total)) // 2 <= _KEPT_EXP_ELEMENTS
        sums = units.new_zeros(total)
        ctx.kept = []
        for start, stop, strip in _self_exp_strips(units, scale, pair_offset):
            sums[start:stop] += strip.sum(dim=1)
            sums[stop:] += strip[:, stop - start :].sum(dim=0)
            if keep:
                ctx.kept.append((start, stop, strip))
        ctx.save_for_backward(units, sums)
        ctx.scale, ctx.pair_offset = scale, pair_offset
        return sums.log()

    @staticmethod
    @torch.autograd.function.once_differentiable
    @float32_loss
    def backward(ctx, grad_lse: Tensor) -> tuple[Tensor, None, None]:
        units, sums = ctx.saved_tensors
        weights = (grad_lse / sums)[:, None]
        both = torch.cat((units, units * weights), dim=1)
        products = torch.zeros_like(both)  # [E u, E (c ⊙ u)]
        for start, stop, strip in ctx.kept or _self_exp_strips(units, ctx.scale, ctx.pair_offset):
            products[start:stop].addmm_(strip, both[start:])
            products[stop:].addmm_(strip[:, stop - start :].T, both[start:stop])
        ctx.kept = []
        dim = units.shape[1]
        return ctx.scale * (weights * products[:, :dim] + products[:, dim:]), None, None


def _strip_rows(total: int) -> int:
    return max(1, _BLOCK_ELEMENTS // total)


def _self_exp_strips(units: Tensor, scale: float, pair_offset: int | None):
    """Yield `(start, stop, E[start:stop, start:])` with the excluded entries zeroed."""
    total = units.shape[0]
    rows = _strip_rows(total)
    scaled = units * scale
    for start in range(0, total, rows):
        stop = min(start + rows, total)
        strip = (scaled[start:stop] @ units[start:].T).exp_()
        strip.diagonal().zero_()
        if pair_offset is not None:
            strip.diagonal(pair_offset).zero_()
            strip.diagonal(-pair_offset).zero_()
        yield start, stop, strip


def _softmax_cross_entropy(
    anchors: Tensor, candidates: Tensor, positive: Tensor, excluded: Tensor | None = None
) -> Tensor:
    """Mean over rows i of `-log softmax_j(a_i · c_j)[positive_i]`, columns `excluded_i` left out.

    `anchors` already carry the 1/temperature. Equals `F.cross_entropy` on the
    masked logit matrix (tested), computed blockwise.
    """
    lse = _BlockLogSumExp.apply(anchors, candidates, excluded)
    positive_logit = (anchors * candidates[positive]).sum(dim=1)
    return (lse - positive_logit).mean()


def _local_offset(gathered: bool, n: int) -> int:
    """Row of this rank's first sample in a gathered batch."""
    return distributed.rank() * n if gathered and distributed.is_distributed() else 0


def _maybe_gather(x: Tensor, gather: bool) -> Tensor:
    return distributed.gather(x) if gather else x


def _diagonal_cross_entropy(logits: Tensor) -> Tensor:
    """Mean cross-entropy of `(..., N, N)` logits whose targets are the diagonal."""
    n = logits.shape[-1]
    target = torch.arange(n, device=logits.device).expand(logits.shape[:-1])
    return F.cross_entropy(logits.reshape(-1, n), target.reshape(-1))
