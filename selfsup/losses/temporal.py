"""Time-contrastive losses on the frames of videos: TCN's and R3M's."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.losses._common import _embeddings, _labels, _same_shape, float32_loss
from selfsup.losses.metric import _margin, semi_hard_from_masks


@float32_loss
def time_contrastive_triplet(embeddings: Tensor, times: Tensor, sequences: Tensor, *, pos_radius: float = 6,
                             neg_radius: float = 12, margin: float = 0.2,
                             across_sequences: bool = True) -> Tensor:
    """Single-view time-contrastive loss: semi-hard triplets whose positives are near in time.

    Sermanet et al., "Time-Contrastive Networks: Self-Supervised Learning from Video", ICRA 2018;
    official ``tensorflow/models`` ``research/tcn/estimators/svtcn_loss.py`` (``singleview_tcn_loss``
    with ``multiseq``): frames i and j form a positive pair when they come from the same sequence
    and ``|t_i - t_j| <= pos_radius`` (i ≠ j), a negative pair when they come from different
    sequences or ``|t_i - t_j| > neg_radius``; pairs in between are neither. With squared distances
    ``D_ij = ||e_i - e_j||²``, every positive pair (i, j) takes the semi-hard negative
    ``min {D_ik : k negative for i, D_ik > D_ij}`` (the largest ``D_ik`` when none is farther):

        L = mean over positive pairs of max(0, margin + D_ij - D_ik)

    The official single-view TCN L2-normalises its embeddings first; so does the caller here.

    Args:
        embeddings: ``(N, D)`` frame embeddings.
        times: ``(N,)`` each frame's time in its sequence (frames).
        sequences: ``(N,)`` each frame's sequence id.
        pos_radius, neg_radius: the two radii in frames (official 6 and 12; ``neg_radius > pos_radius``).
        margin: the hinge margin on squared distances (official 0.2).
        across_sequences: frames of different sequences are negatives (the official ``multiseq=True``);
            ``False`` keeps only the same sequence's frames beyond ``neg_radius`` as negatives, the official
            default (``multiseq=False``), whose batch is one sequence. An anchor without a negative counts
            its pairs at ``D_ij + margin``, as the official loss (:func:`semi_hard_triplet`).

    Examples:
        >>> e = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> time_contrastive_triplet(e, torch.arange(8), torch.zeros(8, dtype=torch.long), pos_radius=1, neg_radius=3).shape
        torch.Size([])
    """
    embeddings = _embeddings("embeddings", embeddings)
    times = _labels("times", times, embeddings.shape[0], "embeddings")
    sequences = _labels("sequences", sequences, embeddings.shape[0], "embeddings")
    _margin(margin)
    if not 0 <= pos_radius < neg_radius:
        raise ValueError(f"need 0 <= pos_radius < neg_radius, got {pos_radius} and {neg_radius}")
    gap = (times[:, None] - times[None, :]).abs()
    same = sequences[:, None] == sequences[None, :]
    itself = torch.eye(len(times), dtype=torch.bool, device=times.device)
    positive = same & (gap <= pos_radius) & ~itself
    negative = (~same | (gap > neg_radius)) if across_sequences else same & (gap > neg_radius)
    distances = torch.cdist(embeddings, embeddings).square()
    return semi_hard_from_masks(distances, positive, negative, margin)


@float32_loss
def multi_view_time_contrastive(embeddings: Tensor, times: Tensor, scenes: Tensor, *, margin: float = 0.2,
                                neg_radius: float = 0, views: Tensor | None = None) -> Tensor:
    """Multi-view time-contrastive loss: a moment seen by another camera is the positive.

    Sermanet et al. 2018, section III-A; official ``tensorflow/models`` ``research/tcn``
    (``estimators/mvtcn_estimator.py``: ``triplet_semihard_loss`` with each frame labelled by its
    timestep, so that the co-occurring frame of the other view shares the label and every other
    timestep is a negative). Frames i and j form a positive pair when they show the same scene at the
    same time (i ≠ j: the other views); a negative pair when they show other scenes or times more
    than ``neg_radius`` apart (0, the official: every other time). Semi-hard triplets on squared
    distances, as :func:`time_contrastive_triplet`::

        L = mean over positive pairs (i, j) of max(0, margin + D_ij - D_ik),   D = ||e_i - e_j||²
        k = argmin {D_ik : k negative for i, D_ik > D_ij}  (the largest D_ik when none is farther)

    Args:
        embeddings: ``(N, D)`` frame embeddings (L2-normalised by the caller, as the official).
        times: ``(N,)`` each frame's time.
        scenes: ``(N,)`` each frame's scene (the views of one scene share it).
        margin: the hinge margin on squared distances (official 0.2).
        neg_radius: frames of the same scene at most this far apart in time are neither positive
            nor negative (0: only the same moment is spared).
        views: ``(N,)`` each frame's view (its video): frames of the same view are never positives of
            each other (a video without another view, paired with itself, shows the same frame twice;
            the official batch holds each moment of each view once). None: every other frame of the
            moment is a positive.

    Examples:
        >>> e = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> t = torch.arange(4).repeat(2)                       # two views of times 0..3
        >>> multi_view_time_contrastive(e, t, torch.zeros(8, dtype=torch.long)).shape
        torch.Size([])
    """
    embeddings = _embeddings("embeddings", embeddings)
    times = _labels("times", times, embeddings.shape[0], "embeddings")
    scenes = _labels("scenes", scenes, embeddings.shape[0], "embeddings")
    _margin(margin)
    if not neg_radius >= 0:
        raise ValueError(f"neg_radius must be >= 0, got {neg_radius}")
    gap = (times[:, None] - times[None, :]).abs()
    same = scenes[:, None] == scenes[None, :]
    itself = torch.eye(len(times), dtype=torch.bool, device=times.device)
    positive = same & (gap == 0) & ~itself
    if views is not None:
        views = _labels("views", views, embeddings.shape[0], "embeddings")
        positive &= views[:, None] != views[None, :]
    negative = ~same | (gap > neg_radius)
    distances = torch.cdist(embeddings, embeddings).square()
    return semi_hard_from_masks(distances, positive, negative, margin)


def r3m_time_contrastive(s0: Tensor, s1: Tensor, s2: Tensor, shuffles: Tensor, eps: float = 1e-8) -> Tensor:
    """R3M's time-contrastive InfoNCE with similarity ``-||a - b||₂`` and no temperature.

    Nair et al., "R3M: A Universal Visual Representation for Robot Manipulation", CoRL 2022;
    official ``facebookresearch/r3m`` ``r3m/trainer.py``. For frames ``s0 < s1 <= s2`` of each video
    (embeddings unnormalised), with ``sim(a, b) = -||a - b||₂`` and ``K`` pairs of shuffles ``(π_k, ρ_k)``
    of the batch (the official draws 3 pairs, each ``ρ_k`` for the s0 anchor then ``π_k`` for the s2
    anchor, independently, and does not exclude the frame itself)::

        L1 = -log(eps + e^{sim(s2,s1)} / (eps + e^{sim(s2,s0)} + e^{sim(s2,s1)} + Σ_k e^{sim(s2, s2[π_k])}))
        L2 = -log(eps + e^{sim(s0,s1)} / (eps + e^{sim(s0,s1)} + e^{sim(s0,s2)} + Σ_k e^{sim(s0, s0[ρ_k])}))
        L  = mean over videos of (L1 + L2) / 2

    The frame nearer in time is the positive; the farther frame of the same video and the same
    frame position of other videos are the negatives.

    Args:
        s0, s1, s2: ``(N, D)`` embeddings of the three ordered frames.
        shuffles: ``(K, 2, N)`` int64 permutations of the batch (the other videos' frames): ``[k, 0]``
            is ``ρ_k`` (the s0 anchor's negatives), ``[k, 1]`` is ``π_k`` (the s2 anchor's), as the
            official draws them. ``(K, N)``: one permutation per negative for both anchors.
        eps: the official's 1e-8 inside and outside the ratio.

    Examples:
        >>> s = [torch.randn(4, 8) for _ in range(3)]
        >>> r3m_time_contrastive(*s, torch.stack([torch.randperm(4) for _ in range(6)]).view(3, 2, 4)).shape
        torch.Size([])
    """
    s0, s1, s2 = _embeddings("s0", s0), _embeddings("s1", s1), _embeddings("s2", s2)
    _same_shape("s0", s0, "s1", s1)
    _same_shape("s0", s0, "s2", s2)
    if (shuffles.ndim not in (2, 3) or shuffles.shape[-1] != len(s0) or shuffles.dtype != torch.int64
            or (shuffles.ndim == 3 and shuffles.shape[1] != 2)):
        raise ValueError(f"shuffles must be int64 (K, 2, N={len(s0)}) or (K, N={len(s0)}) permutations, got "
                         f"{shuffles.dtype} {tuple(shuffles.shape)}")
    rho, pi = (shuffles[:, 0], shuffles[:, 1]) if shuffles.ndim == 3 else (shuffles, shuffles)

    def sim(a: Tensor, b: Tensor) -> Tensor:
        return -torch.linalg.vector_norm(a - b, dim=-1)

    s02, s12, s01 = sim(s2, s0).exp(), sim(s2, s1).exp(), sim(s1, s0).exp()
    neg2 = sim(s2[None], s2[pi]).exp().sum(0)
    neg0 = sim(s0[None], s0[rho]).exp().sum(0)
    l1 = -torch.log(eps + s12 / (eps + s02 + s12 + neg2))
    l2 = -torch.log(eps + s01 / (eps + s01 + s02 + neg0))
    return ((l1 + l2) / 2).mean()


__all__ = ["multi_view_time_contrastive", "r3m_time_contrastive", "time_contrastive_triplet"]


@float32_loss
def r3m_language_reward(positive: Tensor, negatives: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """R3M's language term: a caption-conditioned score of progress, InfoNCE over candidate frames.

    Nair et al., "R3M: A Universal Visual Representation for Robot Manipulation", CoRL 2022;
    official ``facebookresearch/r3m`` ``r3m/trainer.py`` (the ``langweight`` branch). With ``G(e_0,
    e_t, l)`` a score of "frame t is further along the caption's task than the first frame", each
    positive score ``p`` (a later frame of the video) is contrasted with its negatives ``n_k`` (an
    earlier frame of the same video, and frames of other videos under this video's caption)::

        L = -log(eps + e^p / (e^p + Σ_k e^{n_k}))      per row
        L = mean over rows of mask * L                 (rows without a caption count as 0)

    The official puts a second ``eps`` inside the denominator; here the ratio is computed in log
    space (a softmax), which only differs from it where every score is below about -18, and does
    not overflow for large scores. The mean runs over every row, captioned or not, as the
    official's ``(rewloss * mask).mean()``.

    Args:
        positive: ``(N,)`` scores of the positives.
        negatives: ``(N, K)`` scores of each row's negatives.
        mask: ``(N,)`` 1 where the row has a caption, 0 where not; None: every row counts.
        eps: the official's 1e-8.

    Examples:
        >>> r3m_language_reward(torch.tensor([2.0, 0.5]), torch.zeros(2, 3)).shape
        torch.Size([])
    """
    if positive.ndim != 1 or negatives.ndim != 2 or negatives.shape[0] != positive.shape[0]:
        raise ValueError(f"positive must be (N,) and negatives (N, K); got {tuple(positive.shape)} and "
                         f"{tuple(negatives.shape)}")
    if mask is not None and mask.shape != positive.shape:
        raise ValueError(f"mask must be (N,) = {tuple(positive.shape)}, got {tuple(mask.shape)}")
    scores = torch.cat([positive[:, None], negatives], dim=1)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # half precision up, float64 kept
    ratio = torch.softmax(scores, dim=1)[:, 0]
    loss = -torch.log(eps + ratio)
    return (loss if mask is None else loss * mask.to(loss.dtype)).mean()
