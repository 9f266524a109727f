"""Estimators of mutual information: InstDisc's noise-contrastive estimation against a memory bank, and Deep
InfoMax's (and Deep Graph Infomax's) Jensen-Shannon and local-global infoNCE estimators."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses._common import float32_loss, _float_tensor, _positive


@float32_loss
def nce_log_normalizer(scores: Tensor, noise_prob: float, temperature: float = 0.07) -> Tensor:
    """Monte-Carlo estimate of log Z for InstDisc's NCE, from the noise samples' scores.

    Wu et al. 2018, sec. 3.2: `Z ≈ n E_j[exp(v_j · f_i / τ)] = (n / m) Σ_k exp(v_{j_k} · f_i / τ)`
    averaged over the batch, with n = 1 / noise_prob the bank size. The paper
    (and its code) estimates Z once, on the first batch, and keeps it fixed:
    call this on the first batch, store the result in the method and pass it
    to `nce(..., log_normalizer=...)`. Returned detached, in log space so that
    small temperatures do not overflow.

    Args:
        scores: `(N, 1 + m)` similarities as for `nce` (column 0 is ignored).
        noise_prob: P_n(i) = 1 / n of the uniform noise distribution.
        temperature: τ > 0.

    Returns:
        0-d tensor log Z.

    Examples:
        >>> scores = torch.rand(8, 1 + 16) * 2 - 1
        >>> nce_log_normalizer(scores, noise_prob=1 / 50_000).shape
        torch.Size([])
    """
    scores = _nce_scores(scores)
    _nce_noise_prob(noise_prob)
    _positive("temperature", temperature)
    noise_logits = scores[:, 1:].detach() / temperature
    return torch.logsumexp(noise_logits.reshape(-1), dim=0) - torch.log(
        noise_logits.new_tensor(noise_logits.numel() * noise_prob)
    )


@float32_loss
def nce(
    scores: Tensor,
    noise_prob: float,
    temperature: float = 0.07,
    *,
    log_normalizer: float | Tensor | None = None,
) -> Tensor:
    """InstDisc's noise-contrastive estimation against a memory bank.

    Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", CVPR 2018, eqs. 5-7. The non-parametric softmax
    `P(i|v) = exp(v_i · f / τ) / Z` is learnt as binary classification of the
    data sample against m noise samples drawn uniformly (P_n = 1/n) from the
    bank, with `h(i, v) = P(i|v) / (P(i|v) + m P_n(i))`:

        J = -E_data[log h(i, v)] - m E_noise[log(1 - h(i, v'))]
          = mean_i [ softplus(c - x_i0) + Σ_{k=1}^{m} softplus(x_ik - c) ],

    where `x = scores / τ - log Z` and `c = log(m P_n)` (computed in that
    softplus form for stability). Z is treated as a constant: pass the value
    estimated on the first batch (`nce_log_normalizer`, as the paper does);
    when `log_normalizer` is None it is estimated from this batch instead.

    Args:
        scores: `(N, 1 + m)` similarities `v · f` of each feature with its own
            bank entry (column 0) and m noise entries; cosines for normalised
            features and bank, not divided by τ.
        noise_prob: P_n(i) = 1 / n, n the number of bank entries.
        temperature: τ > 0 (paper: 0.07).
        log_normalizer: log Z, a float or 0-d tensor (not differentiated).

    Returns:
        0-d tensor.

    Examples:
        >>> scores = torch.rand(8, 1 + 16) * 2 - 1
        >>> log_z = nce_log_normalizer(scores, 1 / 50_000)
        >>> nce(scores, 1 / 50_000, log_normalizer=log_z).shape
        torch.Size([])
    """
    scores = _nce_scores(scores)
    _nce_noise_prob(noise_prob)
    _positive("temperature", temperature)
    if log_normalizer is None:
        log_normalizer = nce_log_normalizer(scores, noise_prob, temperature)
    log_normalizer = torch.as_tensor(log_normalizer, dtype=scores.dtype, device=scores.device).detach()
    if log_normalizer.numel() != 1 or not torch.isfinite(log_normalizer).all():
        raise ValueError(f"log_normalizer must be one finite number (log Z), got {log_normalizer}")
    log_model_prob = scores / temperature - log_normalizer
    log_noise = torch.log(scores.new_tensor((scores.shape[1] - 1) * noise_prob))
    data_term = F.softplus(log_noise - log_model_prob[:, 0])
    noise_term = F.softplus(log_model_prob[:, 1:] - log_noise).sum(dim=1)
    return (data_term + noise_term).mean()


def _nce_scores(scores: object) -> Tensor:
    scores = _float_tensor("scores", scores, 2)
    if scores.shape[1] < 2:
        raise ValueError(f"scores must be (N, 1 + m) with m >= 1 noise columns, got {tuple(scores.shape)}")
    return scores


def _nce_noise_prob(noise_prob: float) -> None:
    if not 0 < noise_prob <= 1:
        raise ValueError(f"noise_prob must be in (0, 1] (1 / bank size), got {noise_prob}")


@float32_loss
def jsd_mi(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Negative Jensen-Shannon mutual-information estimate (Deep InfoMax, Deep Graph Infomax).

    Hjelm et al., "Learning deep representations by mutual information
    estimation and maximization", ICLR 2019, eq. 4; Veličković et al., "Deep
    Graph Infomax", ICLR 2019. With discriminator scores T on joint (positive)
    and product-of-marginals (negative) pairs, the estimator is
    `Î = E_P[-softplus(-T)] - E_N[softplus(T)]`, and this returns the loss

        -Î = mean(softplus(-pos_scores)) + mean(softplus(neg_scores)),

    which equals `binary_cross_entropy_with_logits(pos, 1) +
    binary_cross_entropy_with_logits(neg, 0)` (DGI's loss, up to the factor 2
    of averaging over both sets at once when they have equal size).

    Args:
        pos_scores: scores of positive pairs, any non-empty shape.
        neg_scores: scores of negative pairs, any non-empty shape.

    Returns:
        0-d tensor.

    Examples:
        >>> jsd_mi(torch.randn(8), torch.randn(8, 4)).shape
        torch.Size([])
    """
    pos_scores = _float_tensor("pos_scores", pos_scores, tuple(range(0, 9)))
    neg_scores = _float_tensor("neg_scores", neg_scores, tuple(range(0, 9)))
    return F.softplus(-pos_scores).mean() + F.softplus(neg_scores).mean()


@float32_loss
def local_global_info_nce(local: Tensor, global_: Tensor, *, own_score: float = -10.0) -> Tensor:
    """Deep InfoMax's infoNCE between local and global features, as the official code computes it
    (rdevon/DIM, ``cortex_DIM/functions/dim_losses.py``, ``infonce_loss`` with one global vector).

    For image i and position p the positive score is ``l_{i,p} · g_i``; the negatives are the
    scores ``l_{j,q} · g_i`` of every position q of every image j in the batch. The official code
    keeps image i's own positions in the softmax with their score replaced by -10 (``own_score``),
    so each costs ``exp(-10)`` in the denominator::

        loss = mean_{i,p} −log( exp(l_{i,p}·g_i) / (exp(l_{i,p}·g_i) + Σ_{j,q} exp(s_{i,j,q})) )
        s_{i,j,q} = l_{j,q} · g_i  for j ≠ i,   own_score for j = i

    Args:
        local: ``(B, P, D)`` embedded local features (P positions per image).
        global_: ``(B, D)`` embedded global features.
        own_score: the score that stands in for image i's own positions among its negatives.

    Returns:
        0-d tensor.

    Examples:
        >>> local_global_info_nce(torch.randn(4, 9, 8), torch.randn(4, 8)).shape
        torch.Size([])
    """
    local = _float_tensor("local", local, 3)
    global_ = _float_tensor("global_", global_, 2)
    if local.shape[0] != global_.shape[0] or local.shape[2] != global_.shape[1]:
        raise ValueError(f"local (B, P, D) and global_ (B, D) disagree: {tuple(local.shape)} and {tuple(global_.shape)}")
    b, p = local.shape[:2]
    scores = torch.einsum("jqd,id->ijq", local, global_)                    # (B, B, P): l_{j,q} · g_i
    own = torch.eye(b, dtype=torch.bool, device=local.device)
    positives = scores[own]                                                 # (B, P): l_{i,p} · g_i
    negatives = scores.masked_fill(own[:, :, None], own_score).reshape(b, b * p)
    log_denominator = torch.logaddexp(positives, torch.logsumexp(negatives, dim=1, keepdim=True))
    return (log_denominator - positives).mean()
