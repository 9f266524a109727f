"""Contrastive losses of the InfoNCE family: NT-Xent and its variants, InfoNCE, InvaSpread, CLIP, SupCon, N-pair, CPC.

The estimators of mutual information that score pairs by a discriminator or against a memory bank
(InstDisc's NCE, Deep InfoMax's JSD and local-global infoNCE) are in `selfsup.losses.estimators`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed
from selfsup.losses._common import (
    float32_loss,
    _BlockLogSumExp,
    _diagonal_cross_entropy,
    _embeddings,
    _float_tensor,
    _labels,
    _local_offset,
    _maybe_gather,
    _positive,
    _same_shape,
    _SelfLogSumExp,
    _softmax_cross_entropy,
    _UNSHIFTED_MAX_LOGIT,
)


@float32_loss
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, *, decoupled: bool = False, gather: bool = True) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy (NT-Xent).

    Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020. With `u = normalise(z)` for the 2N views and
    `s_ij = u_i · u_j / temperature`, anchor i with positive p(i) (its other
    view) has

        l_i = -s_{i,p(i)} + log Σ_{k ≠ i} exp(s_ik)

    and the loss is the mean of l_i over the 2N anchors, the paper's Algorithm 1
    (its 1/2N). The official code (google-research/simclr ``add_contrastive_loss``)
    returns the sum of the two directions' means, twice this value: its learning
    rates were tuned on gradients twice these (LARS's trust ratio cancels the factor
    for the weights it adapts, not for biases and norms). `decoupled=True` is the
    decoupled contrastive loss (Yeh et al., "Decoupled Contrastive Learning",
    ECCV 2022), which also drops the positive from the denominator:
    `log Σ_{k ∉ {i, p(i)}} exp(s_ik)`; this is the N-pair form in the CS 330
    notes.

    Computed in row strips with a hand-written backward, exact to the plain
    `cross_entropy` formulation. On one process with τ >= 1/32 the similarity
    matrix is symmetric and its exps need no max shift, so only the strips
    right of the diagonal are computed (half the work), and kept for backward
    while they fit in 256 MiB (2N <= ~11k); lower τ, or candidates gathered
    from other ranks, take the general blockwise log-sum-exp. Either way the
    2N x 2N matrix never exists whole, nor do the several full-size copies
    autograd keeps for a plain `cross_entropy` (see benchmarks/losses.py).

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

    Examples:
        >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
        >>> nt_xent(z1, z2, temperature=0.5).shape
        torch.Size([])
    """
    z1, z2 = _embeddings("z1", z1), _embeddings("z2", z2)
    _same_shape("z1", z1, "z2", z2)
    _positive("temperature", temperature)
    n = z1.shape[0]
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    symmetric = not (gather and distributed.is_distributed())
    # A tensor temperature may be learned: only the general path carries its gradient.
    if symmetric and isinstance(temperature, (int, float)) and 1 / temperature <= _UNSHIFTED_MAX_LOGIT:
        # Anchors and candidates are the same 2N rows: the symmetric kernel does half the work.
        lse = _SelfLogSumExp.apply(torch.cat((u1, u2), dim=0), 1 / temperature, n if decoupled else None)
        return lse.mean() - (u1 * u2).sum(dim=1).mean() / temperature
    candidates, self_index, positive = _two_view_candidates(u1, u2, gather)
    excluded = torch.stack((self_index, positive), dim=1) if decoupled else self_index[:, None]
    anchors = torch.cat((u1, u2), dim=0) / temperature
    return _softmax_cross_entropy(anchors, candidates, positive, excluded)


