"""A study's page: its table, one plot per metric, the verdict in words, and the list of studies."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfsup.sweep.scores import _scale, _shown, collect, verdict, verdicts
from selfsup.sweep.study import VALUE_METRICS, Study, check_runs_match, expand


def plot(study: Study, summary: dict[str, Any], folder: Path) -> list[Path]:
    """One PNG per metric: each point's mean with its 95% interval, the floor as a dashed line (one
    across the plot when every point has the same floor, else a short one at each point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    names = list(summary["points"])
    for metric in study.metrics:
        stats_of = [summary["points"][n][metric] for n in names]
        if all(s["mean"] is None for s in stats_of):
            continue
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.2))
        scale = _scale(metric)
        shown = [x for x, s in enumerate(stats_of) if s["mean"] is not None]  # a point without results: no dot at 0
        means = [scale * stats_of[x]["mean"] for x in shown]
        errors = [scale * (stats_of[x]["ci95"] or 0) for x in shown]
        ax.errorbar(shown, means, yerr=errors, fmt="o", capsize=4, color="#1f6feb")
        floors = [s["floor"] for s in stats_of if s["floor"] is not None]
        if floors and max(floors) - min(floors) <= 1e-9 * max(1.0, abs(max(floors))):
            ax.axhline(scale * floors[0], color="#888", linestyle="--", label="random init (floor)")
            ax.legend(loc="best", fontsize=8)
        elif floors:  # points of other networks or data: each its own floor, beside it
            xs = [x for x, s in enumerate(stats_of) if s["floor"] is not None]
            ax.hlines([scale * stats_of[x]["floor"] for x in xs], [x - 0.3 for x in xs], [x + 0.3 for x in xs],
                      color="#888", linestyle="--", label="random init (each point's floor)")
            ax.legend(loc="best", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(metric if metric in VALUE_METRICS else f"{metric} (%)")
        counts = [stats_of[x]["n"] for x in shown]  # the runs that finished, not the planned seeds
        over = (f"{counts[0]} seeds" if len(set(counts)) == 1
                else "each point's seeds (" + ", ".join(str(c) for c in counts) + ")")
        ax.set_title(f"{study.name}: {metric}\nmean and 95% interval over {over}", fontsize=9)
        fig.tight_layout()
        path = folder / f"{study.name}_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def page(study: Study, summary: dict[str, Any], pictures: Sequence[Path], page_path: Path,
         commit: str | None = None) -> str:
    """The study's page (markdown): claim, setting, verdict, table, pictures, command."""
    word, sentence = verdict(study, summary)
    lines = [f"# {study.name.replace('_', ' ').capitalize()}", ""]
    if study.claim:
        lines += [f"**Claim.** {study.claim}", ""]
    lines += [f"**Verdict: {word}.** {sentence}", ""]
    if len(study.verdicts) > 1:
        lines += [f"- {claim or 'Claim'}: **{each}.** {text}" for claim, each, text in verdicts(study, summary)]
        lines.append("")
    common = " ".join(f"`{o}`" for o in study.overrides) or "none"
    own_recipes = any(p.recipe for p in study.points)
    recipe = ("Each point's recipe in its row" if own_recipes and all(p.recipe for p in study.points)
              else f"Recipe `{study.recipe}`" + (" unless a row names its own" if own_recipes else "")
              if study.recipe else "No recipe (the defaults)" + (" unless a row names one" if own_recipes else ""))
    own = [p for p in study.points if not study.uniform_seeds and study.seeds_of(p) != study.seeds]
    shape = (f"{len(study.points)} points x {len(study.seeds)} seeds ({', '.join(map(str, study.seeds))})"
             + "".join(f"; {p.name}: {len(study.seeds_of(p))} seeds ({', '.join(map(str, study.seeds_of(p)))})"
                       for p in own))
    lines += [f"{recipe}, overrides {common}; {shape}. Each cell: mean ± sample std [95% interval of the mean], "
              f"accuracies in percent; *floor*, after each cell that has one: the mean over the same seeds of the same "
              f"evaluation of the same encoder at random initialisation (for fine-tuning: the same network trained "
              f"from scratch on the same labels).", ""]
    head = ["point"] + (["recipe"] if own_recipes else []) + ["overrides"] + [f"{m}" for m in study.metrics]
    fixed = 3 if own_recipes else 2
    lines += ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * fixed + ["---:"] * (len(head) - fixed)) + " |"]
    for point in study.points:
        cells = [point.name.replace("|", "\\|")]
        if own_recipes:
            cells.append(f"`{point.recipe or study.recipe}`" if point.recipe or study.recipe else "–")
        cells.append(" ".join(f"`{o}`" for o in point.overrides) or "–")
        for metric in study.metrics:
            s = summary["points"][point.name][metric]
            if s["mean"] is None:
                cell = "–"
            elif s["std"] is None:
                cell = f"{_shown(metric, s['mean'])} (n=1)"
            else:
                cell = (f"{_shown(metric, s['mean'])} ± {_shown(metric, s['std'])} "
                        f"[{_shown(metric, s['mean'] - s['ci95'])}, {_shown(metric, s['mean'] + s['ci95'])}]")
            planned = len(study.seeds_of(point))
            if s["mean"] is not None and 1 < s["n"] < planned:  # fewer runs than the header's seeds
                cell += f" (n={s['n']} of {planned})"
            if s.get("floor") is not None:
                cell += f"; *floor* {_shown(metric, s['floor'])}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if summary["missing"]:
        lines += [f"*{len(summary['missing'])} run(s) have no results (not run yet, or stopped on a failure): the "
                  f"claims they touch are incomplete.*", ""]
    for picture in pictures:
        relative = picture.relative_to(page_path.parent) if picture.is_relative_to(page_path.parent) else picture
        lines += [f"![{picture.stem}]({relative.as_posix()})", ""]
    if study.notes:
        lines += [study.notes, ""]
    lines += ["Reproduce:", "", "```bash", study.source if study.source.startswith("selfsup")
              else f"selfsup sweep {study.source}", "```", ""]
    if commit:
        lines += [f"Generated by `selfsup sweep` from the runs' files (selfsup commit {commit}).", ""]
    return "\n".join(lines)


