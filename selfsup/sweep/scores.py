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


def _finite(value: Any) -> float | None:
    """A score as a float, None where the run has none or it is not a finite number (NaN: a failed run)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


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
                results[-1]["_seed"] = run.seed
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
            pairs = [(r["_seed"], *map(_finite, _scores(r, metric))) for r in results]
            scores = [s for _, s, _ in pairs if s is not None]
            floors = [f for _, _, f in pairs if f is not None]
            # Each run over its own floor (its own random network, its own scratch run): the paired gain.
            gains = [s - f for _, s, f in pairs if s is not None and f is not None]
            # Planned runs without a finite score (no results.json: not run, or stopped on a NaN; the metric absent
            # or not finite): a verdict on the others would leave out exactly the runs that failed.
            absent = sorted({run.seed for run in runs} - {seed for seed, s, _ in pairs if s is not None})
            per_metric[metric] = {**statistics(scores), "values": scores, "seeds": [seed for seed, s, _ in pairs
                                                                                    if s is not None],
                                  "floor": statistics(floors)["mean"], "floors": floors,
                                  "floor_seeds": [seed for seed, _, f in pairs if f is not None],
                                  "gain": statistics(gains), "absent": absent}
        points[point.name] = per_metric
    return {"points": points, "missing": missing}


def verdicts(study: Study, summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(claim, word, sentence)`` of each of the study's verdicts (:func:`verdict_of`)."""
    return [(str(spec.get("claim", "")).strip(), *verdict_of(spec, study, summary)) for spec in study.verdicts]


def verdict(study: Study, summary: dict[str, Any]) -> tuple[str, str]:
    """``(word, sentence)`` of the whole study: its one verdict, or of several, ``reproduces`` when
    all do, ``partly reproduces`` when some do and not all, and when none does ``does not reproduce``
    if one is reversed, else ``inconclusive``; with each claim's sentence."""
    found = verdicts(study, summary)
    if len(found) == 1:
        return found[0][1], found[0][2]
    words = [word for _, word, _ in found]
    if "incomplete" in words:
        return "incomplete", "Some planned runs have no result; each claim says which."
    held = sum(w == "reproduces" for w in words)
    return study_word(words), (f"{held} of {len(found)} claims reproduce (the 95% interval of each difference "
                               f"beyond zero); each is below.")


def study_word(words: Sequence[str]) -> str:
    """A study's word from its claims' words: ``reproduces`` when all do, ``partly reproduces`` when some do,
    and when none does ``does not reproduce`` if one is refuted, else ``inconclusive``."""
    held = sum(w == "reproduces" for w in words)
    if held == len(words):
        return "reproduces"
    if held:
        return "partly reproduces"
    return "does not reproduce" if "does not reproduce" in words else "inconclusive"


MIN_RUNS = 3
"""Seeds a comparison needs before it is judged: with two, a 95% interval's t factor is 12.7 and a spread of
zero (two equal counts) would make any difference look certain."""


