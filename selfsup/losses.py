"""Self-supervised and metric-learning losses as pure functions on tensors.

Conventions (see DESIGN.md, "Loss contract"):

* Embeddings are `(N, D)` floating tensors. Unless a docstring says otherwise,
  inputs are L2-normalised, similarities are divided by `temperature`, and the
  result is the mean over anchors as a 0-d tensor.
* float16 / bfloat16 inputs are computed in float32 and the loss is float32;
  float64 stays float64 (so `torch.autograd.gradcheck` works).
* Bad input (wrong rank or shape, mismatched batch sizes, labels of the wrong
  length, temperature <= 0, NaN/Inf values) raises ValueError naming the
  argument.

Distributed semantics of `nt_xent`, `info_nce`, `clip` and `supcon` with
`gather=True` under torch.distributed (W ranks, N local samples each): each
rank's loss is the mean over *its own* anchors, scored against the candidates
of *all* ranks, gathered with `selfsup.distributed.gather`. The gather's
backward sums the gradients every rank sends back, so each rank's embeddings
receive W times the gradient of the single-process loss on the concatenated
`W * N` batch, and DDP's mean over ranks divides the W back out: training under
DDP follows exactly the single-process gradient, and the mean of the ranks'
losses equals the single-process loss. On one process `gather` changes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed

# Rows of the similarity matrix materialised at once by the blockwise log-sum-exp:
# 2**21 float32 entries (8 MiB) keeps the block in cache-friendly sizes while the
# matmuls stay large enough to run at full speed.
_BLOCK_ELEMENTS = 1 << 21


# ----------------------------------------------------------------------------- validation


def _finite(name: str, x: Tensor) -> None:
    # Skipped under torch.compile: the check is a host sync that would break the graph.
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values; check the inputs (or lower the learning rate)")


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


class _BlockLogSumExp(torch.autograd.Function):
    """`lse_i = log Σ_{j ∉ excluded_i} exp(a_i · c_j)` without holding the (n, M) matrix whole.

    Forward keeps only the (n,) result; backward recomputes each row block of
    similarities, turns it into the softmax in place and accumulates both
    gradients. Peak extra memory is one block instead of the full matrix (and
    instead of the several full-size copies autograd keeps for a plain
    `cross_entropy`), at the price of one more matmul.
    """

    @staticmethod
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


# ----------------------------------------------------------------------------- contrastive (InfoNCE family)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, *, decoupled: bool = False, gather: bool = True) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy (NT-Xent).

    Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020. With `u = normalise(z)` for the 2N views and
    `s_ij = u_i · u_j / temperature`, anchor i with positive p(i) (its other
    view) has

        l_i = -s_{i,p(i)} + log Σ_{k ≠ i} exp(s_ik)

    and the loss is the mean of l_i over the 2N anchors. `decoupled=True` is the
    decoupled contrastive loss (Yeh et al., "Decoupled Contrastive Learning",
    ECCV 2022), which also drops the positive from the denominator:
    `log Σ_{k ∉ {i, p(i)}} exp(s_ik)`; this is the N-pair form in the CS 330
    notes.

    Computed blockwise with a hand-written backward, so the 2N x 2N similarity
    matrix never exists whole (see benchmarks/losses.py); exact to the plain
    `cross_entropy` formulation.

    Under torch.distributed with `gather=True` the candidates are the views of
    all ranks (see the module docstring for the gradient semantics).

    Args:
        z1: `(N, D)` first view embeddings.
        z2: `(N, D)` second view embeddings, row i the same image as `z1[i]`.
        temperature: softmax temperature τ > 0 (SimCLR: 0.5 for CIFAR, 0.1 for ImageNet).
        decoupled: drop the positive from the denominator (DCL).
        gather: use every rank's embeddings as negatives under torch.distributed.

    Returns:
        0-d tensor (float32 for half-precision inputs).

    Example:
        >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
        >>> nt_xent(z1, z2, temperature=0.5).shape
        torch.Size([])
    """
    z1, z2 = _embeddings("z1", z1), _embeddings("z2", z2)
    _same_shape("z1", z1, "z2", z2)
    _positive("temperature", temperature)
    n = z1.shape[0]
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    # One gather for both views: rows (i, view) of every rank, then views stacked
    # so the candidate layout is [all first views; all second views].
    pairs = _maybe_gather(torch.stack((u1, u2), dim=1), gather)
    total = pairs.shape[0]
    candidates = torch.cat((pairs[:, 0], pairs[:, 1]), dim=0)
    local = torch.arange(n, device=z1.device) + _local_offset(gather, n)
    self_index = torch.cat((local, local + total))
    positive = torch.cat((local + total, local))
    excluded = torch.stack((self_index, positive), dim=1) if decoupled else self_index[:, None]
    anchors = torch.cat((u1, u2), dim=0) / temperature
    return _softmax_cross_entropy(anchors, candidates, positive, excluded)