def _two_view_candidates(u1: Tensor, u2: Tensor, gather: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The candidates of the 2N local anchors ``[u1; u2]``: every rank's views under
    torch.distributed (one gather for both views, laid out [all first views; all second views]),
    with each anchor's own column and its positive's."""
    n = u1.shape[0]
    pairs = _maybe_gather(torch.stack((u1, u2), dim=1), gather)
    total = pairs.shape[0]
    candidates = torch.cat((pairs[:, 0], pairs[:, 1]), dim=0)
    local = torch.arange(n, device=u1.device) + _local_offset(gather, n)
    return candidates, torch.cat((local, local + total)), torch.cat((local + total, local))


def _pair_similarities(z1: Tensor, z2: Tensor, gather: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine similarities of the 2N local anchors to every candidate view (every rank's under
    torch.distributed), with the positive's column and a mask of the negatives' columns."""
    z1, z2 = _embeddings("z1", z1), _embeddings("z2", z2)
    _same_shape("z1", z1, "z2", z2)
    n = z1.shape[0]
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    candidates, self_index, positive = _two_view_candidates(u1, u2, gather)
    similarities = torch.cat((u1, u2), dim=0) @ candidates.T
    negatives = torch.ones_like(similarities, dtype=torch.bool)
    rows = torch.arange(2 * n, device=z1.device)
    negatives[rows, self_index] = False
    negatives[rows, positive] = False
    return similarities, positive, negatives


@float32_loss
def nt_logistic(z1: Tensor, z2: Tensor, temperature: float = 0.2, *, gather: bool = True) -> Tensor:
    """NT-Logistic, SimCLR's Table 2 alternative to NT-Xent: each pair of views is a binary
    classification of its cosine similarity scaled by ``1 / temperature``,

        l_i = -log σ(s_{i,p(i)} / τ) - mean_{k negative} log σ(-s_ik / τ)

    averaged over the 2N anchors. The positive and the 2N - 2 negatives of an anchor carry equal
    total weight (our choice: a plain sum would let the negatives outweigh the one positive 2N - 2
    to one; the paper's table gives the formula per pair, not its weighting).

    Examples:
        >>> u = torch.eye(2)                          # two images, each view equal to the other
        >>> round(float(nt_logistic(u, u, temperature=1.0)), 4)   # -log σ(1) - log σ(0)
        1.0064
    """
    _positive("temperature", temperature)
    similarities, positive, negatives = _pair_similarities(z1, z2, gather)
    rows = torch.arange(len(positive), device=similarities.device)
    logits = similarities / temperature
    positive_term = -F.logsigmoid(logits[rows, positive])
    negative_term = -(F.logsigmoid(-logits) * negatives).sum(dim=1) / negatives.sum(dim=1).clamp_min(1)
    return (positive_term + negative_term).mean()


@float32_loss
def margin_triplet(z1: Tensor, z2: Tensor, margin: float = 0.4, *, gather: bool = True) -> Tensor:
    """Margin triplet on cosine similarities, SimCLR's Table 2 third loss: every anchor's
    positive against each of its 2N - 2 negatives,

        l_i = mean_{k negative} max(0, s_ik - s_{i,p(i)} + margin)

    averaged over the 2N anchors (the paper's best margin: 0.4).

    Examples:
        >>> u = torch.eye(2)                          # positive similarity 1, negatives 0
        >>> float(margin_triplet(u, u, margin=0.4)), float(margin_triplet(u, u, margin=1.5))
        (0.0, 0.5)
    """
    _positive("margin", margin)
    similarities, positive, negatives = _pair_similarities(z1, z2, gather)
    rows = torch.arange(len(positive), device=similarities.device)
    hinge = (similarities - similarities[rows, positive][:, None] + margin).clamp_min(0)
    return ((hinge * negatives).sum(dim=1) / negatives.sum(dim=1).clamp_min(1)).mean()


@float32_loss
def one_sided_nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.07, *, gather: bool = True) -> Tensor:
    """The SimCLR objective of the Viewmaker code (alextamkin/viewmaker ``SimCLRObjective``): only
    the first views are anchors, and each is scored against all 2N views, itself included,

        l_i = -u1_i · u2_i / τ + logsumexp_j(u1_i · c_j / τ) - log(2N),   c = [u1; u2],

    averaged over the N anchors (``log 2N`` is a constant: it centres the value, not the gradient).
    Under torch.distributed with ``gather`` the candidates are every rank's views and N the global batch.

    Examples:
        >>> u = torch.eye(2)                    # two images, each view equal to its other view
        >>> round(float(one_sided_nt_xent(u, u, temperature=1.0)), 4)   # log(2e + 2) - 1 - log 4
        -0.3799
    """
    z1, z2 = _embeddings("z1", z1), _embeddings("z2", z2)
    _same_shape("z1", z1, "z2", z2)
    _positive("temperature", temperature)
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    candidates, _, _ = _two_view_candidates(u1, u2, gather)
    logits = u1 @ candidates.T / temperature
    return (torch.logsumexp(logits, dim=1) - (u1 * u2).sum(dim=1) / temperature).mean() - math.log(len(candidates))


