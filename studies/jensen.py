"""Jensen's inequality in the minibatch contrastive loss, measured on a fixed encoder.

    .venv/bin/python studies/jensen.py [--checkpoint RUN/checkpoints/last.ckpt] [--out docs/studies]

The notes' argument for large batches: a batch of B images gives each anchor 2B - 2 of the
2M - 2 negatives of the whole set of M images, and the NT-Xent term ``log(exp(s+) + sum over the
batch's negatives of exp(s))`` is concave in that sum. By Jensen's inequality the expected
minibatch loss is at most the loss with the sum replaced by its expectation,

    E[L_B] <= mean_i [ -s_i+ / tau + log(exp(s_i+ / tau) + (2B - 2) / (2M - 2) * S_i) ],

S_i being anchor i's sum over all 2M - 2 negatives (the batch's negatives are the two views of
B - 1 images drawn without replacement, so the expectation is exact). The minibatch loss is a
biased, low estimate of what it stands for, by a gap that shrinks as B grows; and it is below the
full-batch loss (B = M) by more still. Here, for a fixed encoder (no training: the same
embeddings throughout) on M = 8,192 Fashion-MNIST test images with two views each: the mean
minibatch loss over every batch of a random partition (5 partitions, the seeds) against the bound,
computed exactly in float64, at B = 16 ... 4,096, for the encoder at random initialisation and for
a trained one (``--checkpoint``, a SimCLR run; the page names it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _page  # noqa: E402

from selfsup import data, losses  # noqa: E402
from selfsup.cli.common import load_method  # noqa: E402  (the checkpoint loader the command line uses)
from selfsup.config import load_config  # noqa: E402
from selfsup.engine.setup import build_method  # noqa: E402

M = 8192
BATCHES = (16, 64, 256, 1024, 4096)
SEEDS = list(range(5))


def embeddings(method, images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of ``images`` through the method's backbone and head, in eval mode."""
    torch.manual_seed(seed)
    views = method.augmentation(images.shape[-1])(images)
    encoder = method.projection_encoder().eval()
    with torch.no_grad():
        z1, z2 = (torch.cat([encoder(v[k:k + 1024]) for k in range(0, len(v), 1024)]) for v in views[:2])
    return F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)


def per_anchor(u1: torch.Tensor, u2: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_i+ / tau, S_i) for the 2M anchors: the positive's logit and the sum of exp over all negatives."""
    u = torch.cat((u1, u2))
    n = len(u1)
    positive = torch.cat((torch.arange(n, 2 * n), torch.arange(n)))
    logits_pos = (u * u[positive]).sum(1) / tau
    sums = torch.empty(2 * n, dtype=torch.float64)
    for start in range(0, 2 * n, 2048):
        block = torch.exp(u[start:start + 2048] @ u.T / tau)
        rows = torch.arange(start, min(start + 2048, 2 * n))
        block[rows - start, rows] = 0
        block[rows - start, positive[rows]] = 0
        sums[rows] = block.sum(1)
    return logits_pos, sums


def jensen_bound(logits_pos: torch.Tensor, sums: torch.Tensor, b: int) -> float:
    scale = (2 * b - 2) / (2 * M - 2)
    return float((-logits_pos + torch.log(torch.exp(logits_pos) + scale * sums)).mean())


def minibatch_loss(u1: torch.Tensor, u2: torch.Tensor, tau: float, b: int, seed: int) -> float:
    order = torch.randperm(M, generator=torch.Generator().manual_seed(seed))
    values = [float(losses.nt_xent(u1[idx].float(), u2[idx].float(), tau, gather=False))
              for idx in order.split(b)]
    return sum(values) / len(values)


