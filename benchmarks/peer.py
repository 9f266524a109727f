"""selfsup's SimCLR step against a well-written plain PyTorch loop of the same model, data and precision.

The peer is what a careful user writes without selfsup: torchvision v2 transforms applied per
sample in DataLoader workers (random resized crop, flip, colour jitter, grayscale: SimCLR's CIFAR
views), pinned batches moved with ``non_blocking``, the same ResNet-18 (small-image stem) and
projection MLP in channels-last memory under the same autocast, NT-Xent written out, SGD. selfsup is
the engine's own step (``Trainer.train_step``: views made batched on the device). Both read
Fashion-MNIST as 3x32x32 from memory; both are timed over the same number of steps after a warm-up.

    .venv/bin/python benchmarks/peer.py                          # CPU: a short run
    .venv/bin/python benchmarks/peer.py --batch 512 --workers 16 --steps 40   # a GPU machine
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import load_config
from selfsup.engine import Trainer, resolve_precision


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        import torchvision.transforms.v2 as T

        self.images = images
        self.transform = T.Compose([
            T.RandomResizedCrop(images.shape[-1], scale=(0.08, 1.0), antialias=True), T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
            T.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        return self.transform(image), self.transform(image)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, targets)


def peer_images_per_s(trainer: Trainer, args, device: torch.device, dtype) -> float:
    """The plain loop on the trainer's images, with a fresh model of the same architecture."""
    from selfsup.engine import build_method

    images = trainer.train_set.images.cpu()
    loader = torch.utils.data.DataLoader(TwoViews(images), batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    torch.manual_seed(0)
    method = build_method(trainer.cfg, in_channels=3, image_size=32, mean=trainer.train_set.mean().tolist(),
                          std=trainer.train_set.std().tolist())
    model = nn.Sequential(method.backbone, method.projector).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    batches = iter(loader)
    done, start = 0, None
    for step in range(args.warmup + args.steps):
        try:
            x1, x2 = next(batches)
        except StopIteration:
            batches = iter(loader)
            x1, x2 = next(batches)
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        views = torch.cat([x1, x2]).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            z1, z2 = model(views).chunk(2)
        loss = nt_xent(z1, z2, 0.5)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done += step >= args.warmup
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done * args.batch / (time.perf_counter() - start)


def selfsup_images_per_s(trainer: Trainer, args) -> float:
    for step in range(args.warmup):
        trainer.train_step(step)
    if trainer.fabric.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        outputs, _ = trainer.train_step(step)
    float(outputs["loss"].detach())
    return args.steps * args.batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    cfg = load_config("recipes/simclr_fashion_mnist.yaml", [
        f"backbone.name={args.backbone}", "data.size=32", "data.channels=3", f"train.batch_size={args.batch}",
        f"train.precision={args.precision}", "train.progress=false", "train.knn_every=0", "eval.plots=false",
        "train.out_dir=/tmp/selfsup_peer_bench", "train.epochs=100"])
    trainer = Trainer(cfg)
    device = trainer.fabric.device
    precision, why = resolve_precision(args.precision, device.type)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    ours = selfsup_images_per_s(trainer, args)
    peer = peer_images_per_s(trainer, args, device, dtype)
    print(f"SimCLR, {args.backbone} at 3x32x32, batch {args.batch}, {args.steps} timed steps after {args.warmup}, on "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} ({precision}: {why}), "
          f"torch {torch.__version__}, peer DataLoader workers {args.workers}:")
    print(f"  plain PyTorch loop (per-sample torchvision v2 views in workers): {peer:9,.0f} images/s")
    print(f"  selfsup engine step (batched views on the device)            : {ours:9,.0f} images/s")
    print(f"  ratio selfsup / plain                                         : {ours / peer:9.2f}")


if __name__ == "__main__":
    main()