@float32_loss
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

    Examples:
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


@float32_loss
def invaspread(z1: Tensor, z2: Tensor, temperature: float = 0.1, *, detach_weights: bool = True,
               gather: bool = True) -> Tensor:
    """Invariant and Spreading Instance Feature loss: each view recognised as its own instance, every
    other sample as not that instance, with the batch's features as the classifier weights.

    Ye et al., "Unsupervised Embedding Learning via Invariant and Spreading Instance Feature",
    CVPR 2019, eqs. 2-5, in the symmetric form of the official code (every one of the 2N samples
    is an anchor). With normalised features u of both views, `s_jk = u_j · u_k / τ` and the
    softmax over the other samples `P_j(k) = exp(s_jk) / Σ_{a ≠ j} exp(s_ja)`:

        l_j = -log P_j(pair(j)) - Σ_{k ∉ {j, pair(j)}} log(1 - P_j(k)),   loss = mean_j l_j

    where pair(j) is the other view of the same image. The first term makes a view invariant
    (it is classified as its own instance), the second spreads the others (each other sample
    is classified as *not* being that instance). As in the official code the weights side
    (the columns k) is detached: gradients flow through the anchors only
    (`detach_weights=False` differentiates both sides).

    Args:
        z1: `(N, D)` features of the first view (the "original" image of the paper).
        z2: `(N, D)` features of the second view, row i from the same image as `z1[i]`.
        temperature: τ > 0 (paper: 0.1).
        detach_weights: stop the gradient through the instance weights (the official code).
        gather: use every rank's samples as the other instances under torch.distributed.

    Returns:
        0-d tensor, mean over the 2N anchors.

    Examples:
        >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
        >>> invaspread(z1, z2).shape
        torch.Size([])
    """
    z1, z2 = _embeddings("z1", z1), _embeddings("z2", z2)
    _same_shape("z1", z1, "z2", z2)
    _positive("temperature", temperature)
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"invaspread needs at least 2 images per batch (others to spread from), got {n}")
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    # Candidates ordered [view 1 of every rank | view 2 of every rank]; anchors index into them.
    c1, c2 = _maybe_gather(u[:n], gather), _maybe_gather(u[n:], gather)
    candidates = torch.cat([c1, c2])
    if detach_weights:
        candidates = candidates.detach()
    total = c1.shape[0]
    local = torch.arange(n, device=u.device) + _local_offset(gather, n)
    self_index = torch.cat([local, local + total])
    pair_index = torch.cat([local + total, local])
    logits = u @ candidates.T / temperature
    logits = logits.scatter(1, self_index[:, None], float("-inf"))
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = log_p.gather(1, pair_index[:, None]).squeeze(1)
    log_not = _log1m_exp(log_p).scatter(1, torch.stack([self_index, pair_index], dim=1), 0.0)
    return -(positive + log_not.sum(dim=1)).mean()


def _log1m_exp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Mächler 2012); -inf entries give 0.
    Each branch sees only its own range, so the unused one cannot put NaN into the gradient."""
    cut = -math.log(2)
    near_zero = torch.log(-torch.expm1(x.clamp(min=cut)))
    far = torch.log1p(-torch.exp(x.clamp(max=cut)))
    return torch.where(x > cut, near_zero, far)


@float32_loss
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

    Examples:
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


@float32_loss
def supcon(features: Tensor, labels: Tensor, temperature: float = 0.1, *, gather: bool = True) -> Tensor:
    """Supervised contrastive loss (the "L_out" form): positives are all other samples of the class.

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, eq. 2. With
    normalised u, `s_ij = u_i · u_j / τ`, positives P(i) = {p ≠ i : y_p = y_i}:

        l_i = -1/|P(i)| Σ_{p ∈ P(i)} s_ip + log Σ_{a ≠ i} exp(s_ia)

    averaged over the anchors that have at least one positive (an anchor alone
    in its class has no defined loss and is left out; if no anchor has a
    positive the loss is 0). The official code (HobbitLong/SupContrast
    ``SupConLoss``) gives such an anchor a loss of 0 and still counts it in the
    mean, so with one view per image and singleton classes its loss is smaller by
    the share of anchors without a positive; with two or more views every anchor
    has one and the two agree. Unlike the paper's code there is no extra
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

    Examples:
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


