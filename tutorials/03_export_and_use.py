# %% [markdown]
# # Exporting the encoder and using it without selfsup
#
# `selfsup export` writes the evaluation encoder three ways: safetensors (the network's weights under its
# own keys), TorchScript and ONNX (the whole encoder, normalisation inside: images in [0, 1] in, features
# out), with `encoder.json` saying what the input must be and the sha256 of every file (`selfsup verify`
# checks them). A tiny run to export first:

# %%
from selfsup.cli import main

main(["pretrain", "data.name=digits", "data.size=16", "backbone.width=8", "method_args.proj_hidden_dim=64",
      "train.batch_size=128", "train.epochs=1", "train.knn_every=0", "train.progress=false", "eval.plots=false",
      "eval.floor=false", "name=to_export", "train.out_dir=runs/to_export"])
main(["export", "runs/to_export/checkpoints/last.ckpt", "--out", "exported"])
main(["verify", "exported"])

# %% [markdown]
# Elsewhere, with onnxruntime alone (no torch needed there), features of new images:

# %%
import json

import numpy as np
import onnxruntime

card = json.loads(open("exported/encoder.json").read())
print("input:", card["input"])
session = onnxruntime.InferenceSession("exported/encoder.onnx", providers=["CPUExecutionProvider"])
images = np.random.default_rng(0).random((3, card["in_channels"], card["image_size"], card["image_size"]),
                                        dtype=np.float32)
features = session.run(None, {"images": images})[0]
print("features:", features.shape)

# %% [markdown]
# The TorchScript file gives the same features in PyTorch, with nothing from selfsup imported:

# %%
import torch

scripted = torch.jit.load("exported/encoder.torchscript.pt")
with torch.no_grad():
    same = scripted(torch.from_numpy(images)).numpy()
print("largest difference from onnxruntime:", float(np.abs(same - features).max()))
