"""Any torchvision or timm model as a backbone, by the name its own registry gives it.

``torchvision/<name>`` (``torchvision.models.list_models()``: ``resnet50``, ``convnext_tiny``,
``vit_b_16``, ...) and ``timm/<name>`` (``timm.list_models()``: ``convnext_tiny``,
``vit_small_patch16_224``, ``resnet50``, ...) build that model without its classifier, so it
returns pooled features:

- torchvision: the last ``nn.Linear`` of the model (``fc``, ``classifier[-1]``, ``heads.head``) is
  replaced by the identity and its input width is the feature dimension; another channel count
  rebuilds the first convolution (pretrained RGB filters summed over their input channels for
  gray, as timm adapts ``in_chans``);
- timm: ``timm.create_model(name, num_classes=0, in_chans=...)``, ViT-like models built for the
  data's image size (``img_size``) and, where timm offers it, ``dynamic_img_size=True`` (position
  embeddings interpolated for views of other sizes: DINO's local crops), features
  ``model.num_features``.

``small_stem`` (ResNets of either registry): a 3x3 stride-1 first convolution and no max-pool,
the usual CIFAR stem, for images of side <= 64 by default. ``pretrained`` loads the registry's
weights (downloaded by torchvision / timm where the network allows; a clear error where it does
not). An unknown name is an error that suggests the registry's closest names.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from selfsup.errors import ConfigError

REGISTRIES = ("torchvision", "timm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""The statistics the registries' pretrained weights were trained with."""


def is_registry_name(name: str) -> bool:
    return name.split("/", 1)[0] in REGISTRIES and "/" in name


def _unknown(registry: str, model: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(model, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(f'{registry}/{c}' for c in close)}?" if close else \
        f"; see {registry}'s list_models()"
    return ConfigError(f"backbone.name: {registry} has no model {model!r}{hint}")


def _set(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, attr = dotted.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


def _with_in_channels(conv: nn.Conv2d, in_channels: int, keep_weights: bool = True) -> nn.Conv2d:
    """``conv``'s geometry for ``in_channels`` inputs; ``keep_weights``: to gray, its RGB filters summed
    (a gray image looks like R = G = B to them) and its bias; otherwise freshly initialised."""
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups if conv.groups == 1 else in_channels, conv.bias is not None, conv.padding_mode)
    if keep_weights:
        with torch.no_grad():
            if in_channels == 1:
                new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    return new


def replace_first_conv(net: nn.Module, in_channels: int, *, keep_weights: bool = True) -> None:
    """Give ``net``'s first ``nn.Conv2d`` (in module order) ``in_channels`` inputs, in place."""
    first = next(((name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(f"{type(net).__name__} has no convolution whose input channels could be changed")
    _set(net, first[0], _with_in_channels(first[1], in_channels, keep_weights))


def _small_stem(net: nn.Module, in_channels: int) -> bool:
    """A ResNet's CIFAR stem (3x3 stride-1 conv1, no max-pool); False when the model has no such stem."""
    conv, pool = getattr(net, "conv1", None), getattr(net, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or pool is None:
        return False
    net.conv1 = nn.Conv2d(in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return True


def torchvision_model(model: str, *, in_channels: int, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if model not in known:
        raise _unknown("torchvision", model, known)
    try:
        net = torchvision.models.get_model(model, weights="DEFAULT" if pretrained else None)
    except Exception as error:  # a download that cannot happen: URLError, OSError, ...
        if not pretrained:
            raise
        raise ConfigError(f"backbone.pretrained: torchvision could not load the weights of {model} "
                          f"({type(error).__name__}: {error}); without a network use backbone.pretrained=false") \
            from None
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"backbone.name: torchvision/{model} has no linear classifier to take off")
    out_dim = net.get_submodule(linears[-1]).in_features
    _set(net, linears[-1], nn.Identity())
    if in_channels != 3:
        replace_first_conv(net, in_channels)
    return net, out_dim


def timm_model(model: str, *, in_channels: int, image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    import timm

    known = timm.list_models()
    if model not in known and model.split(".")[0] not in known:  # "name.tag" picks pretrained weights
        raise _unknown("timm", model, known)
    kwargs = dict(pretrained=pretrained, num_classes=0, in_chans=in_channels)
    try:
        try:  # ViT-like models: built for the data's size, position embeddings interpolated for other
            # view sizes (DINO's local crops), as timm's dynamic_img_size does
            net = timm.create_model(model, img_size=image_size, dynamic_img_size=True, **kwargs)
        except TypeError:
            try:
                net = timm.create_model(model, img_size=image_size, **kwargs)  # fixed-size ViT-likes
            except TypeError:
                net = timm.create_model(model, **kwargs)  # convnets take no img_size
    except Exception as error:
        if not pretrained or isinstance(error, TypeError):
            raise
        raise ConfigError(f"backbone.pretrained: timm could not load the weights of {model} "
                          f"({type(error).__name__}: {error}); without a network use backbone.pretrained=false") \
            from None
    return net, net.num_features


def registry_model(name: str, *, in_channels: int, image_size: int, pretrained: bool = False,
                   small_stem: bool | None = None) -> tuple[nn.Module, int]:
    """``(network, feature dimension)`` of ``torchvision/<model>`` or ``timm/<model>``."""
    registry, model = name.split("/", 1)
    if registry == "torchvision":
        net, out_dim = torchvision_model(model, in_channels=in_channels, pretrained=pretrained)
    else:
        net, out_dim = timm_model(model, in_channels=in_channels, image_size=image_size, pretrained=pretrained)
    auto = small_stem is None  # auto: small images, and no pretrained first filters to throw away
    if (image_size <= 64 and not pretrained) if auto else small_stem:
        if not _small_stem(net, in_channels) and not auto:
            raise ConfigError(f"backbone.small_stem: {name} has no ResNet stem (conv1 + maxpool) to replace")
    return net, out_dim


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "REGISTRIES", "is_registry_name", "registry_model", "replace_first_conv"]