def info_nce(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    temperature: float = 0.07,
    *,
    gather: bool = True,
) -> Tensor:
    """InfoNCE as used by MoCo (and CPC, CMC): cross-entropy of the positive key against negatives.

    van den Oord et al., "Representation Learning with Contrastive Predictive
    Coding", 2018; He et al., "Momentum Contrast for Unsupervised Visual
    Representation Learning", CVPR 2020. With normalised q, k and τ:

    * `negatives` given (a queue or memory bank, `(M, D)`):
      `l_i = -log exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_m exp(q_i·n_m/τ))`,
      i.e. cross-entropy with the positive at index 0 (MoCo v1/v2).
      `gather` has no effect here: a MoCo queue already holds every rank's keys.
    * `negatives=None`: the other keys of the batch are the negatives,
      `l_i = -log exp(q_i·k_i/τ) / Σ_j exp(q_i·k_j/τ)`, cross-entropy with the
      positive on the diagonal (MoCo v3; CLIP's one direction). With
      `gather=True` under torch.distributed the keys of all ranks are the
      candidates (see the module docstring).

    Args:
        query: `(N, D)` queries.
        key: `(N, D)` keys, row i the positive of `query[i]` (pass it detached
            for a momentum encoder, as MoCo does).
        negatives: optional `(M, D)` negative keys.
        temperature: τ > 0 (MoCo: 0.07; MoCo v3: 0.2).
        gather: use every rank's keys as candidates when `negatives` is None.

    Returns:
        0-d tensor, mean over the N queries.

    Example:
        >>> q, k, queue = torch.randn(8, 16), torch.randn(8, 16), torch.randn(64, 16)
        >>> info_nce(q, k, queue).shape
        torch.Size([])
    """
    query, key = _embeddings("query", query), _embeddings("key", key)
    _same_shape("query", query, "key", key)
    _positive("temperature", temperature)
    q, k = F.normalize(query, dim=1) / temperature, F.normalize(key, dim=1)
    if negatives is None:
        candidates = _maybe_gather(k, gather)
        positive = torch.arange(q.shape[0], device=q.device) + _local_offset(gather, q.shape[0])
        return _softmax_cross_entropy(q, candidates, positive)
    negatives = _embeddings("negatives", negatives)
    if negatives.shape[1] != query.shape[1]:
        raise ValueError(
            f"negatives must be (M, {query.shape[1]}) to match query's dimension, got {tuple(negatives.shape)}"
        )
    positive_logit = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat((positive_logit, q @ F.normalize(negatives, dim=1).T), dim=1)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def clip(image_emb: Tensor, text_emb: Tensor, logit_scale: float | Tensor, *, gather: bool = True) -> Tensor:
    """CLIP's symmetric InfoNCE over the image-text similarity matrix.

    Radford et al., "Learning Transferable Visual Models From Natural Language
    Supervision", ICML 2021. With normalised u (images), v (texts) and
    `S = logit_scale * u v^T`:

        L = ( CE(S, diag) + CE(S^T, diag) ) / 2

    i.e. each image picks its own caption among all texts and each text its
    own image. With `gather=True` under torch.distributed, each rank's images
    are scored against every rank's texts and vice versa.

    Args:
        image_emb: `(N, D)` image embeddings.
        text_emb: `(N, D)` text embeddings, row i the caption of image i.
        logit_scale: the multiplier `exp(t)` > 0 (CLIP learns `t`, starting at
            log(1/0.07), clipped so the scale stays <= 100); pass a tensor to
            learn it, gradients flow into it.
        gather: use every rank's pairs as candidates under torch.distributed.

    Returns:
        0-d tensor.

    Example:
        >>> images, texts = torch.randn(8, 16), torch.randn(8, 16)
        >>> clip(images, texts, logit_scale=1 / 0.07).shape
        torch.Size([])
    """
    image_emb, text_emb = _embeddings("image_emb", image_emb), _embeddings("text_emb", text_emb)
    _same_shape("image_emb", image_emb, "text_emb", text_emb)
    if isinstance(logit_scale, Tensor) and logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a number or a one-element tensor, got shape {tuple(logit_scale.shape)}")
    _positive("logit_scale", logit_scale)
    if isinstance(logit_scale, Tensor):
        logit_scale = logit_scale.reshape(())
    images, texts = F.normalize(image_emb, dim=1), F.normalize(text_emb, dim=1)
    # One gather for both modalities, as in nt_xent.
    pairs = _maybe_gather(torch.stack((images, texts), dim=1), gather)
    positive = torch.arange(images.shape[0], device=images.device) + _local_offset(gather, images.shape[0])
    image_to_text = _softmax_cross_entropy(images * logit_scale, pairs[:, 1], positive)
    text_to_image = _softmax_cross_entropy(texts * logit_scale, pairs[:, 0], positive)
    return (image_to_text + text_to_image) / 2