def verdict_of(spec: dict[str, Any], study: Study, summary: dict[str, Any]) -> tuple[str, str]:
    """``(word, sentence)``: whether the claim of one verdict ``spec`` reproduces at this scale.

    Every claim is a set of comparisons "a above b" (below, with ``lower: true``): ``best: P`` (P above
    every other point), ``order: [P, Q, ...]`` (each above the next), ``better: P, than: [Q, ...]``,
    ``above_floor: P`` (each seed's run over its own floor: the same evaluation of its own network at random
    initialisation, or its own scratch run on the same labels) and ``point: P, beats: M2`` (P's metric
    above its M2). One rule judges each: the differences a - b of the runs that share a seed (the points
    of a study run the same seeds; a floor and a second metric belong to their run), their mean and the
    95% interval of that mean (Student's t). The comparison holds when the whole interval lies beyond
    zero in the claimed direction, is reversed when it lies beyond zero the other way, and is open
    otherwise. The claim ``reproduces`` when every comparison holds, ``does not reproduce`` when one is
    reversed, and is ``inconclusive`` otherwise (its sentence says which way the means lean). A
    comparison over fewer than :data:`MIN_RUNS` seeds is open; a planned run without a finite score (not
    run, stopped on a NaN) makes the claim ``incomplete``, since leaving failed runs out would bias it.
    """
    if not spec:
        return "no verdict", "The study states no claim to test."
    metric = spec.get("metric", study.metrics[0])
    points = summary["points"]
    point_seeds = summary.get("point_seeds") or {}

    def seeded(name: str, key: str = "values", seeds_key: str = "seeds", at: str | None = None) -> dict[int, float]:
        entry = points[name][at or metric]
        values = entry.get(key) or []
        seeds = entry.get(seeds_key)
        if seeds is None:  # a summary written before seeds were recorded: the planned seeds, when they match
            planned = point_seeds.get(name) or summary.get("seeds") or []
            seeds = planned if len(planned) == len(values) else list(range(len(values)))
        return dict(zip(seeds, values))

    if "above_floor" in spec:
        name = spec["above_floor"]
        comparisons = [(name, f"{name}'s floor", seeded(name), seeded(name, "floors", "floor_seeds"))]
        involved = [(name, metric)]
    elif "beats" in spec:
        name, other = spec["point"], spec["beats"]
        comparisons = [(f"{name} {metric}", f"{name} {other}", seeded(name), seeded(name, at=other))]
        involved = [(name, metric), (name, other)]
    else:
        if "best" in spec:
            pairs = [(spec["best"], other) for other in points if other != spec["best"]]
        elif "order" in spec:
            pairs = list(zip(spec["order"], spec["order"][1:]))
        else:
            pairs = [(spec["better"], other) for other in spec["than"]]
        comparisons = [(a, b, seeded(a), seeded(b)) for a, b in pairs]
        involved = [(name, metric) for pair in pairs for name in pair]
    absent = {f"{name} ({at}) seed {seed}" for name, at in involved for seed in points[name][at].get("absent", [])}
    if absent or any(points[name][at]["mean"] is None for name, at in involved):
        listed = ", ".join(sorted(absent)[:4]) + (" ..." if len(absent) > 4 else "")
        return "incomplete", (f"Planned runs have no finite {metric} result (not run yet, or failed): "
                              f"{listed or 'a whole point'}; a verdict without them would leave out the runs "
                              f"that failed.")

    sign = -1.0 if spec.get("lower") else 1.0  # lower is better: compare the negated values
    unit = "" if metric in VALUE_METRICS else "%"
    outcomes, described = [], []
    for a, b, values_a, values_b in comparisons:
        shared = sorted(set(values_a) & set(values_b))
        differences = [values_a[seed] - values_b[seed] for seed in shared]
        stats = statistics(differences)
        shown_a = _shown(metric, statistics([values_a[k] for k in shared])["mean"])
        shown_b = _shown(metric, statistics([values_b[k] for k in shared])["mean"])
        text = f"{a} {shown_a}{unit} vs {b} {shown_b}{unit}, difference {_signed(metric, stats['mean'])}"
        if len(shared) < MIN_RUNS or stats["ci95"] is None:
            outcomes.append(("open", sign * (stats["mean"] or 0.0)))
            described.append(f"{text} over {len(shared)} seed{'s' * (len(shared) != 1)}: too few to judge "
                             f"(at least {MIN_RUNS})")
            continue
        low, high = sign * stats["mean"] - stats["ci95"], sign * stats["mean"] + stats["ci95"]
        outcomes.append(("holds" if low > 0 else "reversed" if high < 0 else "open", sign * stats["mean"]))
        described.append(f"{text} ± {_shown(metric, stats['ci95'])}{unit} over {len(shared)} paired seeds")
    details = "; ".join(described)
    relation = "below" if spec.get("lower") else "above"
    if all(outcome == "holds" for outcome, _ in outcomes):
        return "reproduces", (f"On {metric}, every comparison holds: each difference's 95% interval lies "
                              f"{relation} zero ({details}).")
    reversed_ = [f"{a} is {'above' if relation == 'below' else 'below'} {b}"
                 for (a, b, _, _), (outcome, _) in zip(comparisons, outcomes) if outcome == "reversed"]
    if reversed_:
        return "does not reproduce", (f"On {metric}, {', '.join(reversed_)}, the 95% interval of the difference "
                                      f"beyond zero the other way ({details}).")
    leans = [lean for _, lean in outcomes]
    lean = ("the means lean as claimed" if all(x > 0 for x in leans) else
            "the means lean against the claim" if any(x < 0 for x in leans) else "the means are level")
    return "inconclusive", f"On {metric}, some difference's 95% interval contains zero ({lean}): {details}."


def _signed(metric: str, value: float | None) -> str:
    shown = _shown(metric, value)
    return shown if value is None or value < 0 else f"+{shown}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _shown(metric: str, value: float | None) -> str:
    """A metric's value as the page shows it: accuracies in percent, other numbers as they are."""
    if metric not in VALUE_METRICS:
        return _percent(value)
    return "–" if value is None else f"{value:.4g}"


def _scale(metric: str) -> float:
    return 1.0 if metric in VALUE_METRICS else 100.0
