"""InstDisc's bank scores two ways, in one process: gathering the B x (1 + m) bank rows (the paper's
code) against multiplying by the whole bank and picking the columns; forward and backward.

    .venv/bin/python benchmarks/bank.py                     # Fashion-MNIST: N = 60,000, m = 4096, B = 256
    .venv/bin/python benchmarks/bank.py --samples 1281167   # ImageNet's N
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from selfsup.methods import InstDisc
from selfsup.nn import build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--noise", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = build_backbone("convnet", in_channels=1, image_size=28, width=4)
    methods = {scoring: InstDisc(backbone, num_samples=args.samples, proj_dim=args.dim, num_noise=args.noise,
                                 scoring=scoring) for scoring in ("gather", "dense")}
    methods["dense"].bank.features.copy_(methods["gather"].bank.features)
    f = F.normalize(torch.randn(args.batch, args.dim), dim=1).requires_grad_()
    candidates = torch.randint(args.samples, (args.batch, 1 + args.noise))
    times: dict[str, list[float]] = {name: [] for name in methods}
    results = {}
    for _ in range(args.repeats + 1):
        for name, method in methods.items():
            start = time.perf_counter()
            scores = method.scores(f, candidates)
            (grad,) = torch.autograd.grad(scores.square().sum(), f)
            times[name].append(time.perf_counter() - start)
            results[name] = (scores.detach(), grad)
    torch.testing.assert_close(results["dense"][0], results["gather"][0])
    torch.testing.assert_close(results["dense"][1], results["gather"][1], rtol=1e-4, atol=1e-4)
    gather, dense = (statistics.median(times[name][1:]) for name in ("gather", "dense"))
    print(f"N {args.samples:,}, m {args.noise}, B {args.batch}, D {args.dim}, CPU kernels "
          f"{torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}, median of {args.repeats}:")
    print(f"  gather rows, forward+backward : {gather * 1000:8.1f} ms")
    print(f"  dense bank,  forward+backward : {dense * 1000:8.1f} ms")
    print(f"  dense / gather speed-up       : {gather / dense:8.2f}x  (auto picks "
          f"{'dense' if args.samples <= 32 * (1 + args.noise) else 'gather'})")


if __name__ == "__main__":
    main()
