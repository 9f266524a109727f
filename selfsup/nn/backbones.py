"""Encoders: a small ConvNet for 28x28 images, torchvision ResNets with a small-image stem, timm ViTs.

Every backbone returned by :func:`build_backbone` is a :class:`Backbone`: it takes float images
in [0, 1] of shape ``(B, C, H, W)``, normalises them with the dataset's mean and std (stored as
buffers, so a checkpoint is self-contained), and returns features ``(B, out_dim)``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from selfsup._optional import require_pyg
from selfsup.nn.registry import IMAGENET_MEAN, IMAGENET_STD, is_registry_name, registry_model, replace_first_conv

BACKBONES = ("convnet", "resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base", "cpc_audio", "gcn")
SEQUENCE_BACKBONES = ("cpc_audio",)
GRAPH_BACKBONES = ("gcn",)
"""Encoders of 1-D signals ``(B, 1, T)`` rather than images."""


class Backbone(nn.Module):
    """Normalisation + encoder network, with the shape checks a user needs.

    Args:
        net: maps normalised ``(B, in_channels, H, W)`` images to ``(B, out_dim)`` features.
        out_dim: feature dimension.
        in_channels: channels the network was built for.
        mean, std: per-channel statistics of the training data in [0, 1] units.
    """

    def __init__(self, net: nn.Module, out_dim: int, in_channels: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values (one per input channel), "
                             f"got mean={list(mean)} std={list(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {list(std)}")
        self.net = net
        self.out_dim = out_dim
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"backbone expects images of shape (B, {self.in_channels}, H, W), got "
                             f"{tuple(images.shape)}; load the data with channels={self.in_channels} "
                             f"or build the backbone with in_channels={images.shape[1] if images.ndim == 4 else '?'}")
        if images.dtype == torch.uint8:
            images = images.float() / 255
        return self.net((images - self.mean) / self.std)


class WrappedEncoder(nn.Module):
    """Base of the evaluation encoders that put a step in front of or behind a backbone (a
    lightness path, a patch grid, a context network): they report the wrapped backbone's input
    channels and normalisation (``in_channels``, ``mean``, ``std``, what a rebuilt encoder is given)
    and set their own ``out_dim``. The backbone is the attribute named by ``wrapped``."""

    wrapped: str = "backbone"

    @property
    def in_channels(self) -> int:
        return getattr(self, self.wrapped).in_channels

    @property
    def mean(self) -> Tensor:
        return getattr(self, self.wrapped).mean

    @property
    def std(self) -> Tensor:
        return getattr(self, self.wrapped).std


def feature_map(backbone: Backbone, images: Tensor) -> Tensor:
    """The backbone's last spatial features ``(B, C, h, w)``, before its global pooling: what
    dense heads (colorization) read. The ConvNet's last stage, a ResNet's ``layer4``, a ViT's patch
    tokens laid out on their grid."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    x = (images - backbone.mean) / backbone.std
    net = backbone.net
    if isinstance(net, nn.Sequential) and isinstance(net[-2], nn.AdaptiveAvgPool2d):
        return net[:-2](x)
    if hasattr(net, "layer4"):  # torchvision ResNet
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))
    if hasattr(net, "forward_features") and hasattr(net, "patch_embed"):  # timm ViT
        tokens = net.forward_features(x)[:, net.num_prefix_tokens:]
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side != tokens.shape[1]:
            raise ValueError(f"feature_map needs square images for a ViT, got {tuple(images.shape[-2:])}")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
    raise ValueError(f"feature_map does not know how to read spatial features from {type(net).__name__}")


def with_in_channels(backbone: Backbone, in_channels: int, mean: Sequence[float],
                     std: Sequence[float]) -> Backbone:
    """A freshly initialised copy of ``backbone`` whose first convolution takes ``in_channels``
    (CMC's per-view encoders: one for L, one for ab), normalising with ``mean`` and ``std``; with
    the backbone's own channel count, any network (no convolution needed).

    A backbone from :func:`build_backbone` (not pretrained) is built again as it was, for
    ``in_channels``: its library's own initialisation (torchvision's ResNet init, timm's ViT class
    token and position embedding), independent of the original's weights; changes made to the
    network since (:func:`~selfsup.nn.vit.moco_v3_vit`) are not carried over. Any other backbone is
    deep-copied and each of its layers reset (``reset_parameters``: PyTorch's default init).

    Examples:
        >>> rgb = build_backbone("convnet", in_channels=3, image_size=28)
        >>> with_in_channels(rgb, 2, [0.5, 0.5], [0.25, 0.25])(torch.rand(4, 2, 28, 28)).shape
        torch.Size([4, 256])
    """
    rebuild = getattr(backbone, "rebuild", None)
    if rebuild is not None:
        net, out_dim = rebuild(in_channels)
        return Backbone(net, out_dim, in_channels, mean, std)
    net = copy.deepcopy(backbone.net)
    for module in net.modules():
        if hasattr(module, "reset_parameters") and module is not net:
            module.reset_parameters()  # independent weights, not the original's
    if in_channels != backbone.in_channels:
        replace_first_conv(net, in_channels, keep_weights=False)
    return Backbone(net, backbone.out_dim, in_channels, mean, std)


