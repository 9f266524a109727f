"""Check the fused views (train.fused_views / train.fused_draws) on the machine at hand before timing them.

On a GPU the Triton kernels are compiled for real, which the tests (Triton's CPU interpreter, and an
ahead-of-time compile for sm_90) cannot run; this script runs them and compares, for each recipe's views
at 3x32x32 and 1x28x28 (``VIEWS``):

* the fused pixels for a plan drawn by the reference path against the reference path's own pixels
  (``runner._run_view``), the largest difference (must be under 1e-5);
* with the kernel drawing (``fused_draws``): its views against the reference path's for the parameters
  it recorded (``_triton.draw_parameters``), and the crop boxes of 20,000 draws against torchvision's
  ``RandomResizedCrop.get_params`` (two-sample KS statistics of area, aspect ratio and position).

Prints one line per check and ``fused views: PASS`` or ``FAIL``; exit status 1 on a failure.
Run: ``python benchmarks/fused_check.py`` on a CUDA machine (``benchmarks/gpu.sh`` does), or on a CPU with
``TRITON_INTERPRET=1 python benchmarks/fused_check.py --images 4 --draws 500`` (slow: the interpreter).
"""

from __future__ import annotations

import argparse
import sys

import scipy.stats
import torch
import torchvision.transforms.v2 as T

from selfsup import augment as A
from selfsup.augment import _triton, runner
from selfsup.augment._common import full_float32_products

# Views that between them take every step and both channel counts, and few enough kernel specialisations
# (each compiled once, some seconds) to keep gpu.sh short: BYOL's two views (every step, solarize), DINO's
# 12-pixel local crops, MoCo v2's one-channel view (blur, no hue).
VIEWS = {3: (("byol", 0), ("byol", 1), ("dino", 2)), 1: (("moco_v2", 0),)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--draws", type=int, default=20000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    probe = torch.zeros(1, 1, 8, 8, device=device)
    if not _triton.usable(probe, runner.View(size=(8, 8))):
        print("fused views: not usable here (needs Triton and a CUDA GPU, or TRITON_INTERPRET=1)")
        return 0
    torch.manual_seed(0)
    # As a training run on a tensor-core GPU: TF32 products for the network (train.matmul_precision), which the
    # reference path lifts to full float32 for its crop (full_float32_products, as _augment_view calls it).
    torch.set_float32_matmul_precision("high")
    worst, ok = 0.0, True
    for channels, side in ((3, 32), (1, 28)):
        x = torch.randint(0, 256, (args.images, channels, side, side), dtype=torch.uint8, device=device)
        xf = A.to_float(x)
        for name, index in VIEWS[channels]:
            view = A.recipe(name, side).output_views[index]
            plan = runner._plan_view(view, xf.shape, device, None)
            with full_float32_products(device):
                reference = runner._run_view(xf, view, plan).clamp(0, 1)
            given = (_triton.run_view(x, view, plan)[0] - reference).abs().max()
            seed = torch.randint(0, 2**31 - 1, (1,), device=device)
            drawn, _ = _triton.run_view(x, view, seed=seed)
            record = _triton.draw_parameters(seed, view, channels, side, side, args.images)
            with full_float32_products(device):
                reference = runner._run_view(xf, view, _triton.plan_from_draws(record, view, channels)).clamp(0, 1)
            own = (drawn - reference).abs().max()
            worst = max(worst, float(given), float(own))
            passed = float(given) < 1e-5 and float(own) < 1e-5
            ok &= passed
            print(f"  {channels}x{side}x{side} {name} view {index}: plan given {float(given):.1e}, "
                  f"drawn in the kernel {float(own):.1e}  {'ok' if passed else 'FAIL'}")
    view, side = A.recipe("simclr", 32).views[0], 32
    record = _triton.draw_parameters(torch.tensor([1], device=device), view, 3, side, side, args.draws).cpu()
    top, left, height, width = record[:, :4].T
    image = torch.zeros(1, side, side)
    reference = torch.tensor([T.RandomResizedCrop.get_params(image, list(view.scale), list(view.ratio))
                              for _ in range(args.draws)], dtype=torch.float32)
    ours = [height * width, width / height, top / (side - height + 1), left / (side - width + 1)]
    theirs = [reference[:, 2] * reference[:, 3], reference[:, 3] / reference[:, 2],
              reference[:, 0] / (side - reference[:, 2] + 1), reference[:, 1] / (side - reference[:, 3] + 1)]
    for label, a, b in zip(("area", "aspect", "top", "left"), ours, theirs):
        test = scipy.stats.ks_2samp(a.numpy(), b.numpy())
        passed = test.pvalue > 1e-4
        ok &= passed
        print(f"  crop {label} against torchvision ({args.draws} draws): KS {test.statistic:.4f}, "
              f"p {test.pvalue:.3g}  {'ok' if passed else 'FAIL'}")
    print(f"fused views: {'PASS' if ok else 'FAIL'} (largest pixel difference {worst:.1e}, device {device})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
