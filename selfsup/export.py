"""Export an evaluation encoder for use without selfsup: safetensors, TorchScript, ONNX.

What each file holds (``<out>/encoder.*``):

- ``encoder.safetensors``: for a timm or torchvision backbone, the weights of its network alone,
  under the plain model's own keys; ``encoder.json`` holds the Python lines that build that model
  as it was trained (``img_size`` of a ViT, a first convolution for other channel counts, the
  small-image stem, the classifier taken off), load the file and normalise the images. Those lines
  are run during the export and must reproduce the encoder's features within ``atol``, or the file
  is not kept. selfsup's own networks and the wrapped evaluation encoders (colorization's lightness
  path, CMC's two encoders, CPC's patch grid): their state dict, which only selfsup rebuilds (the
  lines then build it from the configuration recorded in the card); TorchScript and ONNX are the
  self-contained files.
- ``encoder.torchscript.pt`` and ``encoder.onnx``: the whole encoder with the normalisation folded
  in: input float32 ``(B, C, H, W)`` in [0, 1] (any batch size; ONNX's batch axis is dynamic), output
  float32 ``(B, D)`` features. Each is run on a fresh batch (ONNX with onnxruntime) and compared
  with PyTorch (largest absolute difference at most ``atol``, default 1e-4) before it is kept.
- ``encoder.json``: what the input must be, the mean and std, the feature dimension, the model name,
  the stem, the checks made, and the lines that load each file.

Every file is written to a temporary name and renamed, so an interrupted export leaves no
half-written file under the final name. An export into a folder that holds an earlier one removes
its ``encoder.json`` first and, once the new files are written, its files of formats not asked for
this time, so the folder never mixes two exports under one card.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from selfsup._io import atomic_write
from selfsup.engine.checkpoint import tensor_digest
from selfsup.errors import ConfigError, DataError

FORMATS = ("safetensors", "torchscript", "onnx")
FILES = {"safetensors": "encoder.safetensors", "torchscript": "encoder.torchscript.pt", "onnx": "encoder.onnx"}
"""The file each format is written to, under the export folder."""


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def card_digest(card: dict) -> str:
    """sha256 of an export card's content without its own ``card_sha256`` (keys sorted, compact JSON)."""
    body = {key: value for key, value in card.items() if key != "card_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def verify_export(folder: str | os.PathLike) -> list[str]:
    """Check an export folder against its ``encoder.json``: every file's sha256, and each
    safetensors tensor against the digest in the file's metadata. Returns what was checked.

    Raises:
        FileNotFoundError: no ``encoder.json`` in ``folder``.
        DataError: a file missing or changed, or a tensor that does not match (named).
    """
    from safetensors import safe_open

    folder = Path(folder)
    card_path = folder / "encoder.json"
    if not card_path.is_file():
        raise FileNotFoundError(f"{folder} is not a selfsup export: it has no encoder.json")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        files = card["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{card_path} is not a valid export card ({error})") from None
    if not isinstance(files, dict) or not files:
        raise DataError(f"{card_path}: 'files' must name the exported files, got {files!r:.80}")
    for key, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str)):
            raise DataError(f"{card_path}: files.{key} must give the file's path and sha256, got {entry!r:.80}")
        if Path(entry["path"]).name != entry["path"] or entry["path"] in (".", ".."):
            raise DataError(f"{card_path}: files.{key} names {entry['path']!r}, not a file of the export folder")
    if "card_sha256" in card and card_digest(card) != card["card_sha256"]:  # cards before 2026-12-07 have none
        raise DataError(f"export {folder}: encoder.json does not match its card_sha256 (its load lines or "
                        f"statistics changed); export the checkpoint again")
    checked = []
    for key, entry in files.items():
        path = folder / entry["path"]
        if not path.is_file():
            raise DataError(f"export {folder}: {entry['path']} ({key}) is missing")
        if file_sha256(path) != entry["sha256"]:
            detail = ""
            if key == "safetensors":
                try:
                    with safe_open(str(path), framework="pt") as tensors:
                        recorded = json.loads((tensors.metadata() or {}).get("integrity", "{}"))
                        bad = [name for name in tensors.keys()
                               if recorded.get(name) != tensor_digest(tensors.get_tensor(name))]
                    detail = f": tensor {bad[0]} differs" if bad else ""
                except Exception as error:  # noqa: BLE001 - a damaged file: its header may not parse
                    detail = f": it does not even parse ({type(error).__name__})"
            raise DataError(f"export {folder}: {entry['path']} does not match the sha256 in encoder.json{detail}; "
                            f"export the checkpoint again")
        checked.append(entry["path"])
    return checked


