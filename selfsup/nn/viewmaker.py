"""The viewmaker network (Tamkin et al. 2021, "Viewmaker Networks: Learning Views for Unsupervised
Representation Learning"): a stochastic image-to-image network whose output is a bounded
perturbation of its input, the learned "augmentation".

The architecture is the official one (alextamkin/viewmaker ``src/models/viewmaker.py``, after the
fast style-transfer network of Johnson et al. 2016): reflection-padded convolutions with instance
norm, a 9x9 stem, two stride-2 3x3 convolutions, residual blocks each fed one more channel of
uniform noise, two nearest-upsampling 3x3 convolutions and a 9x9 convolution back to the input's
channels. One extra noise channel enters with the input, so two calls on the same image give two
different views. The output ``y`` becomes the perturbation ``δ = tanh(y) * ε / mean|tanh(y)|``
(per image), so every image's mean absolute perturbation is exactly the budget ε, and the view is
``x + δ``, which :class:`selfsup.methods.Viewmaker` clamps to the data's range unless ``clamp_views=false``
(the official CIFAR run's setting).

``dims=1`` builds the same network with 1-D convolutions, for signals ``(B, C, T)`` (raw speech
windows); the budget is per input either way.

Differences from the official code, each deliberate: the budget is exact (the official divides by
``mean|tanh(y)| + 1e-4``, which leaves the mean magnitude a little under ε when the raw output is
small; ``exact_budget=False`` restores it); padding to a multiple of 4 and cropping back, so any
size works (the official needs sides divisible by 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _layers(dims: int) -> tuple[type, type, type]:
    if dims == 2:
        return nn.Conv2d, nn.InstanceNorm2d, nn.ReflectionPad2d
    if dims == 1:
        return nn.Conv1d, nn.InstanceNorm1d, nn.ReflectionPad1d
    raise ValueError(f"dims must be 1 (signals) or 2 (images), got {dims}")


class _Conv(nn.Module):
    """Reflection padding then a convolution (optionally after nearest upsampling by 2)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False, dims: int = 2):
        super().__init__()
        conv, _, pad = _layers(dims)
        self.upsample = upsample
        self.pad = pad(kernel // 2)
        self.conv = conv(cin, cout, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(self.pad(x))


class _Residual(nn.Module):
    def __init__(self, channels: int, dims: int):
        super().__init__()
        _, norm, _ = _layers(dims)
        self.conv1, self.in1 = _Conv(channels, channels, 3, dims=dims), norm(channels, affine=True)
        self.conv2, self.in2 = _Conv(channels, channels, 3, dims=dims), norm(channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.in2(self.conv2(F.relu(self.in1(self.conv1(x)))))


class ViewmakerNet(nn.Module):
    """Maps ``x`` in [0, 1] to a view ``clamp(x + δ, 0, 1)`` with mean ``|δ|`` equal to ``budget`` per input.

    Args:
        channels: input channels (1 for grayscale or speech, 3 for RGB).
        budget: ε, the mean absolute perturbation per input (paper: 0.05 on CIFAR-10).
        num_res_blocks: residual blocks, each fed one more noise channel (official CIFAR config: 3).
        dims: 2 for images ``(B, C, H, W)``, 1 for signals ``(B, C, T)``.
        clamp: clamp the view to [0, 1].
        exact_budget: divide by the mean magnitude exactly (default), or by it plus 1e-4 (official).
        width: channels of the first convolution, doubled by each stride-2 one (official: 32, so 32, 64,
            128). The official network has 1.1 M parameters, 11 times the Fashion-MNIST ConvNet encoder's,
            and takes most of a step on a CPU; 16 or 8 make it about 4 or 16 times cheaper.

    Examples:
        >>> net = ViewmakerNet(channels=1, budget=0.05)
        >>> x = torch.rand(2, 1, 28, 28)
        >>> delta = net.perturbation(x)
        >>> delta.abs().mean(dim=(1, 2, 3))   # exactly the budget, per image
        tensor([0.0500, 0.0500], grad_fn=<MeanBackward1>)
    """

    def __init__(self, channels: int = 3, budget: float = 0.05, num_res_blocks: int = 3, dims: int = 2,
                 clamp: bool = True, exact_budget: bool = True, width: int = 32) -> None:
        super().__init__()
        if budget <= 0:
            raise ValueError(f"budget must be > 0, got {budget}")
        if not 0 <= num_res_blocks <= 5:
            raise ValueError(f"num_res_blocks must be between 0 and 5 (the official network's), got {num_res_blocks}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        _, norm, _ = _layers(dims)
        w1, w2, w3 = width, 2 * width, 4 * width
        self.channels, self.budget, self.dims = channels, float(budget), dims
        self.clamp, self.exact_budget = clamp, exact_budget
        self.conv1, self.in1 = _Conv(channels + 1, w1, 9, dims=dims), norm(w1, affine=True)
        self.conv2, self.in2 = _Conv(w1, w2, 3, stride=2, dims=dims), norm(w2, affine=True)
        self.conv3, self.in3 = _Conv(w2, w3, 3, stride=2, dims=dims), norm(w3, affine=True)
        self.res = nn.ModuleList(_Residual(w3 + k + 1, dims) for k in range(num_res_blocks))
        self.deconv1 = _Conv(w3 + num_res_blocks, w2, 3, upsample=True, dims=dims)
        self.in4 = norm(w2, affine=True)
        self.deconv2 = _Conv(w2, w1, 3, upsample=True, dims=dims)
        self.in5 = norm(w1, affine=True)
        self.deconv3 = _Conv(w1, channels, 9, dims=dims)

    @staticmethod
    def _noise(x: Tensor) -> Tensor:
        """``x`` with one more channel of uniform [0, 1) noise (the official ``add_noise_channel``)."""
        return torch.cat((x, torch.rand_like(x[:, :1])), dim=1)

    def raw(self, x: Tensor) -> Tensor:
        """The network's unbounded output ``y``, the shape of ``x``."""
        sides = x.shape[2:]
        padded = [(-side) % 4 for side in sides]  # two stride-2 stages and two x2 upsamplings
        if any(padded):
            pad = [p for amount in reversed(padded) for p in (0, amount)]
            x = F.pad(x, pad, mode="replicate")
        y = F.relu(self.in1(self.conv1(self._noise(x))))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        for block in self.res:
            y = block(self._noise(y))
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        y = self.deconv3(y)
        return y[(..., *(slice(0, side) for side in sides))]

    def perturbation(self, x: Tensor) -> Tensor:
        """δ for ``x``: ``tanh(y)`` scaled so that each input's mean ``|δ|`` is the budget."""
        delta = torch.tanh(self.raw(x))
        magnitude = delta.abs().mean(dim=tuple(range(1, delta.ndim)), keepdim=True)
        magnitude = magnitude + 1e-4 if not self.exact_budget else magnitude.clamp_min(1e-12)
        return delta * (self.budget / magnitude)

    def forward(self, x: Tensor) -> Tensor:
        view = x + self.perturbation(x)
        return view.clamp(0, 1) if self.clamp else view


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """The identity forward, the gradient times ``-scale`` backward: one backward pass trains a
    generator to maximise (with weight ``scale``) the loss its consumer minimises (Ganin and
    Lempitsky 2015)."""
    return _ReverseGradient.apply(x, float(scale))