def split_features(backbone: Backbone, images: Tensor) -> tuple[Tensor, Tensor]:
    """An intermediate feature map ``(B, C, h, w)`` and the final features ``(B, out_dim)`` computed from
    it in one pass (Deep InfoMax's local and global features): the ConvNet's third stage before its
    last pooling (7x7 at 28 pixels), a ResNet's ``layer3``, a ViT's patch tokens (its last layer: a ViT
    has no coarser stage) with its pooled output."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    x = (images - backbone.mean) / backbone.std
    net = backbone.net
    if isinstance(net, nn.Sequential) and isinstance(net[-2], nn.AdaptiveAvgPool2d):
        pools = [i for i, layer in enumerate(net) if isinstance(layer, nn.MaxPool2d)]
        cut = pools[-1] if pools else len(net) - 2
        local = net[:cut](x)
        return local, net[cut:](local)
    if hasattr(net, "layer4"):
        local = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        return local, torch.flatten(net.avgpool(net.layer4(local)), 1)
    if hasattr(net, "forward_features") and hasattr(net, "patch_embed"):
        return feature_map(backbone, images), backbone(images)
    raise ValueError(f"split_features does not know the stages of {type(net).__name__}")


CONVNET_NORMS = ("batch", "group_ws", "none")
"""``backbone.norm`` of the ConvNet: BatchNorm (default), GroupNorm after weight-standardised
convolutions (Richemond et al. 2020, "BYOL works even without batch statistics"), or none."""


def _conv_bn_relu(cin: int, cout: int, norm: str = "batch") -> list[nn.Module]:
    if norm == "group_ws":
        from timm.layers import StdConv2d

        return [StdConv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(min(16, cout), cout),
                nn.ReLU(inplace=True)]
    if norm == "none":
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def convnet(in_channels: int = 1, width: int = 32, norm: str = "batch") -> tuple[nn.Module, int]:
    """Four conv-BN-ReLU stages (width, 2w, 4w, 8w) with 2x2 max-pooling between them.

    Sized for 28x28 inputs: about 0.4M parameters at width 32, and on a 2-core CPU in bf16
    it trains at several thousand images/s. Returns the network and its output dimension 8w.
    ``norm`` (:data:`CONVNET_NORMS`): ``group_ws`` puts timm's weight-standardised convolution and
    GroupNorm of 16 groups in place of each conv + BatchNorm, so no layer sees batch statistics
    (the setting in which BYOL was shown to train without BatchNorm); ``none`` drops the norm.
    """
    if norm not in CONVNET_NORMS:
        raise ValueError(f"backbone.norm: the convnet's norm must be one of {', '.join(CONVNET_NORMS)}, got {norm!r}")
    layers = [*_conv_bn_relu(in_channels, width, norm), nn.MaxPool2d(2),
              *_conv_bn_relu(width, 2 * width, norm), nn.MaxPool2d(2),
              *_conv_bn_relu(2 * width, 4 * width, norm), nn.MaxPool2d(2),
              *_conv_bn_relu(4 * width, 8 * width, norm),
              nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), 8 * width


def resnet(name: str, in_channels: int = 3, small_stem: bool = True) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its classifier.

    With ``small_stem`` (for images of 64 pixels or less, as in SimCLR's CIFAR experiments) the
    7x7 stride-2 stem and the max-pool are replaced by one 3x3 stride-1 convolution. A replaced stem
    (small, or for ``in_channels`` other than 3) is initialised as torchvision initialises every
    convolution of its ResNet (Kaiming normal, fan-out, ReLU gain), not with ``nn.Conv2d``'s default,
    which draws weights about twice as large for a 3x3 stem on RGB.
    """
    import torchvision  # here: importing torchvision.models costs seconds that other backbones need not pay

    net = getattr(torchvision.models, name)(weights=None)
    out_dim = net.fc.in_features
    if small_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    if small_stem or in_channels != 3:
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net, out_dim


