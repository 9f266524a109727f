"""selfsup export: safetensors that the plain timm / torchvision model loads to the same features,
TorchScript and ONNX (checked here with onnxruntime, independently of the export's own check) with
the normalisation inside, the card, the CLI, and the errors."""

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.config import load_config
from selfsup.engine import build_method
from selfsup.errors import ConfigError, DataError
from selfsup.export import export_encoder
from selfsup.nn import Backbone, build_backbone


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    encoder = build_backbone("timm/resnet18", in_channels=3, image_size=64, mean=[0.3, 0.4, 0.5],
                             std=[0.2, 0.25, 0.3], small_stem=False).eval()
    out = tmp_path_factory.mktemp("export")
    return encoder, export_encoder(encoder, out, in_channels=3, image_size=64, name="timm/resnet18")


def test_safetensors_load_into_the_plain_timm_model_with_the_same_features(exported):
    import timm
    from safetensors.torch import load_file

    encoder, paths = exported
    card = json.loads(paths["card"].read_text())
    net = timm.create_model("resnet18", num_classes=0, in_chans=3).eval()
    net.load_state_dict(load_file(paths["safetensors"]))        # strict: every key, every shape
    images = torch.rand(4, 3, 64, 64)
    mean, std = torch.tensor(card["mean"]).view(1, 3, 1, 1), torch.tensor(card["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(net((images - mean) / std), encoder(images), atol=1e-5)
    assert card["feature_dim"] == 512 and card["small_stem"] is False and card["mean"] == pytest.approx([0.3, 0.4, 0.5])


def test_onnx_and_torchscript_take_images_in_0_1_and_match_pytorch(exported):
    import onnxruntime

    encoder, paths = exported
    images = torch.rand(5, 3, 64, 64)                                      # a batch size the export never saw
    with torch.no_grad():
        expected = encoder(images).numpy()
    session = onnxruntime.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"images": images.numpy()})[0] - expected).max() <= 1e-4
    scripted = torch.jit.load(str(paths["torchscript"]))
    assert np.abs(scripted(images).detach().numpy() - expected).max() <= 1e-5
    card = json.loads(paths["card"].read_text())
    assert card["checks"]["onnx_max_abs_diff"] <= 1e-4 and "in [0, 1]" in card["input"]


def test_the_small_image_stem_is_in_the_card_and_loads_as_it_says(tmp_path):
    import torchvision
    from safetensors.torch import load_file

    encoder = build_backbone("torchvision/resnet18", in_channels=3, image_size=32).eval()
    paths = export_encoder(encoder, tmp_path, in_channels=3, image_size=32, name="torchvision/resnet18",
                           formats=["safetensors"])
    card = json.loads(paths["card"].read_text())
    assert card["small_stem"] is True and "net.maxpool = nn.Identity()" in card["files"]["safetensors"]["load"]
    net = torchvision.models.resnet18()
    net.fc, net.maxpool = nn.Identity(), nn.Identity()
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.load_state_dict(load_file(paths["safetensors"]))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.eval()((images - 0.5) / 0.5), encoder(images), atol=1e-5)
    assert set(paths) == {"safetensors", "card"}


def run_load_lines(card: dict, folder, images: torch.Tensor) -> torch.Tensor:
    """Run the safetensors lines of ``encoder.json`` as a user would, in the export folder."""
    import os

    namespace = {"images": images}
    here = os.getcwd()
    os.chdir(folder)
    try:
        with torch.no_grad():
            exec("\n".join(card["files"]["safetensors"]["load"]), namespace)  # noqa: S102 - the card's own lines
    finally:
        os.chdir(here)
    return namespace["features"]


@pytest.mark.parametrize("name,channels,size", [
    ("timm/resnet18", 3, 64),                   # the plain case
    ("timm/vit_tiny_patch16_224", 3, 32),       # a ViT built for 32x32: its position embeddings are not 224's
    ("torchvision/resnet18", 1, 72),            # gray at > 64: the ImageNet stem with a 1-channel conv1
    ("torchvision/mobilenet_v3_small", 1, 32),  # the first convolution deep inside features[0][0]
])
def test_the_written_safetensors_lines_reproduce_the_features(tmp_path, name, channels, size):
    torch.manual_seed(0)
    encoder = build_backbone(name, in_channels=channels, image_size=size, mean=[0.3] * channels,
                             std=[0.2] * channels).eval()
    paths = export_encoder(encoder, tmp_path, in_channels=channels, image_size=size, name=name,
                           formats=["safetensors"])
    card = json.loads(paths["card"].read_text())
    images = torch.rand(3, channels, size, size)
    with torch.no_grad():
        expected = encoder(images)
    assert torch.allclose(run_load_lines(card, tmp_path, images), expected, atol=1e-5)
    assert "needs" not in card["files"]["safetensors"] and card["checks"]["safetensors_max_abs_diff"] <= 1e-5