def supcon(features: Tensor, labels: Tensor, temperature: float = 0.1, *, gather: bool = True) -> Tensor:
    """Supervised contrastive loss (the "L_out" form): positives are all other samples of the class.

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, eq. 2. With
    normalised u, `s_ij = u_i · u_j / τ`, positives P(i) = {p ≠ i : y_p = y_i}:

        l_i = -1/|P(i)| Σ_{p ∈ P(i)} s_ip + log Σ_{a ≠ i} exp(s_ia)

    averaged over the anchors that have at least one positive (an anchor alone
    in its class has no defined loss and is left out; if no anchor has a
    positive the loss is 0). Unlike the paper's code there is no extra
    `τ / base_τ` factor. Several views per image: concatenate the views and
    repeat the labels (`labels.repeat(V)`). With `gather=True` under
    torch.distributed, positives and negatives come from all ranks.

    Args:
        features: `(N, D)` embeddings.
        labels: `(N,)` integer class labels.
        temperature: τ > 0 (paper: 0.1).
        gather: use every rank's samples as candidates under torch.distributed.

    Returns:
        0-d tensor.

    Example:
        >>> features, labels = torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> supcon(features, labels).shape
        torch.Size([])
    """
    features = _embeddings("features", features)
    labels = _labels("labels", labels, features.shape[0], "features")
    _positive("temperature", temperature)
    n = features.shape[0]
    u = F.normalize(features, dim=1)
    candidates = _maybe_gather(u, gather)
    candidate_labels = _maybe_gather(labels, gather)
    self_index = torch.arange(n, device=u.device) + _local_offset(gather, n)
    # Class sums give Σ_{p ∈ P(i)} u_p in O(N D) instead of an N x N positive mask.
    classes, class_of = torch.unique(candidate_labels, return_inverse=True)
    class_sum = candidates.new_zeros(classes.shape[0], u.shape[1]).index_add(0, class_of, candidates)
    class_size = torch.bincount(class_of, minlength=classes.shape[0])
    anchor_class = class_of[self_index]
    positive_count = class_size[anchor_class] - 1
    positive_sum = class_sum[anchor_class] - candidates[self_index]
    anchors = u / temperature
    lse = _BlockLogSumExp.apply(anchors, candidates, self_index[:, None])
    mean_positive_logit = (anchors * positive_sum).sum(dim=1) / positive_count.clamp(min=1)
    has_positive = positive_count > 0
    per_anchor = (lse - mean_positive_logit) * has_positive
    return per_anchor.sum() / has_positive.sum().clamp(min=1)