def _floor_rule_predates_pairing(summary: dict[str, Any]) -> bool:
    """Whether a summary judged claims against a floor before each seed was compared with its own
    floor: its entries have floors but no paired gains, and a verdict names a floor."""
    entries = [entry for metrics in summary.get("points", {}).values() for entry in metrics.values()
               if isinstance(entry, dict)]
    unpaired = any(entry.get("floor") is not None and "gain" not in entry for entry in entries)
    return unpaired and any("'s floor" in str(v.get("text", "")) for v in summary.get("verdicts", []))


def study_list(folder: str | Path) -> str:
    """The list of studies (markdown) from the ``<name>.json`` summaries in ``folder``: each study's
    page, claim, verdict and runs with results ("9 of 10" where some are missing); a summary whose
    floor verdicts predate the paired rule says so."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        summary = json.loads(path.read_text())
        claim = " ".join(str(summary.get("claim", "")).split()).replace("|", "\\|")
        planned = summary.get("runs") or len(summary.get("points", {})) * len(summary.get("seeds", []))
        finished = planned - len(summary.get("missing", []))
        runs = planned if finished == planned else f"{finished} of {planned}"
        verdict = f"**{summary['verdict']}**"
        if _floor_rule_predates_pairing(summary):
            verdict += (" (its claims over the floor were judged by the scores' interval against the mean floor, "
                        "before each seed was paired with its own floor: to be rerun)")
        rows.append(f"| [{summary['name']}]({path.stem}.md) | {claim} | {verdict} | {runs} |")
    if not rows:
        return "No study has run yet.\n"
    return "\n".join(["| study | claim | verdict | runs |", "| --- | --- | --- | ---: |", *rows]) + "\n"


def summarise(study: Study, page_path: Path | None = None, commit: str | None = None) -> dict[str, Any]:
    """Collect, plot and write the summary: ``<study folder>/summary.json`` and the page
    (``page_path``, default ``<study folder>/README.md``) with its pictures beside it. With a
    ``page_path``, the summary is also copied beside the page (``<name>.json``) and the folder's
    study list (``list.md``, :func:`study_list`) written again."""
    check_runs_match(study)
    summary = collect(study)
    word, sentence = verdict(study, summary)
    summary.update({"name": study.name, "claim": study.claim, "verdict": word, "verdict_text": sentence,
                    "verdicts": [{"claim": c, "verdict": w, "text": t} for c, w, t in verdicts(study, summary)],
                    "seeds": study.seeds, "runs": len(expand(study)),
                    "point_seeds": {p.name: study.seeds_of(p) for p in study.points}, "metrics": study.metrics, "recipe": study.recipe,
                    "overrides": study.overrides, "generated": time.strftime("%Y-%m-%d %H:%M:%S")})
    study.folder.mkdir(parents=True, exist_ok=True)
    (study.folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    target = page_path or study.folder / "README.md"
    pictures = plot(study, summary, target.parent / "img")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page(study, summary, pictures, target, commit), encoding="utf-8")
    if page_path is not None:
        (target.parent / f"{study.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
        (target.parent / "list.md").write_text(study_list(target.parent), encoding="utf-8")
    summary["page"] = str(target)
    return summary