def _require_onnx():
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'selfsup[export]' "
                          "(or leave onnx out of --formats)") from None
    import onnxruntime

    return onnxruntime


def export_encoder(encoder: nn.Module, out_dir: str | os.PathLike, *, in_channels: int, image_size: int,
                   name: str, formats: Sequence[str] = FORMATS, atol: float = 1e-4,
                   info: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``encoder`` (float images in [0, 1] -> features) in ``formats`` under ``out_dir``.

    Args:
        encoder: an evaluation encoder; a :class:`selfsup.nn.Backbone` exports its plain network
            to safetensors.
        in_channels, image_size: the input it was trained on (the example input of the traces).
        name: the backbone's name (``timm/resnet18``, ``convnet``...), recorded in the card.
        formats: any of :data:`FORMATS`.
        atol: the largest difference from PyTorch's features accepted, for each file.
        info: more entries for ``encoder.json`` (the checkpoint, the method).
        config: the selfsup configuration (:func:`selfsup.config.to_dict`) the encoder was built
            from, recorded in the card: the safetensors file of a wrapped encoder or of selfsup's own
            network is rebuilt from it.

    Returns:
        ``{format: path}``, with ``"card"`` for ``encoder.json``. Files of an earlier export in
        ``out_dir`` of formats not in ``formats`` are removed.

    Raises:
        ConfigError: an unknown format, or the ONNX extra missing.
        DataError: a file (or the safetensors loading lines) does not reproduce the PyTorch features
            within ``atol``; that file is not kept.
    """
    from selfsup.nn import Backbone

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"formats: {', '.join(unknown) or 'none'}; choose among {', '.join(FORMATS)}")
    onnxruntime = _require_onnx() if "onnx" in formats else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The earlier export's card goes first: until the new one is written, no card vouches for a mix.
    (out / "encoder.json").unlink(missing_ok=True)
    encoder = encoder.cpu().eval()
    example = torch.rand(2, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = encoder(example)
    is_backbone = isinstance(encoder, Backbone)
    mean = encoder.mean.flatten().tolist() if hasattr(encoder, "mean") else [0.0] * in_channels
    std = encoder.std.flatten().tolist() if hasattr(encoder, "std") else [1.0] * in_channels
    registry, _, model = name.partition("/") if "/" in name else ("selfsup", "", name)
    # A wrapped encoder's stem is its (first) backbone's.
    inner = encoder if is_backbone else next((m for m in encoder.modules() if isinstance(m, Backbone)), None)
    stem = getattr(getattr(inner, "net", None), "conv1", None)
    small_stem = isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    card: dict[str, Any] = {
        "model": name, "feature_dim": int(reference.shape[1]),
        "input": f"float32 (B, {in_channels}, {image_size}, {image_size}) in [0, 1]; TorchScript and ONNX "
                 f"normalise inside" + (", the safetensors network expects (x - mean) / std" if is_backbone
                                        else ", and so does the encoder the safetensors file rebuilds"),
        "in_channels": in_channels, "image_size": image_size, "mean": mean, "std": std,
        "small_stem": small_stem, "files": {}, "checks": {}, **(info or {})}
    paths: dict[str, Path] = {}

    if "safetensors" in formats:
        from safetensors.torch import save

        from_registry = registry in ("timm", "torchvision") and is_backbone
        module = encoder.net if is_backbone else encoder
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
        metadata = {"model": name, "mean": json.dumps(mean), "std": json.dumps(std),
                    "input": card["input"], "whole_encoder": str(not is_backbone).lower(),
                    "integrity": json.dumps({k: tensor_digest(v) for k, v in tensors.items()})}
        blob = save(tensors, metadata=metadata)
        paths["safetensors"] = atomic_write(out / FILES["safetensors"], lambda file: file.write(blob))
        if from_registry:
            load = _registry_load_lines(encoder, registry, model, in_channels, image_size, mean, std)
            # The lines are run here as a user would run them: they must load every key and give the features.
            code = "\n".join(load).replace("'encoder.safetensors'", repr(str(paths["safetensors"])))
            try:
                namespace = {"images": example}
                with torch.no_grad():
                    exec(code, namespace)  # noqa: S102 - the lines written above, run as the card tells users to
                diff = float((namespace["features"] - reference).abs().max())
            except Exception as error:  # noqa: BLE001 - any failure means the written lines are wrong
                diff, why = float("inf"), f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            else:
                why = f"features differ by {diff:.3g}, more than {atol}"
            card["checks"]["safetensors_max_abs_diff"] = diff
            if not diff <= atol:
                paths.pop("safetensors").unlink()
                raise DataError(f"safetensors export of {name}: the plain {registry} model does not load it as "
                                f"written ({why}); the file was not kept: leave safetensors out of the formats "
                                f"(TorchScript and ONNX hold the whole encoder)")
            card["files"]["safetensors"] = {"path": paths["safetensors"].name, "load": load}
        else:
            card["files"]["safetensors"] = {
                "path": paths["safetensors"].name, "needs": "selfsup",
                "note": f"the {'network' if is_backbone else 'whole evaluation encoder'} of {name} as selfsup "
                        f"builds it ({type(encoder).__name__}), which only selfsup rebuilds; without selfsup use "
                        f"encoder.torchscript.pt or encoder.onnx, which are self-contained",
                "load": _selfsup_load_lines(encoder, is_backbone, in_channels, image_size, mean, std,
                                            recorded=config is not None)}
        if config is not None:
            card["config"] = config

    fresh = torch.rand(3, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = encoder(fresh)

    if "torchscript" in formats:
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export; it still works
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(encoder, example)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            buffer.seek(0)
            loaded = torch.jit.load(buffer)
        with torch.no_grad():
            diff = float((loaded(fresh) - expected).abs().max())
        card["checks"]["torchscript_max_abs_diff"] = diff
        if not diff <= atol:
            raise DataError(f"TorchScript export of {name}: the traced encoder's features differ from PyTorch's by "
                            f"{diff:.3g} (more than {atol}); the TorchScript file was not written")
        paths["torchscript"] = atomic_write(out / FILES["torchscript"], lambda file: file.write(buffer.getvalue()))
        card["files"]["torchscript"] = {"path": paths["torchscript"].name, "load": [
            "net = torch.jit.load('encoder.torchscript.pt')", "features = net(images)  # images in [0, 1]"]}

    if "onnx" in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(encoder, (example,), None, dynamo=True, input_names=["images"],
                                        output_names=["features"], verbose=False,
                                        dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
        blob = program.model_proto.SerializeToString()  # one file, the weights inside (models under 2 GB)
        session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
        diff = float(abs(session.run(None, {"images": fresh.numpy()})[0] - expected.numpy()).max())
        card["checks"]["onnx_max_abs_diff"] = diff
        if not diff <= atol:
            raise DataError(f"ONNX export of {name}: onnxruntime's features differ from PyTorch's by {diff:.3g} "
                            f"(more than {atol}); the ONNX file was not written")
        paths["onnx"] = atomic_write(out / FILES["onnx"], lambda file: file.write(blob))
        card["files"]["onnx"] = {"path": paths["onnx"].name, "load": [
            "session = onnxruntime.InferenceSession('encoder.onnx')",
            "features = session.run(None, {'images': images})[0]  # float32 numpy in [0, 1]"]}

    for stale in set(FORMATS) - set(formats):  # an earlier export's, which this card would not describe
        (out / FILES[stale]).unlink(missing_ok=True)
    for key, path in paths.items():  # what `selfsup verify` checks the files against
        card["files"][key]["sha256"] = file_sha256(path)
    card["card_sha256"] = card_digest(card)  # the card's own lines too (its load lines, its statistics)
    text = (json.dumps(card, indent=2) + "\n").encode()
    paths["card"] = atomic_write(out / "encoder.json", lambda file: file.write(text))
    return paths


def _registry_load_lines(encoder: nn.Module, registry: str, model: str, in_channels: int, image_size: int,
                         mean: list[float], std: list[float]) -> list[str]:
    """The Python lines that build the plain timm / torchvision model as ``encoder.net`` was built,
    load ``encoder.safetensors`` into it and compute the features of ``images`` in [0, 1]."""
    if registry == "timm":
        import timm

        # The same sizes the registry tried: ViT-likes take the image size (and other view sizes), convnets none.
        for extra in ({"img_size": image_size, "dynamic_img_size": True}, {"img_size": image_size}, {}):
            kwargs = {"num_classes": 0, "in_chans": in_channels, **extra}
            try:
                plain = timm.create_model(model, **kwargs)
                break
            except TypeError:
                continue
        imports = "import safetensors.torch, timm, torch"
        build = f"net = timm.create_model({model!r}, {', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    else:
        import torchvision

        plain = torchvision.models.get_model(model)
        imports = "import safetensors.torch, torch, torchvision"
        build = f"net = torchvision.models.get_model({model!r})"
    return [imports, "from torch import nn", build, *_replacements(plain, encoder.net),
            "net.load_state_dict(safetensors.torch.load_file('encoder.safetensors'))", "net.eval()",
            f"mean = torch.tensor({mean}).view(1, -1, 1, 1)", f"std = torch.tensor({std}).view(1, -1, 1, 1)",
            "features = net((images - mean) / std)  # images: float32 (B, C, H, W) in [0, 1]"]


def _replacements(plain: nn.Module, trained: nn.Module) -> list[str]:
    """``net.<name> = nn.<Layer>(...)`` for each layer of ``trained`` that differs from the registry's
    ``plain`` model: the classifier taken off, a first convolution for other channels, the small stem."""
    layers, lines, replaced = dict(trained.named_modules()), [], []
    for name, layer in plain.named_modules():
        if not name or any(name.startswith(f"{done}.") for done in replaced):
            continue
        other = layers.get(name)
        if other is None or (type(other) is type(layer) and other.extra_repr() == layer.extra_repr()):
            continue  # a layer the trained network lacks fails the load, which the export's check reports
        target = "net" + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in name.split("."))
        lines.append(f"{target} = nn.{type(other).__name__}({other.extra_repr()})")
        replaced.append(name)
    return lines


def _selfsup_load_lines(encoder: nn.Module, is_backbone: bool, in_channels: int, image_size: int,
                        mean: list[float], std: list[float], recorded: bool) -> list[str]:
    """The Python lines that rebuild a wrapped encoder (or selfsup's own network) with selfsup from
    the configuration in ``encoder.json`` and load ``encoder.safetensors`` into it."""
    config = ("config = from_dict(json.load(open('encoder.json'))['config'])" if recorded else
              "config = CONFIG  # the selfsup Config the encoder was built from: this export did not record it")
    lines = ["import json, safetensors.torch, torch", "from selfsup.config import from_dict",
             "from selfsup.engine import build_method", config,
             "config.backbone.pretrained = False  # the weights come from the file",
             (f"method = build_method(config, in_channels={in_channels}, image_size={image_size}, "
              f"mean=[0.0] * {in_channels}, std=[1.0] * {in_channels}, num_samples=1)  # placeholders: the "
              f"statistics come below, a memory bank's size is no part of the encoder"),
             f"net = method.eval_encoder(){'.net' if is_backbone else ''}",
             "net.load_state_dict(safetensors.torch.load_file('encoder.safetensors'))", "net.eval()"]
    if is_backbone:
        return lines + [f"mean = torch.tensor({mean}).view(1, -1, 1, 1)", f"std = torch.tensor({std}).view(1, -1, 1, 1)",
                        "features = net((images - mean) / std)  # images: float32 (B, C, H, W) in [0, 1]"]
    step = " ".join((type(encoder).__doc__ or "").split("\n\n")[0].split())
    return lines + [(f"features = net(images)  # images: float32 (B, C, H, W) in [0, 1]; the normalisation "
                     f"(restored from the file) and the encoder's own step are inside "
                     f"({type(encoder).__name__}: {step})")]


__all__ = ["FILES", "FORMATS", "export_encoder", "file_sha256", "verify_export"]