def study(method, images, tau: float) -> dict:
    u1, u2 = embeddings(method, images)
    logits_pos, sums = per_anchor(u1, u2, tau)
    full = float(losses.nt_xent(u1.float(), u2.float(), tau, gather=False))
    rows = {}
    for b in BATCHES:
        rows[b] = {"minibatch": _page.mean_interval([minibatch_loss(u1, u2, tau, b, seed) for seed in SEEDS]),
                   "bound": jensen_bound(logits_pos, sums, b)}
        print(f"  B={b}: minibatch {rows[b]['minibatch']['mean']:.4f}, bound {rows[b]['bound']:.4f}", flush=True)
    return {"full": full, "full_check": jensen_bound(logits_pos, sums, M), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained SimCLR checkpoint (default: random initialisation only)")
    parser.add_argument("--out", default=str(_page.DOCS))
    args = parser.parse_args()
    out = Path(args.out)
    test = data.load("fashion_mnist", "test")
    images = test.images[:M]
    encoders = {}
    cfg = load_config("recipes/simclr_fashion_mnist.yaml", [])
    mean, std = test.images.float().div(255).mean().item(), test.images.float().div(255).std().item()
    torch.manual_seed(0)
    encoders["random init (recipes/simclr_fashion_mnist.yaml)"] = (build_method(
        cfg, in_channels=1, image_size=28, mean=[mean], std=[std]), cfg.method_args.get("temperature", 0.5))
    if args.checkpoint:
        ckpt_cfg, method, _, _, _ = load_method(args.checkpoint)
        encoders[f"trained ({args.checkpoint})"] = (method, ckpt_cfg.method_args.get("temperature", 0.5))
    found = {}
    for name, (method, tau) in encoders.items():
        print(name, flush=True)
        found[name] = study(method, images, tau) | {"tau": tau}

    def low(s):
        return s["mean"] - s["ci95"]

    def high(s):
        return s["mean"] + s["ci95"]

    verdicts, points = [], {}
    lines = ["With weights at random initialisation the projections of all images point nearly the same way "
             "(every similarity near 1), so every batch's negative sum is nearly the same and the gap nearly "
             "vanishes: the inequality is strict only where the similarities vary, which training brings.", "",
             f"M = {M:,} Fashion-MNIST test images, two views each (the SimCLR recipe's augmentation, seed 0), "
             f"embedded once; each cell of the minibatch column: the mean NT-Xent over the batches of a random "
             f"partition into batches of B, mean ± std [95% interval] over {len(SEEDS)} partitions.", ""]
    for name, result in found.items():
        rows = result["rows"]
        never_above = all(low(rows[b]["minibatch"]) <= rows[b]["bound"] for b in BATCHES)
        gaps = [rows[b]["bound"] - rows[b]["minibatch"]["mean"] for b in BATCHES]
        verdicts.append((f"{name}: the mean minibatch loss is never above its Jensen bound",
                         "reproduces" if never_above else "does not reproduce",
                         f"gaps {', '.join(f'{g:.2e}' for g in gaps)} at B = {', '.join(map(str, BATCHES))}."))
        if gaps[0] > 1e-3:  # similarities that vary: the inequality is strict, and the gap should close
            below = all(high(rows[b]["minibatch"]) < rows[b]["bound"] for b in BATCHES)
            shrinking = all(a > b for a, b in zip(gaps, gaps[1:]))
            verdicts += [
                (f"{name}: strictly below, its whole interval under the bound at every B",
                 "reproduces" if below else "does not reproduce", f"{sum(high(rows[b]['minibatch']) < rows[b]['bound'] for b in BATCHES)} of {len(BATCHES)} batch sizes."),
                (f"{name}: the gap shrinks as B grows", "reproduces" if shrinking else "does not reproduce",
                 "monotone in B" if shrinking else "not monotone in B")]
        lines += [f"**{name}**, tau {result['tau']}: full-batch loss (B = M) {result['full']:.4f} "
                  f"(the bound at B = M, computed separately: {result['full_check']:.4f}).", "",
                  "| B | mean minibatch loss | Jensen bound | gap | below the full-batch loss by |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for b, gap in zip(BATCHES, gaps):
            s = rows[b]["minibatch"]
            lines.append(f"| {b} | {s['mean']:.5f} ± {s['std']:.5f} [{low(s):.5f}, {high(s):.5f}] | "
                         f"{rows[b]['bound']:.5f} | {gap:.2e} | {result['full'] - s['mean']:.4f} |")
            points[f"{name} B={b}"] = {"minibatch": s, "bound": rows[b]["bound"], "full": result["full"]}
        lines.append("")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "img").mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(found), figsize=(5 * len(found), 3.6), squeeze=False)
    for ax, (name, result) in zip(axes[0], found.items()):
        rows = result["rows"]
        ax.errorbar(BATCHES, [rows[b]["minibatch"]["mean"] for b in BATCHES],
                    yerr=[rows[b]["minibatch"]["ci95"] for b in BATCHES], marker="o", capsize=3,
                    label="mean minibatch loss")
        ax.plot(BATCHES, [rows[b]["bound"] for b in BATCHES], "s--", label="Jensen bound")
        ax.axhline(result["full"], color="#888", linestyle=":", label="full-batch loss")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B")
        ax.set_ylabel("NT-Xent")
        ax.set_title(name.split(" (")[0], fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "img" / "jensen.png", dpi=110)
    plt.close(fig)
    lines += ["![jensen](img/jensen.png)", ""]
    command = "python studies/jensen.py" + (f" --checkpoint {args.checkpoint}" if args.checkpoint else "")
    page = _page.write("jensen", "The minibatch NT-Xent loss is a low (biased) estimate of the loss it stands "
                       "for: by Jensen's inequality its expectation is below the loss with the batch's negative sum "
                       "replaced by its expectation, by a gap that shrinks as the batch grows (the notes' "
                       "argument for large batches and for MoCo's queue).", lines, verdicts, points, SEEDS, command,
                       out)
    print(page)


if __name__ == "__main__":
    main()
