"""SimCLR training-step throughput against the bare backbone's forward+backward, in one process.

The full step is what the engine runs: batched augmentation of a uint8 batch into two views, the
backbone and projection head on both views, NT-Xent, backward, SGD step. The reference is the bare
backbone's forward+backward on the same two views (already augmented), under the same autocast and
memory format. Both are timed in alternating blocks of consecutive steps (5 full steps, 5 bare
steps, ...), so each runs in the steady state a training loop has (alternating single calls of two
different workloads defeats the allocator's reuse and penalises both by up to 20%) while load that
drifts over the run still hits both; the medians of the per-step block means are compared.

    .venv/bin/python benchmarks/step.py                       # convnet on 1x28x28 (Fashion-MNIST size)
    .venv/bin/python benchmarks/step.py --backbone resnet18 --size 32 --channels 3 --batch 128
    .venv/bin/python benchmarks/step.py --glibc-malloc        # without the engine's allocator tuning
    .venv/bin/python benchmarks/step.py --device cuda --backbone resnet18 --size 32 --channels 3 --batch 512 --compile

It also times the augmentation alone (views/s: two views of every image per call).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from selfsup.augment import recipe
from selfsup.engine import resolve_precision, tune_allocator
from selfsup.methods import Batch, Progress, SimCLR
from selfsup.nn import build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9, help="blocks per side")
    parser.add_argument("--block", type=int, default=5, help="consecutive steps per block")
    parser.add_argument("--precision", default="auto", help="auto | bf16-mixed | 32-true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--contiguous", action="store_true", help="NCHW memory instead of channels-last")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the backbone and the views (train.compile)")
    parser.add_argument("--fused", action="store_true",
                        help="make the views in one Triton kernel each (train.fused_views; CUDA only), and also time "
                             "the unfused views in the same run")
    parser.add_argument("--fused-draws", action="store_true",
                        help="with --fused, the kernel also draws the parameters (train.fused_draws)")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="keep glibc's default mmap/trim thresholds (the engine raises them; see "
                             "selfsup.engine.allocator) to see what the page faults cost both sides")
    args = parser.parse_args()
    allocator = "glibc defaults" if args.glibc_malloc or not tune_allocator() else "tuned"

    device = torch.device(args.device)
    precision, why = resolve_precision(args.precision, device.type)
    memory = torch.contiguous_format if args.contiguous else torch.channels_last
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, in_channels=args.channels, image_size=args.size)
    method = SimCLR(backbone, proj_hidden_dim=512, proj_dim=128).to(device).to(memory_format=memory)
    if args.compile:  # as the engine's train.compile: the backbone's network, which both sides run
        backbone.net.compile()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    augment = recipe("simclr", args.size)
    augment.compiled = args.compile  # as the engine (RGB views on a CPU keep the C kernel)
    if args.fused and device.type != "cuda":
        parser.error("--fused needs --device cuda (train.fused_views is refused on a CPU)")
    augment.fused = args.fused
    augment.fused_draws = args.fused_draws
    if args.fused_draws and not args.fused:
        parser.error("--fused-draws needs --fused")
    images = torch.randint(0, 256, (args.batch, args.channels, args.size, args.size), dtype=torch.uint8, device=device)
    fixed_views = [v.contiguous(memory_format=memory) for v in augment(images)]
    progress = Progress(0, 1, 1)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def full_step() -> None:
        with torch.no_grad():
            views = [v.contiguous(memory_format=memory) for v in augment(images)]
        with autocast():
            loss = method.training_step(Batch(views, torch.arange(args.batch, device=device)), progress)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.on_step_end(progress)

    def bare_step() -> None:
        with autocast():
            out = backbone(torch.cat(fixed_views))
        out.float().mean().backward()
        backbone.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        fn()  # the first step of a block warms the allocator for this workload; not timed
        start = time.perf_counter()
        for _ in range(args.block):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.block

    def augment_only() -> None:
        with torch.no_grad():
            augment(images)

    for _ in range(3):
        full_step()
        bare_step()

    def augment_unfused() -> None:  # the reference for --fused, in the same run
        augment.fused = augment.fused_draws = False
        try:
            augment_only()
        finally:
            augment.fused, augment.fused_draws = True, args.fused_draws

    full, bare, views, unfused = [], [], [], []
    for _ in range(args.repeats):
        full.append(timed(full_step))
        bare.append(timed(bare_step))
        views.append(timed(augment_only))
        if args.fused:
            unfused.append(timed(augment_unfused))
    full_ips, bare_ips = args.batch / statistics.median(full), args.batch / statistics.median(bare)
    print(f"{args.backbone} {args.channels}x{args.size}x{args.size} batch {args.batch} on {device} ({precision}: {why}), "
          f"CPU kernels {torch.backends.cpu.get_cpu_capability()}, {'NCHW' if args.contiguous else 'channels-last'}, "
          f"threads {torch.get_num_threads()}, malloc {allocator}, median of {args.repeats} blocks of {args.block} steps:")
    print(f"  bare backbone forward+backward on 2 views : {bare_ips:9,.0f} images/s")
    print(f"  SimCLR step (augment+head+loss+optimiser)  : {full_ips:9,.0f} images/s")
    print(f"  ratio SimCLR / bare                       : {full_ips / bare_ips:9.2f}")
    print(f"  augmentation alone (2 views per image)    : {2 * args.batch / statistics.median(views):9,.0f} views/s"
          f"{'  (compiled)' if args.compile else ''}{'  (fused' + (', drawn in the kernel)' if args.fused_draws else ')') if args.fused else ''}")
    if args.fused:
        print(f"  augmentation unfused, same run            : {2 * args.batch / statistics.median(unfused):9,.0f} views/s"
              f"  (fused / unfused {statistics.median(unfused) / statistics.median(views):.2f}x)")


if __name__ == "__main__":
    main()