def test_a_wrapped_registry_encoder_says_it_needs_selfsup_and_its_lines_rebuild_it(tmp_path):
    # Colorization's encoder is the backbone behind a lightness step: the file holds the wrapper's keys.
    from selfsup.config import to_dict

    cfg = load_config(None, ["method=colorization", "backbone.name=torchvision/resnet18"])
    torch.manual_seed(0)
    encoder = build_method(cfg, in_channels=3, image_size=16, mean=[0.4, 0.5, 0.6],
                           std=[0.2, 0.25, 0.3]).eval_encoder().eval()
    paths = export_encoder(encoder, tmp_path, in_channels=3, image_size=16, name="torchvision/resnet18",
                           formats=["safetensors"], config=to_dict(cfg))
    card = json.loads(paths["card"].read_text())
    entry = card["files"]["safetensors"]
    assert entry["needs"] == "selfsup" and "encoder.onnx" in entry["note"] and "GrayInput" in entry["load"][-1]
    assert card["small_stem"] is True  # the wrapped ResNet's 3x3 stem at 16x16
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = encoder(images)
    assert torch.allclose(run_load_lines(card, tmp_path, images), expected, atol=1e-5)


def test_a_torchscript_file_that_disagrees_is_not_kept(tmp_path):
    class BatchDependent(nn.Module):  # tracing freezes the branch the example batch took
        def forward(self, x):
            return x.flatten(1)[:, :3] * (2.0 if x.shape[0] > 2 else 1.0)

    encoder = Backbone(BatchDependent(), 3, 1, [0.5], [0.5])
    with pytest.raises(DataError, match="TorchScript export of tiny: .* differ from PyTorch's"):
        export_encoder(encoder, tmp_path, in_channels=1, image_size=4, name="tiny", formats=["torchscript"])
    assert list(tmp_path.iterdir()) == []


def test_an_export_into_an_earlier_ones_folder_leaves_no_stale_file(tmp_path):
    from selfsup.export import verify_export

    first = Backbone(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), 3, 1, [0.5], [0.5])
    export_encoder(first, tmp_path, in_channels=1, image_size=4, name="tiny", formats=["safetensors", "torchscript"])
    second = Backbone(nn.Sequential(nn.Flatten(), nn.Linear(16, 5)), 5, 1, [0.5], [0.5])
    export_encoder(second, tmp_path, in_channels=1, image_size=4, name="tiny", formats=["safetensors"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "encoder.safetensors"]
    assert verify_export(tmp_path) == ["encoder.safetensors"]


def test_verify_checks_the_card_itself_and_refuses_cards_that_check_nothing(tmp_path):
    # A changed load line or statistic in encoder.json changes what its reader computes: the card carries a
    # digest of itself. A card without digests, or naming files outside the folder, checks nothing: refused.
    from selfsup.errors import DataError
    from selfsup.export import card_digest, verify_export

    encoder = Backbone(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), 3, 1, [0.5], [0.5])
    export_encoder(encoder, tmp_path, in_channels=1, image_size=4, name="tiny", formats=["safetensors"])
    good = json.loads((tmp_path / "encoder.json").read_text())
    assert good["card_sha256"] == card_digest(good) and verify_export(tmp_path) == ["encoder.safetensors"]

    def card(change):
        bad = json.loads(json.dumps(good))
        change(bad)
        (tmp_path / "encoder.json").write_text(json.dumps(bad))
        with pytest.raises(DataError) as caught:
            verify_export(tmp_path)
        return str(caught.value)

    assert "does not match its card_sha256" in card(lambda c: c.update(name="other"))
    assert "must give the file's path and sha256" in card(lambda c: c["files"]["safetensors"].pop("sha256"))
    assert "must name the exported files" in card(lambda c: c.update(files={}))
    assert "must give the file's path and sha256" in card(lambda c: c.update(files={"x": "encoder.onnx"}))
    outside = dict(good["files"]["safetensors"], path="../../etc/hostname")
    assert "not a file of the export folder" in card(lambda c: c["files"].update(safetensors=outside))


@pytest.mark.parametrize("method,extra", [
    ("cmc", ["method_args.views=lab", "method_args.proj_dim=8"]),
    ("cpc", ["method_args.patch=10", "method_args.stride=6", "method_args.hidden=16"]),
    ("colorization", []),
])
def test_wrapped_evaluation_encoders_come_back_from_every_file(tmp_path, method, extra):
    # CMC's two encoders, CPC's patch grid and context, colorization's lightness path: safetensors holds
    # the whole evaluation encoder, which selfsup rebuilds (as encoder.json's lines say); TorchScript
    # and ONNX run it alone.
    import onnxruntime
    from safetensors.torch import load_file

    from selfsup.config import to_dict

    cfg = load_config(None, [f"method={method}", "backbone.width=4", *extra])

    def build(seed):
        torch.manual_seed(seed)
        return build_method(cfg, in_channels=3, image_size=28, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3],
                            num_samples=8).eval_encoder().eval()

    encoder = build(0)
    paths = export_encoder(encoder, tmp_path, in_channels=3, image_size=28, name="convnet", config=to_dict(cfg))
    images = torch.rand(3, 3, 28, 28)
    with torch.no_grad():
        expected = encoder(images)
        rebuilt = build(1)  # other weights until the file's are loaded
        assert not torch.allclose(rebuilt(images), expected, atol=1e-3)
        rebuilt.load_state_dict(load_file(paths["safetensors"]))
        assert torch.allclose(rebuilt(images), expected, atol=1e-5)
        assert torch.allclose(torch.jit.load(str(paths["torchscript"]))(images), expected, atol=1e-5)
    card = json.loads(paths["card"].read_text())
    assert card["files"]["safetensors"]["needs"] == "selfsup"
    assert torch.allclose(run_load_lines(card, tmp_path, images), expected, atol=1e-5)
    session = onnxruntime.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"images": images.numpy()})[0] - expected.numpy()).max() <= 1e-4


