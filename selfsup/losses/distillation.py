"""Negative-free and distillation losses: BYOL / SimSiam and DINO."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.losses._common import _embeddings, _float_tensor, _positive, _same_shape, float32_loss
from selfsup.nn.dtypes import at_least_float32


@float32_loss
def negative_cosine(p: Tensor, z: Tensor, *, stop_gradient: bool = True) -> Tensor:
    """BYOL / SimSiam's negative cosine similarity with a stop-gradient on the target.

    Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020 (whose
    `2 - 2 cos` differs by an affine map); Chen & He, "Exploring Simple Siamese
    Representation Learning", CVPR 2021:

        L = -mean_i cos(p_i, stopgrad(z_i))

    Symmetrise by calling it twice with the views swapped, as both papers do.

    Args:
        p: `(N, D)` predictions (gradients flow).
        z: `(N, D)` targets (detached inside).
        stop_gradient: False lets the gradient reach ``z`` too (SimSiam's ablation, which
            collapses).

    Returns:
        0-d tensor in [-1, 1].

    Examples:
        >>> p, z = torch.randn(8, 16), torch.randn(8, 16)
        >>> negative_cosine(p, z).shape
        torch.Size([])
    """
    p, z = _embeddings("p", p), _embeddings("z", z)
    _same_shape("p", p, "z", z)
    target = z.detach() if stop_gradient else z
    return -(F.normalize(p, dim=1) * F.normalize(target, dim=1)).sum(dim=1).mean()


@float32_loss
def dino(
    student_logits: Tensor,
    teacher_logits: Tensor,
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO's cross-entropy between the centred, sharpened teacher and the student over view pairs.

    Caron et al., "Emerging Properties in Self-Supervised Vision
    Transformers", ICCV 2021, Algorithm 1. With teacher targets
    `t_v = softmax((g_v - center) / τ_t)` (no gradient) for the T global views
    and student log-probabilities `log s_w = log_softmax(f_w / τ_s)` for all
    V >= T views (the first T being the same global views):

        L = 1/#pairs Σ_{v < T} Σ_{w ≠ v} mean_b( -Σ_k t_v[b, k] log s_w[b, k] )

    Logits are not normalised (they are the DINO head's K outputs). The centre
    is state: keep it with `DINOLoss` or update it yourself.

    Args:
        student_logits: `(V, B, K)` student outputs, views first.
        teacher_logits: `(T, B, K)` teacher outputs for the first T views, 1 <= T <= V, V >= 2.
        center: `(K,)` (or `(1, K)`) running centre of the teacher outputs.
        student_temp: τ_s > 0 (paper: 0.1).
        teacher_temp: τ_t > 0 (paper: 0.04, warmed up to 0.07).

    Returns:
        0-d tensor.

    Examples:
        >>> student, teacher = torch.randn(6, 4, 32), torch.randn(2, 4, 32)
        >>> dino(student, teacher, center=torch.zeros(32)).shape
        torch.Size([])
    """
    student_logits = _float_tensor("student_logits", student_logits, 3)
    teacher_logits = _float_tensor("teacher_logits", teacher_logits, 3)
    center = _float_tensor("center", center, (1, 2))
    views, batch, classes = student_logits.shape
    teachers = teacher_logits.shape[0]
    if teacher_logits.shape[1:] != (batch, classes) or not 1 <= teachers <= views or views < 2:
        raise ValueError(
            f"teacher_logits must be (T, {batch}, {classes}) with 1 <= T <= V and V >= 2 to match "
            f"student_logits (V, B, K) = {tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}"
        )
    if center.shape[-1] != classes or center.numel() != classes:
        raise ValueError(f"center must be ({classes},) or (1, {classes}), got {tuple(center.shape)}")
    _positive("student_temp", student_temp)
    _positive("teacher_temp", teacher_temp)
    targets = F.softmax((teacher_logits.detach() - center.reshape(-1)) / teacher_temp, dim=-1)
    log_probs = F.log_softmax(student_logits / student_temp, dim=-1)
    # cross[v, w] = mean over the batch of -Σ_k t_v log s_w
    cross = -torch.einsum("vbk,wbk->vw", targets, log_probs) / batch
    same_view = torch.eye(teachers, views, dtype=torch.bool, device=cross.device)
    return cross.masked_fill(same_view, 0.0).sum() / (teachers * views - teachers)


class DINOLoss(nn.Module):
    """`dino` plus the state it needs: the EMA centre of the teacher outputs.

    Each call computes the loss with the current centre, then updates
    `center = m * center + (1 - m) * mean(teacher_logits)`, the mean taken over
    the teacher outputs of every rank with one all-reduce of their sum (Caron et
    al. 2021, eq. 4). Pass `teacher_temp` per call for the paper's warm-up schedule.

    Args:
        out_dim: K, the DINO head's output dimension.
        student_temp: τ_s > 0.
        teacher_temp: τ_t > 0 when a call does not give one.
        center_momentum: m in [0, 1) (paper: 0.9).

    Examples:
        >>> criterion = DINOLoss(32)
        >>> loss = criterion(torch.randn(6, 4, 32), torch.randn(2, 4, 32))
        >>> criterion.center.shape
        torch.Size([32])
    """

    center: Tensor

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        if not 0 <= center_momentum < 1:
            raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum}")
        _positive("student_temp", student_temp)
        _positive("teacher_temp", teacher_temp)
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum
        self.register_buffer("center", torch.zeros(out_dim))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, teacher_temp: float | None = None) -> Tensor:
        """Loss for `(V, B, K)` student and `(T, B, K)` teacher logits; updates the centre afterwards."""
        temp = self.teacher_temp if teacher_temp is None else teacher_temp
        loss = dino(student_logits, teacher_logits, self.center, self.student_temp, temp)
        with torch.no_grad():
            logits = teacher_logits.detach()
            logits = at_least_float32(logits)
            total = distributed.all_reduce_sum(logits.sum(dim=(0, 1)))
            count = teacher_logits.shape[0] * teacher_logits.shape[1] * distributed.world_size()
            self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)
        return loss
