"""Export an evaluation encoder for use without selfsup: safetensors, TorchScript, ONNX.

What each file holds (``<out>/encoder.*``):

- ``encoder.safetensors``: for a backbone, the weights of its network alone, under the plain
  model's own keys, so ``timm.create_model(name, num_classes=0)`` (or the torchvision model with its
  last ``Linear`` set to ``nn.Identity()``) loads them with ``load_state_dict``; that network
  expects images already normalised as ``(x - mean) / std`` (values in ``encoder.json`` and in the
  file's metadata). Other evaluation encoders (CMC's two encoders, CPC's patch grid): their whole
  state dict, which selfsup rebuilds.
- ``encoder.torchscript.pt`` and ``encoder.onnx``: the whole encoder with the normalisation folded
  in: input float32 ``(B, C, H, W)`` in [0, 1] (any batch size; ONNX's batch axis is dynamic), output
  float32 ``(B, D)`` features. The ONNX file is run with onnxruntime on a fresh batch and compared
  with PyTorch (largest absolute difference at most ``atol``, default 1e-4) before it is kept.
- ``encoder.json``: what the input must be, the mean and std, the feature dimension, the model name,
  the stem, the checks made, and the lines that load each file.

Every file is written to a temporary name and renamed, so an interrupted export leaves no
half-written file under the final name.
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


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
        card = json.loads(card_path.read_text())
        files = card["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{card_path} is not a valid export card ({error})") from None
    checked = []
    for key, entry in files.items():
        path = folder / entry["path"]
        if not path.is_file():
            raise DataError(f"export {folder}: {entry['path']} ({key}) is missing")
        if "sha256" in entry and file_sha256(path) != entry["sha256"]:
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
                   info: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``encoder`` (float images in [0, 1] -> features) in ``formats`` under ``out_dir``.

    Args:
        encoder: an evaluation encoder; a :class:`selfsup.nn.Backbone` exports its plain network
            to safetensors.
        in_channels, image_size: the input it was trained on (the example input of the traces).
        name: the backbone's name (``timm/resnet18``, ``convnet``...), recorded in the card.
        formats: any of :data:`FORMATS`.
        atol: the largest ONNX-PyTorch difference accepted.
        info: more entries for ``encoder.json`` (the checkpoint, the method).

    Returns:
        ``{format: path}``, with ``"card"`` for ``encoder.json``.

    Raises:
        ConfigError: an unknown format, or the ONNX extra missing.
        DataError: the ONNX file does not reproduce the PyTorch features within ``atol``.
    """
    from selfsup.nn import Backbone

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"formats: {', '.join(unknown) or 'none'}; choose among {', '.join(FORMATS)}")
    onnxruntime = _require_onnx() if "onnx" in formats else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = encoder.cpu().eval()
    example = torch.rand(2, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = encoder(example)
    is_backbone = isinstance(encoder, Backbone)
    mean = encoder.mean.flatten().tolist() if hasattr(encoder, "mean") else [0.0] * in_channels
    std = encoder.std.flatten().tolist() if hasattr(encoder, "std") else [1.0] * in_channels
    registry, _, model = name.partition("/") if "/" in name else ("selfsup", "", name)
    stem = getattr(getattr(encoder, "net", None), "conv1", None)
    small_stem = isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    card: dict[str, Any] = {
        "model": name, "feature_dim": int(reference.shape[1]),
        "input": f"float32 (B, {in_channels}, {image_size}, {image_size}) in [0, 1]; TorchScript and ONNX "
                 f"normalise inside, the safetensors network expects (x - mean) / std",
        "in_channels": in_channels, "image_size": image_size, "mean": mean, "std": std,
        "small_stem": small_stem, "files": {}, "checks": {}, **(info or {})}
    paths: dict[str, Path] = {}

    if "safetensors" in formats:
        from safetensors.torch import save

        module = encoder.net if is_backbone else encoder
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
        metadata = {"model": name, "mean": json.dumps(mean), "std": json.dumps(std),
                    "input": card["input"], "whole_encoder": str(not is_backbone).lower(),
                    "integrity": json.dumps({k: tensor_digest(v) for k, v in tensors.items()})}
        blob = save(tensors, metadata=metadata)
        paths["safetensors"] = atomic_write(out / "encoder.safetensors", lambda file: file.write(blob))
        if registry == "timm":
            load = f"net = timm.create_model({model!r}, num_classes=0, in_chans={in_channels})"
        elif registry == "torchvision":
            load = f"net = torchvision.models.get_model({model!r}); <its last nn.Linear> = nn.Identity()"
        else:
            load = "selfsup's own network: rebuild it with selfsup.nn.build_backbone"
        stem_note = ("; then net.conv1 = nn.Conv2d(C, 64, 3, 1, 1, bias=False) and net.maxpool = nn.Identity() "
                     "(the small-image stem)") if small_stem else ""
        card["files"]["safetensors"] = {"path": paths["safetensors"].name, "load": [
            load + stem_note, "net.load_state_dict(safetensors.torch.load_file('encoder.safetensors'))",
            "features = net((images - mean) / std)  # mean, std: encoder.json, per channel"]}

    if "torchscript" in formats:
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export; it still works
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(encoder, example)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            paths["torchscript"] = atomic_write(out / "encoder.torchscript.pt", lambda file: file.write(buffer.getvalue()))
            loaded = torch.jit.load(str(paths["torchscript"]))
        with torch.no_grad():
            card["checks"]["torchscript_max_abs_diff"] = float((loaded(example) - reference).abs().max())
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
        fresh = torch.rand(3, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = encoder(fresh).numpy()
        diff = float(abs(session.run(None, {"images": fresh.numpy()})[0] - expected).max())
        card["checks"]["onnx_max_abs_diff"] = diff
        if not diff <= atol:
            raise DataError(f"ONNX export of {name}: onnxruntime's features differ from PyTorch's by {diff:.3g} "
                            f"(more than {atol}); the ONNX file was not written")
        paths["onnx"] = atomic_write(out / "encoder.onnx", lambda file: file.write(blob))
        card["files"]["onnx"] = {"path": paths["onnx"].name, "load": [
            "session = onnxruntime.InferenceSession('encoder.onnx')",
            "features = session.run(None, {'images': images})[0]  # float32 numpy in [0, 1]"]}

    for key, path in paths.items():  # what `selfsup verify` checks the files against
        card["files"][key]["sha256"] = file_sha256(path)
    text = (json.dumps(card, indent=2) + "\n").encode()
    paths["card"] = atomic_write(out / "encoder.json", lambda file: file.write(text))
    return paths


__all__ = ["FORMATS", "export_encoder", "file_sha256", "verify_export"]