def vit(name: str, in_channels: int = 3, image_size: int = 224, patch_size: int | None = None) -> tuple[nn.Module, int]:
    """A timm Vision Transformer (``vit_tiny``, ``vit_small``, ``vit_base``) returning the CLS token.

    Built with ``dynamic_img_size``: the position embedding is interpolated to each input's patch
    grid, and inputs whose side is not a multiple of the patch are padded (``dynamic_img_pad``),
    so one network takes DINO's global and local crops.
    """
    import timm

    patch = patch_size or (4 if image_size <= 64 else 16)
    net = timm.create_model(f"{name}_patch16_224", pretrained=False, num_classes=0, img_size=image_size,
                            patch_size=patch, in_chans=in_channels, dynamic_img_size=True,
                            dynamic_img_pad=True)
    return net, net.num_features


class ChannelNorm(nn.Module):
    """Per sample and time step, the channels normalised by their mean and (unbiased) variance, then
    a per-channel scale and shift: facebookresearch/CPC_audio's ``ChannelNorm`` (its encoder's
    default), which, unlike BatchNorm, never mixes the samples of a batch."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        mean, var = x.mean(dim=1, keepdim=True), x.var(dim=1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


SIGNAL_NORMS = ("batch", "channel", "none")


class SignalEncoder(nn.Module):
    """The paper's audio encoder: five strided 1-D convolutions (strides 5, 4, 2, 2, 2, kernels 10,
    8, 4, 4, 4; 160x downsampling: one code per 10 ms at 16 kHz), each followed by a normalisation
    (``norm``) and ReLU. Input: float signals ``(B, 1, T)`` in [-1, 1], normalised by the stored mean
    and std. Output: codes ``(B, T', width)`` with ``T' = ⌊(T - 465) / 160⌋ + 1``.

    The paper names no normalisation; ``norm`` chooses: ``"batch"`` (default) BatchNorm, what
    facebookresearch/CPC_audio runs to reproduce the paper (``--normMode batchNorm``); ``"channel"``
    its own default, :class:`ChannelNorm`, per sample; ``"none"`` the paper's text, biased
    convolutions and ReLUs only.

    Args:
        width: channels of every layer (paper: 512).
        mean, std: the training signals' amplitude statistics.
        norm: ``"batch"``, ``"channel"`` or ``"none"``.
    """

    strides = (5, 4, 2, 2, 2)
    kernels = (10, 8, 4, 4, 4)

    def __init__(self, width: int = 512, mean: float = 0.0, std: float = 1.0, norm: str = "batch") -> None:
        super().__init__()
        if width < 1 or std <= 0:
            raise ValueError(f"width must be >= 1 and std > 0, got width={width}, std={std}")
        if norm not in SIGNAL_NORMS:
            raise ValueError(f"norm must be one of {', '.join(SIGNAL_NORMS)}, got {norm!r}")
        layers, channels = [], 1
        for stride, kernel in zip(self.strides, self.kernels):
            layers.append(nn.Conv1d(channels, width, kernel, stride, bias=norm != "batch"))
            if norm != "none":
                layers.append(nn.BatchNorm1d(width) if norm == "batch" else ChannelNorm(width))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        self.net = nn.Sequential(*layers)
        self.out_dim, self.in_channels = width, 1
        self.register_buffer("mean", torch.tensor([[[float(mean)]]]))
        self.register_buffer("std", torch.tensor([[[float(std)]]]))

    @property
    def downsampling(self) -> int:
        return int(torch.tensor(self.strides).prod())

    @property
    def receptive_field(self) -> int:
        """Input samples behind one code (465)."""
        field = 1
        for stride, kernel in zip(reversed(self.strides), reversed(self.kernels)):
            field = (field - 1) * stride + kernel
        return field

    def forward(self, signals: Tensor) -> Tensor:
        if signals.ndim != 3 or signals.shape[1] != 1:
            raise ValueError(f"the signal encoder expects (B, 1, T) mono signals, got shape {tuple(signals.shape)}")
        if signals.shape[-1] < self.receptive_field:
            raise ValueError(f"signals of {signals.shape[-1]} samples are shorter than one code "
                             f"({self.receptive_field} samples)")
        return self.net((signals.float() - self.mean) / self.std).transpose(1, 2)


class GCNEncoder(nn.Module):
    """The paper's transductive encoder: one GCN layer (Kipf & Welling; PyTorch Geometric's
    ``GCNConv``, symmetric normalisation with self-loops, a Glorot weight without bias and a zero
    bias added after propagation, as the official ``layers/gcn.py``) and a PReLU with one slope
    (the official ``nn.PReLU()``), ``(N, F) -> (N, hidden)``."""

    def __init__(self, in_features: int, hidden: int = 512) -> None:
        super().__init__()
        require_pyg()  # the graph extra
        from torch_geometric.nn import GCNConv

        self.conv = GCNConv(in_features, hidden)
        self.act = nn.PReLU()
        self.out_dim, self.in_channels = hidden, in_features

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.act(self.conv(x, edge_index))


def build_backbone(name: str, *, in_channels: int, image_size: int, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, width: int = 32, pretrained: bool = False,
                   small_stem: bool | None = None, norm: str | None = None,
                   patch_size: int | None = None) -> Backbone:
    """Build a :class:`Backbone` by name: one of :data:`BACKBONES`, or ``torchvision/<model>`` /
    ``timm/<model>`` from those libraries' registries (:mod:`selfsup.nn.registry`; ``pretrained``
    and ``small_stem`` apply to them, and pretrained weights bring their ImageNet mean and std).

    Examples:
        >>> net = build_backbone("convnet", in_channels=1, image_size=28, mean=[0.29], std=[0.35])
        >>> net(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 256])
    """
    if name == "gcn":
        return GCNEncoder(in_channels, hidden=16 * width)
    if patch_size is not None and not name.startswith("vit_"):
        raise ValueError(f"backbone.patch_size is the patch side of selfsup's ViTs (vit_*); {name} has none")
    if norm is not None and name not in ("cpc_audio", "convnet"):
        raise ValueError(f"backbone.norm chooses the normalisation of cpc_audio's and convnet's convolutions; "
                         f"{name} has its own")
    if name == "cpc_audio":
        if in_channels != 1:
            raise ValueError(f"cpc_audio encodes mono signals (1 channel), got in_channels={in_channels}")
        return SignalEncoder(8 * width, mean=(mean or [0.0])[0], std=(std or [1.0])[0], norm=norm or "batch")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if pretrained and not is_registry_name(name):
        raise ValueError(f"backbone.pretrained: {name} has no pretrained weights here; use a registry model "
                         f"(torchvision/<model> or timm/<model>)")
    make = functools.partial(_network, name, image_size=image_size, width=width, small_stem=small_stem, norm=norm,
                             patch_size=patch_size)
    net, out_dim = make(in_channels, pretrained=pretrained)
    if pretrained:  # the statistics the weights were trained with, not the data's
        gray = in_channels == 1
        mean = [sum(IMAGENET_MEAN) / 3] if gray else list(IMAGENET_MEAN)
        std = [sum(IMAGENET_STD) / 3] if gray else list(IMAGENET_STD)
    mean = [0.5] * in_channels if mean is None else list(mean)
    std = [0.5] * in_channels if std is None else list(std)
    backbone = Backbone(net, out_dim, in_channels, mean, std)
    backbone.pretrained = pretrained  # a method never re-initialises pretrained weights (MoCo v3's ViT)
    backbone.rebuild = None if pretrained else make  # with_in_channels: a fresh network built the same way
    return backbone


def _network(name: str, in_channels: int, *, image_size: int, width: int, small_stem: bool | None,
             norm: str | None, patch_size: int | None, pretrained: bool = False) -> tuple[nn.Module, int]:
    """``(network, feature dimension)`` of an image backbone of :func:`build_backbone`, which checks its
    arguments."""
    if is_registry_name(name):
        return registry_model(name, in_channels=in_channels, image_size=image_size, pretrained=pretrained,
                              small_stem=small_stem)
    if name == "convnet":
        return convnet(in_channels, width, norm=norm or "batch")
    if name.startswith("resnet") and name in BACKBONES:
        return resnet(name, in_channels, small_stem=image_size <= 64 if small_stem is None else small_stem)
    if name.startswith("vit_") and name in BACKBONES:
        return vit(name, in_channels, image_size, patch_size)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}, or a registry model "
                     f"torchvision/<model> or timm/<model>")