@float32_loss
def n_pair(anchor: Tensor, positive: Tensor, *, labels: Tensor | None = None, same_class: str = "mask") -> Tensor:
    """Sohn's multi-class N-pair loss: each anchor against the positives of all other pairs.

    Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
    Objective", NeurIPS 2016, eq. 3 (on raw inner products, not normalised):

        l_i = log(1 + Σ_{j ≠ i} exp(a_i · p_j - a_i · p_i))

    which is the cross-entropy of the logits `a p^T` with targets on the
    diagonal. The paper keeps embedding norms in check with an L2 penalty
    (λ = 0.002 on the mean squared norm); add it yourself if you need it.

    With `labels`, several pairs may share a class. `same_class="mask"`
    (our default): the positives of the anchor's own class are left out of
    its sum (`j` runs over `y_j ≠ y_i`), the paper's formula over the other
    classes, and its formula exactly whenever the labels are distinct.
    `same_class="soft"`: TensorFlow's `npairs_loss`, the cross-entropy of
    each row of `a p^T` against targets spread evenly over the positives of
    the anchor's class (its own included). The two agree when every class
    appears once.

    Args:
        anchor: `(N, D)` anchors, N >= 2.
        positive: `(N, D)` positives, row i from the class of `anchor[i]`, all classes distinct
            unless `labels` is given.
        labels: optional `(N,)` class of each pair.
        same_class: `"mask"` or `"soft"`, how a shared class counts (above).

    Returns:
        0-d tensor, mean over the N anchors.

    Examples:
        >>> anchor, positive = torch.randn(8, 16), torch.randn(8, 16)
        >>> n_pair(anchor, positive).shape
        torch.Size([])
    """
    anchor, positive = _embeddings("anchor", anchor), _embeddings("positive", positive)
    _same_shape("anchor", anchor, "positive", positive)
    if same_class not in ("mask", "soft"):
        raise ValueError(f"same_class must be 'mask' or 'soft', got {same_class!r}")
    logits = anchor @ positive.T
    if labels is not None:
        labels = _labels("labels", labels, anchor.shape[0], "anchor")
        shared = labels[:, None] == labels[None, :]
        if same_class == "soft":  # tf npairs_loss: targets spread over the class's positives, its own included
            targets = shared.to(logits.dtype) / shared.sum(dim=1, keepdim=True)
            return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
        shared.fill_diagonal_(False)
        logits = logits.masked_fill(shared, float("-inf"))
    return _diagonal_cross_entropy(logits)


@float32_loss
def cpc(context_pred: Tensor, future_codes: Tensor, temperature: float = 1.0) -> Tensor:
    """CPC's InfoNCE: each prediction must pick its true future code among the others.

    van den Oord et al., "Representation Learning with Contrastive Predictive
    Coding", 2018, eq. 4. With predictions `W_k c_t` (rows of `context_pred`)
    and codes `z_{t+k}` (rows of `future_codes`), scores are the raw
    (bilinear, not normalised) inner products divided by τ:

        l_i = -log exp(p_i · z_i / τ) / Σ_j exp(p_i · z_j / τ)

    The negatives are the other codes of the same group: pass `(N, D)` for one
    prediction step, or `(S, N, D)` for S independent groups (e.g. one per step
    k), each row scored only against the codes of its own group.

    Args:
        context_pred: `(N, D)` or `(S, N, D)` predicted codes.
        future_codes: same shape, the true future codes.
        temperature: τ > 0 (CPC: 1).

    Returns:
        0-d tensor, mean over all predictions.

    Examples:
        >>> predictions, codes = torch.randn(4, 8, 16), torch.randn(4, 8, 16)
        >>> cpc(predictions, codes).shape
        torch.Size([])
    """
    context_pred = _float_tensor("context_pred", context_pred, (2, 3))
    future_codes = _float_tensor("future_codes", future_codes, (2, 3))
    if context_pred.shape != future_codes.shape:
        raise ValueError(
            "context_pred and future_codes must have the same shape, "
            f"got {tuple(context_pred.shape)} and {tuple(future_codes.shape)}"
        )
    _positive("temperature", temperature)
    return _diagonal_cross_entropy(context_pred @ future_codes.transpose(-1, -2) / temperature)