def test_an_onnx_file_that_disagrees_is_not_kept(tmp_path):
    encoder = Backbone(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), 3, 1, [0.5], [0.5])
    with pytest.raises(DataError, match="differ from PyTorch's"):
        export_encoder(encoder, tmp_path, in_channels=1, image_size=4, name="tiny", formats=["onnx"], atol=-1.0)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_missing_onnx_extra_and_unknown_formats(tmp_path, monkeypatch):
    encoder = Backbone(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), 3, 1, [0.5], [0.5])
    with pytest.raises(ConfigError, match="choose among safetensors, torchscript, onnx"):
        export_encoder(encoder, tmp_path, in_channels=1, image_size=4, name="tiny", formats=["pickle"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'selfsup\[export\]'"):
        export_encoder(encoder, tmp_path, in_channels=1, image_size=4, name="tiny", formats=["onnx"])


def test_the_cli_exports_a_checkpoint(tmp_path, monkeypatch):
    from selfsup import cli
    from selfsup.config import load_config
    from selfsup.engine import pretrain

    cfg = load_config(None, ["data.name=digits", "data.size=16", "backbone.width=4", "method_args.proj_hidden_dim=16",
                             "train.batch_size=256", "train.epochs=1", "train.progress=false", "train.knn_every=0",
                             "eval.plots=false", "eval.linear=false", f"train.out_dir={tmp_path / 'run'}"])
    result = pretrain(cfg)
    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)
    assert cli.main(["export", str(result.checkpoint), "--formats", "safetensors,torchscript"]) == 0
    folder = tmp_path / "run" / "export"
    card = json.loads((folder / "encoder.json").read_text())
    assert card["method"] == "simclr" and card["feature_dim"] == 32 and card["image_size"] == 16
    scripted = torch.jit.load(str(folder / "encoder.torchscript.pt"))
    images = torch.rand(3, 1, 16, 16)
    from selfsup.cli.common import load_encoder

    _, encoder, *_ = load_encoder(str(result.checkpoint))
    with torch.no_grad():
        assert torch.allclose(scripted(images), encoder.cpu()(images), atol=1e-5)
    # selfsup's own convnet: its safetensors lines rebuild it through selfsup, from the recorded configuration
    assert card["files"]["safetensors"]["needs"] == "selfsup" and card["config"]["method"] == "simclr"
    assert torch.allclose(run_load_lines(card, folder, images), encoder.cpu()(images), atol=1e-5)
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["export", str(result.checkpoint), "--formats", "zip"])


def test_the_cli_replaces_an_earlier_export_and_a_loose_checkpoint_exports_beside_itself(tmp_path, monkeypatch,
                                                                                          capsys):
    import shutil

    from selfsup import cli
    from selfsup.config import load_config
    from selfsup.engine import pretrain
    from selfsup.export import verify_export

    cfg = load_config(None, ["data.name=digits", "data.size=16", "backbone.width=4", "method_args.proj_hidden_dim=16",
                             "train.batch_size=256", "train.epochs=1", "train.progress=false", "train.knn_every=0",
                             "eval.plots=false", "eval.linear=false", "eval.knn=false", "eval.floor=false",
                             f"train.out_dir={tmp_path / 'run'}"])
    checkpoint = pretrain(cfg).checkpoint
    loose = tmp_path / "downloads" / "x.ckpt"  # a checkpoint outside any run folder
    loose.parent.mkdir()
    shutil.copy(checkpoint, loose)
    monkeypatch.setattr(cli.common, "tune_allocator", lambda: None)
    assert cli.main(["export", str(loose), "--formats", "safetensors,torchscript"]) == 0
    folder = tmp_path / "downloads" / "export"
    assert (folder / "encoder.torchscript.pt").is_file() and not (tmp_path / "export").exists()
    capsys.readouterr()
    assert cli.main(["export", str(loose), "--formats", "safetensors"]) == 0
    assert "removed its encoder.torchscript.pt" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", "encoder.safetensors"]
    assert verify_export(folder) == ["encoder.safetensors"]
