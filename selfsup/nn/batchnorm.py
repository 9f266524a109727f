"""Global BatchNorm across processes (SimCLR's and BYOL's "global BN"), on any device.

``torch.nn.SyncBatchNorm`` runs only on GPUs (and XPU/HPU); its CPU forward raises. So that the
same recipe trains the same model on 2 CPU processes (gloo) as on 8 GPUs (NCCL), and so that
distributed tests can run for real on a laptop, :func:`convert_sync_batchnorm` uses torch's
fused SyncBatchNorm on accelerators and :class:`GlobalBatchNorm` elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup import distributed
from selfsup.nn.dtypes import at_least_float32


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the batch of every rank together.

    In training under torch.distributed with W > 1 ranks, each channel is normalised with the
    mean and biased variance of all ``W * N`` samples, computed in two all-reduces (the sum,
    then the sum of squared deviations: exact, no ``E[x^2] - E[x]^2`` cancellation). The
    all-reduce's backward sums the gradients of all ranks, so DDP's average of the per-rank
    gradients equals the gradient of the single-process loss on the concatenated batch; the
    running statistics are updated from the global batch (unbiased variance), hence equal on
    every rank. Otherwise (eval mode, one process) it is plain BatchNorm. The statistics are computed
    in float32 for half-precision input and in float64 for float64 input (as plain BatchNorm keeps it).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects input of shape (N, C, ...), got {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and distributed.is_distributed()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = at_least_float32(input)  # statistics in float32 at least
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=x.dtype)
        sums = distributed.all_reduce_with_gradients(torch.cat([x.sum(dim=dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = distributed.all_reduce_with_gradients(centred.square().sum(dim=dims)) / total
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:  # None for a scale-only BatchNorm (SimCLR's last head layer)
            out = out + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str, exclude: tuple[str, ...] = ()) -> nn.Module:
    """Replace every BatchNorm of ``module`` by a global one, except under the ``exclude`` names.

    Args:
        module: the model (e.g. a method); changed in place and returned.
        device_type: ``"cpu"`` gives :class:`GlobalBatchNorm`; an accelerator gives
            ``torch.nn.SyncBatchNorm``.
        exclude: dotted submodule names whose BatchNorms stay per-device (MoCo's key encoder,
            which uses shuffle-BN instead).

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        >>> type(convert_sync_batchnorm(net, "cpu")[1]).__name__
        'GlobalBatchNorm'
    """
    target = GlobalBatchNorm if device_type == "cpu" else nn.SyncBatchNorm

    def convert(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}{name}"
            if path in exclude:
                continue
            # Any BatchNorm (MoCo's SplitBatchNorm too) that is not global already.
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, (target, nn.SyncBatchNorm)):
                setattr(parent, name, _copy_batchnorm(child, target))
            else:
                convert(child, f"{path}.")

    convert(module, "")
    return module


def _copy_batchnorm(source: nn.modules.batchnorm._BatchNorm, target: type) -> nn.Module:
    state = source.state_dict()
    device = next(iter(state.values())).device if state else None
    new = target(source.num_features, source.eps, source.momentum, source.affine, source.track_running_stats,
                 device=device)
    if source.affine and source.bias is None:  # a scale without a shift (SimCLR's last head layer)
        del new.bias
        new.register_parameter("bias", None)
    new.load_state_dict(state)
    if source.affine:
        new.weight.requires_grad_(source.weight.requires_grad)
        if source.bias is not None:
            new.bias.requires_grad_(source.bias.requires_grad)
    new.train(source.training)
    return new
