"""The runs' scores collected per point and metric, with intervals, and each claim's verdict."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from selfsup.errors import DataError
from selfsup.sweep.study import VALUE_METRICS, Study, expand


def t_quantile(count: int) -> float:
    """Student's t quantile 0.975 with ``count - 1`` degrees of freedom (the 95% interval's factor)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, count - 1))


def statistics(values: Sequence[float]) -> dict[str, float | int | None]:
    """``mean``, sample ``std`` (n - 1), ``ci95`` (half-width of the 95% interval of the mean,
    Student's t) and ``n``; std and ci95 are None for a single value."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": None, "ci95": None, "n": 1}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "std": std, "ci95": t_quantile(n) * std / math.sqrt(n), "n": n}


def _scores(results: dict[str, Any], metric: str) -> tuple[float | None, float | None]:
    """(score, floor) of ``metric`` in a run's results."""
    evaluations = results.get("evaluations") or {}
    if metric in VALUE_METRICS:
        where = VALUE_METRICS[metric]
        entry: Any = results
        for key in where[:-1]:
            entry = (entry or {}).get(key) if isinstance(entry, dict) else None
        if not isinstance(entry, dict):
            return None, None
        floor = (entry.get("random_init") or {}).get(where[-1]) if where[0] == "evaluations" else None
        return entry.get(where[-1]), floor
    if metric.startswith("finetune_"):
        fractions = (evaluations.get("finetune") or {}).get("fractions") or {}
        wanted = float(metric.removeprefix("finetune_"))
        row = next((r for key, r in fractions.items() if abs(float(key) - wanted) < 1e-12), None)
        return (None, None) if row is None else (row.get("mean"), row.get("scratch_mean"))
    entry = evaluations.get(metric) or {}
    return entry.get("accuracy"), (entry.get("random_init") or {}).get("accuracy")


