"""Dense descriptors: a backbone's stage outputs and a per-pixel descriptor head on them.

Dense Object Nets (Florence et al. 2018) train a fully convolutional network whose output, upsampled
to the input's size, is a D-dimensional descriptor per pixel (the official network: a ResNet-34 with
skip connections, 8x upsampled). Here the descriptor of a pixel is a hypercolumn: a 1x1 convolution
of every stage's features at that point, each stage bilinearly upsampled to the input's size, which
is the same idea (coarse semantic stages and fine early ones both reach every pixel) for any
backbone whose stages :func:`stage_features` can read. The 1x1 convolution is applied to each stage
at its own resolution and the results upsampled and summed, which equals convolving the upsampled
concatenation (both are linear) at a fraction of the memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.nn.backbones import Backbone


def stage_features(backbone: Backbone, images: Tensor) -> list[Tensor]:
    """The backbone's feature maps after each stage, finest first: the ConvNet's four conv-BN-ReLU
    stages, a torchvision ResNet's stem and ``layer1`` ... ``layer4``."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    x = (images - backbone.mean) / backbone.std
    net = backbone.net
    if isinstance(net, nn.Sequential) and isinstance(net[-2], nn.AdaptiveAvgPool2d):
        stages = []
        for layer in net[:-2]:
            if isinstance(layer, nn.MaxPool2d):
                stages.append(x)
            x = layer(x)
        return [*stages, x]
    if hasattr(net, "layer4"):
        x = net.relu(net.bn1(net.conv1(x)))
        stages = [x]
        x = net.maxpool(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(net, name)(x)
            stages.append(x)
        return stages
    raise ValueError(f"dense descriptors need a backbone with readable stages (convnet or a torchvision ResNet), "
                     f"not {type(net).__name__}")


class PooledStage(nn.Module):
    """The global average of one stage's feature map (:func:`stage_features`, 0 the finest) as an image's
    features: the layer-wise frozen evaluation of Goyal et al. 2019 ("Scaling and Benchmarking
    Self-Supervised Visual Representation Learning", section 3; VISSL's ``res4``/``res5`` probes), which found
    that a pretext task's last stage specialises to its task and an earlier one transfers better. Works for
    the backbones :func:`stage_features` reads; ``index`` is checked on the first call.

    Examples:
        >>> from selfsup.nn.backbones import build_backbone
        >>> net = build_backbone("convnet", in_channels=1, image_size=28)
        >>> PooledStage(net, 2)(torch.rand(4, 1, 28, 28)).shape  # the 7x7x128 stage, averaged
        torch.Size([4, 128])
    """

    def __init__(self, backbone: Backbone, index: int) -> None:
        super().__init__()
        if index < 0:
            raise ValueError(f"stage index must be 0 (the finest) or more, got {index}")
        self.backbone, self.index = backbone, index

    def extra_repr(self) -> str:  # the floor's cache key reads repr: one key per stage
        return f"index={self.index}"

    def forward(self, images: Tensor) -> Tensor:
        stages = stage_features(self.backbone, images)
        if self.index >= len(stages):
            raise ValueError(f"stage {self.index} asked of a backbone with {len(stages)} stages (0-{len(stages) - 1})")
        return stages[self.index].float().mean(dim=(-2, -1))


class DescriptorNet(nn.Module):
    """``(B, C, H, W)`` images to ``(B, dim, H, W)`` per-pixel descriptors from the backbone's stages.

    Args:
        backbone: the encoder (trained with the descriptors; its pooled features are still what
            the global evaluations read).
        dim: the descriptor dimension D (Dense Object Nets: 3 in most of the paper's experiments).
        probe_size: side of the blank image used once to read the stages' channel counts.
        stride: descriptors on a grid this many times coarser than the input (``ceil(H / stride)``;
            1: one per pixel).
        head_std: the heads' 1x1 convolutions drawn from N(0, head_std²) with zero biases (Dense Object Nets'
            official head: ``normal_(0, 0.01)``, as the FCN heads it comes from); None: PyTorch's default.

    Examples:
        >>> from selfsup.nn import build_backbone
        >>> net = DescriptorNet(build_backbone("convnet", in_channels=1, image_size=28, width=8), dim=3)
        >>> net(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 3, 28, 28])
    """

    def __init__(self, backbone: Backbone, dim: int = 3, probe_size: int = 32, stride: int = 1,
                 head_std: float | None = None) -> None:
        super().__init__()
        if dim < 1 or stride < 1 or (head_std is not None and head_std <= 0):
            raise ValueError(f"dim and stride must be >= 1 and head_std positive, got {dim}, {stride} and {head_std}")
        self.stride = stride
        self.backbone = backbone
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            channels = [s.shape[1] for s in stage_features(backbone, torch.zeros(1, backbone.in_channels,
                                                                                 probe_size, probe_size))]
            backbone.train(was)
        self.heads = nn.ModuleList(nn.Conv2d(c, dim, 1, bias=k == 0) for k, c in enumerate(channels))
        if head_std is not None:
            for head in self.heads:
                nn.init.normal_(head.weight, 0.0, head_std)
                if head.bias is not None:
                    nn.init.zeros_(head.bias)
        self.dim = dim

    def forward(self, images: Tensor) -> Tensor:
        size = tuple(-(-side // self.stride) for side in images.shape[-2:])
        out = None
        for head, stage in zip(self.heads, stage_features(self.backbone, images)):
            part = F.interpolate(head(stage), size=size, mode="bilinear", align_corners=False)
            out = part if out is None else out + part
        return out


class UpsampledFeatures(nn.Module):
    """The backbone's last feature map (:func:`selfsup.nn.feature_map`), L2-normalised per position and
    bilinearly upsampled to the input's size: the descriptors of a network trained without a dense
    head (DenseCL's evaluation features, and every other method's in ``evaluate correspondence``)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        from selfsup.nn.backbones import feature_map

        fmap = F.normalize(feature_map(self.backbone, images), dim=1)
        return F.interpolate(fmap, size=images.shape[-2:], mode="bilinear", align_corners=False)
