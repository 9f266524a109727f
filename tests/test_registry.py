"""Backbones by registry name: torchvision and timm models without their classifier, loadable back into
the plain library model, the CIFAR stem, other channel counts, and the errors for unknown names and
weights that cannot be downloaded."""

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from selfsup.config import load_config
from selfsup.engine import build_method
from selfsup.errors import ConfigError
from selfsup.nn import build_backbone
from selfsup.nn.registry import _with_in_channels


def test_torchvision_model_is_the_library_model_without_its_classifier():
    torch.manual_seed(0)
    backbone = build_backbone("torchvision/resnet18", in_channels=3, image_size=96, mean=[0.5] * 3, std=[0.5] * 3)
    plain = torchvision.models.resnet18()
    plain.fc = nn.Identity()
    plain.load_state_dict(backbone.net.state_dict())            # the same keys and shapes: loadable as is
    images = torch.rand(2, 3, 96, 96)
    backbone.eval(), plain.eval()
    assert backbone.out_dim == 512
    assert torch.allclose(backbone(images), plain((images - 0.5) / 0.5), atol=1e-5)


def test_small_images_get_the_cifar_stem_and_gray_a_one_channel_first_conv():
    backbone = build_backbone("torchvision/resnet18", in_channels=1, image_size=32)
    assert backbone.net.conv1.kernel_size == (3, 3) and backbone.net.conv1.stride == (1, 1)
    assert backbone.net.conv1.in_channels == 1 and isinstance(backbone.net.maxpool, nn.Identity)
    assert backbone(torch.rand(2, 1, 32, 32)).shape == (2, 512)
    big = build_backbone("torchvision/resnet18", in_channels=1, image_size=96, small_stem=False)
    assert big.net.conv1.kernel_size == (7, 7) and big.net.conv1.in_channels == 1
    with pytest.raises(ConfigError, match="no ResNet stem"):
        build_backbone("torchvision/convnext_tiny", in_channels=3, image_size=96, small_stem=True)


def test_gray_first_conv_sums_the_rgb_filters():
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 4, 3, padding=1)
    gray = _with_in_channels(rgb, 1)
    image = torch.rand(1, 1, 6, 6)
    assert torch.allclose(gray(image), rgb(image.expand(1, 3, 6, 6)), atol=1e-6)  # R = G = B


@pytest.mark.parametrize("name, channels, size, dim", [
    ("timm/vit_tiny_patch16_224", 3, 32, 192),   # built for 32x32 inputs (img_size)
    ("timm/convnext_atto", 1, 32, 320),
    ("torchvision/mobilenet_v3_small", 3, 64, 1024),  # the penultimate layer: its last Linear taken off
])
def test_registry_models_give_pooled_features(name, channels, size, dim):
    backbone = build_backbone(name, in_channels=channels, image_size=size)
    assert backbone.out_dim == dim and backbone(torch.rand(2, channels, size, size)).shape == (2, dim)


def test_timm_vit_takes_local_crops_and_equals_timm_at_its_own_size():
    import timm

    torch.manual_seed(0)
    backbone = build_backbone("timm/vit_tiny_patch16_224", in_channels=3, image_size=32, mean=[0.0] * 3,
                              std=[1.0] * 3).eval()
    assert backbone(torch.rand(2, 3, 16, 16)).shape == (2, 192)  # a DINO local crop: 1 patch instead of 4
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32).eval()  # fixed size
    plain.load_state_dict(backbone.net.state_dict())
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(backbone(images), plain(images), atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception):
        plain(torch.rand(2, 3, 16, 16))  # without dynamic_img_size timm refuses another size


def test_timm_model_matches_timm_without_classifier():
    import timm

    torch.manual_seed(0)
    backbone = build_backbone("timm/resnet18", in_channels=3, image_size=96, mean=[0.0] * 3, std=[1.0] * 3).eval()
    plain = timm.create_model("resnet18", num_classes=0).eval()
    plain.load_state_dict(backbone.net.state_dict())
    images = torch.rand(2, 3, 96, 96)
    assert torch.allclose(backbone(images), plain(images), atol=1e-5)


@pytest.mark.parametrize("name, suggestion", [("timm/convnext_tine", "timm/convnext_tiny"),
                                              ("torchvision/resnet51", "torchvision/resnet50")])
def test_an_unknown_name_suggests_close_ones(name, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean .*{suggestion}"):
        build_backbone(name, in_channels=3, image_size=32)


def test_weights_that_cannot_be_downloaded_are_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match="pretrained: torchvision could not load the weights of resnet18.*"
                                          "backbone.pretrained=false"):
        build_backbone("torchvision/resnet18", in_channels=3, image_size=224, pretrained=True)
    with pytest.raises(ConfigError, match="convnet has no pretrained weights"):
        build_method(load_config(None, ["backbone.pretrained=true"]), in_channels=1, image_size=28, mean=[0.5],
                     std=[0.5])


def test_a_recipe_takes_a_registry_backbone():
    cfg = load_config("recipes/simclr_fashion_mnist.yaml", ["backbone.name=timm/resnet18"])
    method = build_method(cfg, in_channels=1, image_size=28, mean=[0.3], std=[0.35])
    assert method.backbone.out_dim == 512 and method.backbone.net.conv1.stride == (1, 1)
