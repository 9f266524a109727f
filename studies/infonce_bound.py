"""InfoNCE is a lower bound on mutual information, and never above log N: measured where the truth is known.

    .venv/bin/python studies/infonce_bound.py [--out docs/studies]

Pairs (x, y) of d-dimensional Gaussians, each coordinate pair correlated by rho: the mutual
information is exactly ``-d/2 log(1 - rho^2)`` nats. With the optimal critic, the log density
ratio ``f(x, y) = log p(y | x) - log p(y)`` (also the optimal discriminator of the JSD estimator),
the estimates measure the bounds themselves, not how well a network learns a critic:

- InfoNCE (CPC, SimCLR): ``log N - L``, with L the cross-entropy of picking each x's own y among the
  batch's N, the critic's values as logits (the loss :func:`selfsup.losses.info_nce` computes from
  dot-product scores); van den Oord et al. 2018, Poole et al. 2019.
- JSD (Deep InfoMax, Deep Graph Infomax): ``-selfsup.losses.jsd_mi`` on the positive pairs and the
  batch's mismatched pairs, plus log 4 so that it reads between 0 and log 4 (it is
  ``2 JSD - log 4`` at the optimum: a divergence, not nats of information).

For each true MI, batch size N and seed: 20 batches; the page gives each seed's mean over them, then
the mean, std and 95% interval over 5 seeds.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _page  # noqa: E402

from selfsup import losses  # noqa: E402

DIM = 10
TRUE_MI = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0)
BATCHES = (8, 32, 128, 512, 2048)
SEEDS = list(range(5))
PER_SEED = 20


def rho_for(mi: float, dim: int = DIM) -> float:
    """The per-coordinate correlation that gives ``mi`` nats over ``dim`` coordinates."""
    return math.sqrt(1 - math.exp(-2 * mi / dim))


def sample(n: int, rho: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, DIM, generator=generator, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, DIM, generator=generator, dtype=torch.float64)
    return x, y


def critic(x: torch.Tensor, y: torch.Tensor, rho: float) -> torch.Tensor:
    """``f(x_i, y_j)`` for every pair: ``log p(y_j | x_i) - log p(y_j)``, (N, N)."""
    var = 1 - rho ** 2
    # |y_j - rho x_i|^2 expanded, so no (N, N, d) tensor is made.
    squared = (y ** 2).sum(-1)[None, :] - 2 * rho * x @ y.T + rho ** 2 * (x ** 2).sum(-1)[:, None]
    conditional = -squared / (2 * var) - DIM / 2 * math.log(var)
    marginal = -(y ** 2).sum(-1) / 2
    return conditional - marginal[None, :]


def estimates(mi: float, n: int, seed: int) -> tuple[float, float]:
    """(InfoNCE, JSD + log 4) averaged over ``PER_SEED`` batches of ``n`` pairs."""
    generator = torch.Generator().manual_seed(seed * 1000 + n)
    rho = rho_for(mi)
    nce, jsd = [], []
    for _ in range(PER_SEED):
        x, y = sample(n, rho, generator)
        scores = critic(x, y, rho)
        loss = F.cross_entropy(scores, torch.arange(n))
        nce.append(math.log(n) - float(loss))
        off = ~torch.eye(n, dtype=torch.bool)
        jsd.append(-float(losses.jsd_mi(scores.diagonal().float(), scores[off].float())) + math.log(4))
    return sum(nce) / len(nce), sum(jsd) / len(jsd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(_page.DOCS))
    args = parser.parse_args()
    out = Path(args.out)
    rows, points = {}, {}
    for mi in TRUE_MI:
        for n in BATCHES:
            per_seed = [estimates(mi, n, seed) for seed in SEEDS]
            nce = _page.mean_interval([a for a, _ in per_seed])
            jsd = _page.mean_interval([b for _, b in per_seed])
            rows[(mi, n)] = (nce, jsd)
            points[f"mi{mi:g}_n{n}"] = {"true_mi": mi, "log_n": math.log(n), "infonce": nce, "jsd_plus_log4": jsd}
        print(f"MI {mi:g}: " + ", ".join(f"N={n} {rows[(mi, n)][0]['mean']:.3f}" for n in BATCHES), flush=True)

    def low(s):
        return s["mean"] - s["ci95"]

    def high(s):
        return s["mean"] + s["ci95"]

    above_truth = [(mi, n) for (mi, n), (nce, _) in rows.items() if low(nce) > mi]
    above_log_n = [(mi, n) for (mi, n), (nce, _) in rows.items() if nce["mean"] > math.log(n) + 1e-9]
    saturated = [(mi, n) for (mi, n), (nce, _) in rows.items() if mi >= math.log(n) + 3]
    unsaturated = [(mi, n) for (mi, n), (nce, _) in rows.items() if math.log(n) >= mi + 3]
    near_log_n = [(mi, n) for mi, n in saturated if high(rows[(mi, n)][0]) >= math.log(n) - 0.5]
    near_truth = [(mi, n) for mi, n in unsaturated if abs(rows[(mi, n)][0]["mean"] - mi) <= 0.1 * mi]
    jsd_monotone = all(rows[(a, n)][1]["mean"] < rows[(b, n)][1]["mean"] for n in BATCHES
                       for a, b in zip(TRUE_MI, TRUE_MI[1:]))
    jsd_max = max(s["mean"] for _, s in rows.values())

    def word(ok: bool) -> str:
        return "reproduces" if ok else "does not reproduce"

    verdicts = [
        ("InfoNCE never estimates more than the true MI", word(not above_truth),
         f"No setting's 95% interval lies above the truth ({len(rows)} settings)." if not above_truth else
         f"Above the truth in {above_truth}."),
        ("InfoNCE never exceeds log N", word(not above_log_n),
         "Every estimate is at most log N (it holds for every batch, by construction of the loss)."
         if not above_log_n else f"Above log N in {above_log_n}."),
        ("when MI exceeds log N by 3 nats or more, InfoNCE saturates within 0.5 nats of log N",
         word(len(near_log_n) == len(saturated)), f"{len(near_log_n)} of {len(saturated)} such settings."),
        ("when log N exceeds MI by 3 nats or more, InfoNCE is within 10% of the truth",
         word(len(near_truth) == len(unsaturated)), f"{len(near_truth)} of {len(unsaturated)} such settings."),
        ("the JSD estimate rises with MI but saturates below log 4 = 1.386, whatever N",
         word(jsd_monotone and jsd_max <= math.log(4)),
         f"monotone in MI at every N: {jsd_monotone}; largest mean {jsd_max:.3f}."),
    ]

    lines = [f"Gaussian pairs of dimension {DIM}, true MI {', '.join(f'{m:g}' for m in TRUE_MI)} nats, batch sizes N "
             f"{', '.join(map(str, BATCHES))}, the optimal critic; {PER_SEED} batches per seed, {len(SEEDS)} seeds. "
             "Each cell: InfoNCE estimate in nats, mean ± std [95% interval] over seeds; log N in the header.", ""]
    lines += ["| true MI | " + " | ".join(f"N={n} (log N {math.log(n):.2f})" for n in BATCHES) + " |",
              "| ---: | " + " | ".join("---:" for _ in BATCHES) + " |"]
    for mi in TRUE_MI:
        cells = [f"{rows[(mi, n)][0]['mean']:.3f} ± {rows[(mi, n)][0]['std']:.3f} "
                 f"[{low(rows[(mi, n)][0]):.3f}, {high(rows[(mi, n)][0]):.3f}]" for n in BATCHES]
        lines.append(f"| {mi:g} | " + " | ".join(cells) + " |")
    lines += ["", "The JSD estimate (+ log 4) of the same batches, mean over seeds:", "",
              "| true MI | " + " | ".join(f"N={n}" for n in BATCHES) + " |",
              "| ---: | " + " | ".join("---:" for _ in BATCHES) + " |"]
    for mi in TRUE_MI:
        lines.append(f"| {mi:g} | " + " | ".join(f"{rows[(mi, n)][1]['mean']:.3f}" for n in BATCHES) + " |")
    lines.append("")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "img").mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in BATCHES:
        means = [rows[(mi, n)][0]["mean"] for mi in TRUE_MI]
        errors = [rows[(mi, n)][0]["ci95"] for mi in TRUE_MI]
        ax.errorbar(TRUE_MI, means, yerr=errors, marker="o", capsize=3, label=f"InfoNCE, N={n}")
    ax.plot(TRUE_MI, TRUE_MI, "k--", label="true MI")
    ax.set_xlabel("true mutual information (nats)")
    ax.set_ylabel("estimate (nats)")
    ax.set_title("InfoNCE with the optimal critic: bounded by the truth and by log N", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "img" / "infonce_bound.png", dpi=110)
    plt.close(fig)
    lines += ["![infonce_bound](img/infonce_bound.png)", ""]
    page = _page.write("infonce_bound", "InfoNCE is a lower bound on mutual information that cannot exceed log N "
                       "(it saturates there), while the JSD estimator of Deep InfoMax tracks MI only up to a "
                       "ceiling of log 4 (van den Oord et al. 2018; Poole et al. 2019; Hjelm et al. 2019).",
                       lines, verdicts, points, SEEDS, "python studies/infonce_bound.py", out)
    print(page)


if __name__ == "__main__":
    main()
