"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers")."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from selfsup import losses
from selfsup.methods.base import Batch, MethodBase, Progress, check_views
from selfsup.nn import Backbone, DINOHead, check_momentum, cosine, frozen_copy, momentum_update

GLOBAL_CROPS = 2


class DINO(MethodBase):
    """Self-distillation: a student matches a momentum teacher's centred, sharpened outputs.

    Per batch (Algorithm 1 of the paper)::

        t = teacher(global crops)                        # (2, B, K), no gradient
        s = student(global crops + local crops)          # (V, B, K)
        loss = H(softmax((t - C) / τ_t), softmax(s / τ_s)) over pairs of different views
        C ← m C + (1 − m) mean(t)                        # centre, every rank's outputs
        θ_t ← λ θ_t + (1 − λ) θ_s                        # after the step, λ cosine 0.996 → 1

    τ_t warms up linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over the first
    ``warmup_teacher_temp_epochs`` epochs (indexed by whole epochs, as ``np.linspace`` in the
    official code). After backward each parameter's gradient norm is clipped to ``clip_grad``
    and, during the first ``freeze_last_layer_epochs``, the head's last layer gets no update.
    Crops of the same resolution go through the student's backbone together, and the head then
    takes all their features at once (the official ``MultiCropWrapper``). Evaluation uses the
    teacher's backbone (the paper reports the teacher).

    Args:
        backbone: encoder producing ``backbone.out_dim`` features (ConvNet, ResNet or ViT).
        out_dim: K (65536).
        hidden_dim, bottleneck_dim: the head's MLP (2048, 256).
        head_batch_norm: BatchNorm in the head (False, as for ViTs).
        norm_last_layer: fix the last layer's weight norm (True).
        student_temp: τ_s (0.1).
        teacher_temp: τ_t after the warm-up (0.04; 0.07 for longer runs).
        warmup_teacher_temp: τ_t at epoch 0 (0.04).
        warmup_teacher_temp_epochs: warm-up length in epochs (0: no warm-up; the paper uses 30).
        center_momentum: m (0.9).
        base_momentum, final_momentum: λ's cosine schedule (0.996 → 1).
        freeze_last_layer_epochs: epochs without last-layer updates (1).
        clip_grad: per-parameter gradient-norm clip (3.0; 0 turns it off).
    """

    augment_recipe = "dino"
    views_needed = (GLOBAL_CROPS, None)
    sync_batchnorm = True

    def __init__(self, backbone: Backbone, *, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, head_batch_norm: bool = False, norm_last_layer: bool = True,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 0, center_momentum: float = 0.9,
                 base_momentum: float = 0.996, final_momentum: float = 1.0,
                 freeze_last_layer_epochs: float = 1.0, clip_grad: float = 3.0) -> None:
        super().__init__()
        if warmup_teacher_temp_epochs < 0 or freeze_last_layer_epochs < 0 or clip_grad < 0:
            raise ValueError("warmup_teacher_temp_epochs, freeze_last_layer_epochs and clip_grad must be >= 0, got "
                             f"{warmup_teacher_temp_epochs}, {freeze_last_layer_epochs}, {clip_grad}")
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ValueError("student_temp, teacher_temp and warmup_teacher_temp must be > 0, got "
                             f"{student_temp}, {teacher_temp}, {warmup_teacher_temp}")
        check_momentum("base_momentum", base_momentum)
        check_momentum("final_momentum", final_momentum)
        self.backbone = backbone
        self.head = DINOHead(backbone.out_dim, out_dim, hidden_dim, bottleneck_dim, batch_norm=head_batch_norm,
                             norm_last_layer=norm_last_layer)
        self.teacher = frozen_copy(nn.Sequential(backbone, self.head))
        self.criterion = losses.DINOLoss(out_dim, student_temp, teacher_temp, center_momentum)
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.clip_grad = clip_grad

    def teacher_temperature(self, epoch: int) -> float:
        """τ_t during (whole) epoch ``epoch``: linear warm-up, then constant."""
        warmup = self.warmup_teacher_temp_epochs
        if epoch >= warmup:
            return self.teacher_temp
        if warmup == 1:
            return self.warmup_teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * epoch / (warmup - 1)

    def momentum_at(self, progress: Progress) -> float:
        """λ of the teacher update that follows step ``progress.step``."""
        return cosine(progress.step, progress.max_steps, self.base_momentum, self.final_momentum)

    def training_step(self, batch: Batch, progress: Progress) -> dict[str, Tensor]:
        check_views(batch, self)
        views, size = batch.views, batch.views[0].shape[0]
        teacher_temp = self.teacher_temperature(int(progress.epoch))
        with torch.no_grad():
            teacher = self.teacher(torch.cat(views[:GLOBAL_CROPS]))
        # One backbone pass per run of same-resolution crops (global, then local), as a ViT needs.
        features = torch.cat([self.backbone(torch.cat(list(group)))
                              for _, group in itertools.groupby(views, key=lambda view: view.shape[-2:])])
        student = self.head(features)
        loss = self.criterion(student.view(len(views), size, -1), teacher.view(GLOBAL_CROPS, size, -1), teacher_temp)
        return {"loss": loss, "teacher_temp": torch.tensor(teacher_temp),
                "momentum": torch.tensor(self.momentum_at(progress))}

    def after_backward(self, progress: Progress) -> None:
        student = [*self.backbone.parameters(), *self.head.parameters()]
        if self.clip_grad:
            for parameter in student:
                if parameter.grad is not None:
                    norm = parameter.grad.norm()
                    parameter.grad.mul_(torch.clamp(self.clip_grad / (norm + 1e-6), max=1.0))
        if progress.epoch < self.freeze_last_layer_epochs:
            for parameter in self.head.last_layer.parameters():
                parameter.grad = None

    def on_step_end(self, progress: Progress) -> None:
        momentum_update(self.teacher, (self.backbone, self.head), self.momentum_at(progress))

    def eval_encoder(self) -> nn.Module:
        return self.teacher[0]