def collect(study: Study) -> dict[str, Any]:
    """Per point: per metric the statistics over seeds, and the floor's; plus what is missing."""
    points, missing = {}, []
    for point in study.points:
        per_metric = {}
        runs = [run for run in expand(study) if run.point == point]
        results = []
        for run in runs:
            path = run.folder / "results.json"
            if not path.is_file():
                missing.append(str(run.folder))
                continue
            try:
                results.append(json.loads(path.read_text()))
            except json.JSONDecodeError as error:
                raise DataError(f"{path} is not valid JSON ({error}); rerun that run (delete its folder)") from None
            evaluations_dir = run.folder / "evaluations"
            for extra in sorted(evaluations_dir.glob("*.json")) if evaluations_dir.is_dir() else []:
                try:
                    results[-1].setdefault("evaluations", {})[extra.stem] = json.loads(extra.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    raise DataError(f"{extra} is not valid JSON ({error}); run that evaluation again (delete the "
                                    f"file)") from None
        for metric in study.metrics:
            pairs = [_scores(r, metric) for r in results]
            scores = [s for s, _ in pairs if s is not None]
            floors = [f for _, f in pairs if f is not None]
            # Each run over its own floor (its own random network, its own scratch run): the paired gain.
            gains = [s - f for s, f in pairs if s is not None and f is not None]
            per_metric[metric] = {**statistics(scores), "values": scores, "floor": statistics(floors)["mean"],
                                  "floors": floors, "gain": statistics(gains)}
        points[point.name] = per_metric
    return {"points": points, "missing": missing}


def verdicts(study: Study, summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(claim, word, sentence)`` of each of the study's verdicts (:func:`verdict_of`)."""
    return [(str(spec.get("claim", "")).strip(), *verdict_of(spec, study, summary)) for spec in study.verdicts]


def verdict(study: Study, summary: dict[str, Any]) -> tuple[str, str]:
    """``(word, sentence)`` of the whole study: its one verdict, or of several, ``reproduces`` when
    all do, ``does not reproduce`` when none does, otherwise ``partly reproduces``, with each
    claim's sentence."""
    found = verdicts(study, summary)
    if len(found) == 1:
        return found[0][1], found[0][2]
    words = [word for _, word, _ in found]
    if "incomplete" in words:
        return "incomplete", "Some points have no result yet."
    if all(word == "reproduces" for word in words):
        word = "reproduces"
    elif all(word == "does not reproduce" for word in words):
        word = "does not reproduce"
    else:
        word = "partly reproduces"
    held = sum(w == "reproduces" for w in words)
    return word, f"{held} of {len(found)} claims reproduce with separated intervals; each is below."


def verdict_of(spec: dict[str, Any], study: Study, summary: dict[str, Any]) -> tuple[str, str]:
    """``(word, sentence)``: whether the claim of one verdict ``spec`` reproduces at this scale.

    ``best: P`` reproduces when P has the highest mean and its 95% interval lies above every other
    point's; partly when it has the highest mean but the intervals overlap; does not otherwise.
    ``order: [P, Q, ...]``: the means in that order (partly), each interval above the next (reproduces).
    ``better: P, than: [Q, ...]``: P above each (partly), with separated intervals (reproduces).
    ``above_floor: P``: paired, each seed's run over its own floor (the same evaluation of its own
    network at random initialisation, or its own scratch run on the same labels): the mean gain above
    zero (partly), the gain's whole 95% interval above zero (reproduces).
    ``point: P, beats: M2``: P's mean on the verdict's metric above its mean on M2 (partly), with
    separated intervals (reproduces).
    A point with one run has no interval: its claims reproduce at most partly.
    """
    if not spec:
        return "no verdict", "The study states no claim to test."
    metric = spec.get("metric", study.metrics[0])
    points = summary["points"]
    if "above_floor" in spec:
        name = spec["above_floor"]
        entry = points[name][metric]
        gain = entry.get("gain")
        if gain is None:  # a summary written before the paired gains: the mean floor, its spread unknown
            gain = {"mean": None if entry["mean"] is None or entry["floor"] is None else entry["mean"] - entry["floor"],
                    "ci95": None}
        # The paired comparison: each seed's score over its own floor, the gain's interval above zero.
        stats_of = {name: {"mean": gain["mean"], "ci95": gain["ci95"], "shown": entry["mean"]},
                    f"{name}'s floor": {"mean": 0.0 if gain["mean"] is not None else None, "ci95": 0.0,
                                        "shown": entry["floor"]}}
        pairs = [(name, f"{name}'s floor")]
    elif "beats" in spec:
        name, other = spec["point"], spec["beats"]
        stats_of = {f"{name} {metric}": points[name][metric], f"{name} {other}": points[name][other]}
        pairs = [(f"{name} {metric}", f"{name} {other}")]
    else:
        stats_of = {name: points[name][metric] for name in points}
        if "best" in spec:
            pairs = [(spec["best"], other) for other in stats_of if other != spec["best"]]
        elif "order" in spec:
            pairs = list(zip(spec["order"], spec["order"][1:]))
        else:
            pairs = [(spec["better"], other) for other in spec["than"]]
    if any(stats_of[label]["mean"] is None for pair in pairs for label in pair):
        return "incomplete", f"Some points have no {metric} result (or floor) yet."

    sign = -1.0 if spec.get("lower") else 1.0  # lower is better: compare the negated values

    def above(a: str, b: str) -> tuple[bool, bool]:
        """(mean better, interval beyond) of a over b. One run has no interval: never separated."""
        sa, sb = stats_of[a], stats_of[b]
        if sa["ci95"] is None or sb["ci95"] is None:
            return sign * sa["mean"] > sign * sb["mean"], False
        low = sign * sa["mean"] - sa["ci95"]
        high = sign * sb["mean"] + sb["ci95"]
        return sign * sa["mean"] > sign * sb["mean"], low > high

    checks = [above(a, b) for a, b in pairs]
    means = all(m for m, _ in checks)
    separated = all(s for _, s in checks)
    unit = "" if metric in VALUE_METRICS else "%"
    described = "; ".join(f"{a} {_shown(metric, stats_of[a].get('shown', stats_of[a]['mean']))}{unit} vs {b} "
                          f"{_shown(metric, stats_of[b].get('shown', stats_of[b]['mean']))}{unit}" for a, b in pairs)
    if "above_floor" in spec:
        gain = stats_of[spec["above_floor"]]
        described += (f"; gain over each seed's own floor {_shown(metric, gain['mean'])}"
                      + (f" ± {_shown(metric, gain['ci95'])}{unit}" if gain["ci95"] is not None
                         else f"{unit}, one run: no interval"))
    if means and separated:
        return "reproduces", f"On {metric}, every comparison the claim makes holds with separated 95% intervals ({described})."
    if means:
        return "partly reproduces", (f"On {metric}, the means are ordered as claimed but some 95% intervals overlap "
                                     f"({described}).")
    relation = "below" if spec.get("lower") else "above"
    wrong = [f"{a} is not {relation} {b}" for (a, b), (m, _) in zip(pairs, checks) if not m]
    return "does not reproduce", f"On {metric}, {', '.join(wrong)} ({described})."


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _shown(metric: str, value: float | None) -> str:
    """A metric's value as the page shows it: accuracies in percent, other numbers as they are."""
    if metric not in VALUE_METRICS:
        return _percent(value)
    return "–" if value is None else f"{value:.4g}"


def _scale(metric: str) -> float:
    return 1.0 if metric in VALUE_METRICS else 100.0
