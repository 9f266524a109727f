"""Sweeps: grids of overrides x seeds of ordinary runs, resumable, summarised with error bars and a verdict.

A study is a YAML file (``studies/*.yaml``) or a command line::

    selfsup sweep studies/projection_head.yaml
    selfsup sweep recipes/simclr_fashion_mnist.yaml method_args.temperature=0.1,0.2,0.5 --seeds 3

Each grid point x seed is an ordinary ``selfsup pretrain`` run in ``<out>/<point>/seed<k>`` (its own
``results.json``, checkpoint and page), so a sweep is resumable for free: a finished run is skipped,
a killed one is continued with ``--resume`` (exactly, as any run), a new one started. Runs go one at
a time by default (``--jobs N`` for more), or to a cluster through submitit (``--executor slurm``),
the scheduler library the DINO and MoCo v3 code bases use. The summary reads the runs' files only:
per point and metric the mean, the sample standard deviation and the 95% interval of the mean
(Student's t), beside the floor (the same evaluation at random initialisation), one plot per metric
with the intervals as error bars, and the claim's verdict in words.

The study file::

    name: projection_head
    claim: "A nonlinear projection head improves the representation before it (SimCLR section 4.2)."
    recipe: recipes/simclr_fashion_mnist.yaml
    overrides: [data.max_samples=8192, train.epochs=8]      # every run
    points:                                                  # or grid: {key: [values], ...} (all combinations)
      - {name: nonlinear, overrides: [method_args.proj_hidden_dim=512]}
      - {name: linear, overrides: [...]}
    seeds: 3                                                 # or a list [0, 1, 2]
    metrics: [knn, linear, fewshot_5way_1shot]               # the first one decides the verdict
    finetune: [0.01]                                         # optional: 1%-label fine-tuning of every run
    verdict: {best: nonlinear}                               # or {order: [a, b, c]} or {better: a, than: [b, c]}
                                                             # (+ metric: M, lower: true where lower is better)
                                                             # or {above_floor: a}: a's interval above its floor
                                                             # or {point: a, beats: M2}: a's metric above its M2
                                                             # or a list of them, each with its own claim: text
    finetune_steps: 100                                      # optional: fine-tuning steps (default 200)
    runs: other_study                                        # optional: share that study's run folders

A point may name its own ``recipe`` (``{name: rotation, recipe: recipes/rotation_fashion_mnist.yaml}``),
for studies that compare methods each at its own recipe, and its own ``seeds`` (``{name: a, seeds: 8}``:
more seeds where a claim's intervals need them, without rerunning the other points). ``runs`` lets two studies read (and finish)
the same runs, e.g. one summarising the frozen evaluations and one adding fine-tuning to them.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError, DataError

METRICS = ("linear", "knn", "fewshot_5way_1shot", "fewshot_5way_5shot", "bank_knn", "linear_projection",
           "knn_projection")
"""Accuracies a sweep can summarise (besides ``finetune_<fraction>`` when the study fine-tunes)."""
VALUE_METRICS = {"feature_std": ("evaluations", "collapse", "feature_std"),
                 "effective_rank": ("evaluations", "collapse", "effective_rank"),
                 "loss_spikes": ("training", "loss_spikes"),
                 "grad_norm_spikes": ("training", "grad_norm_spikes"),
                 "grad_norm_peak": ("training", "grad_norm_peak"),
                 "tau": ("evaluations", "temporal", "tau"),
                 "same_video": ("evaluations", "temporal", "same_video@1"),
                 "alignment_tau": ("evaluations", "temporal", "alignment_tau"),
                 "alignment_error": ("evaluations", "temporal", "alignment_error"),
                 "task_alignment_tau": ("evaluations", "temporal", "task_alignment_tau"),
                 "task_alignment_error": ("evaluations", "temporal", "task_alignment_error"),
                 "j_and_f": ("evaluations", "propagation", "j_and_f"),
                 "j_and_f_lab": ("evaluations", "propagation", "baselines", "lab", "j_and_f"),
                 "j_and_f_copy": ("evaluations", "propagation", "baselines", "copy", "j_and_f"),
                 "pck": ("evaluations", "propagation", "pck@0.1"),
                 "pck_lab": ("evaluations", "propagation", "baselines", "lab", "pck@0.1"),
                 "pck1": ("evaluations", "correspondence", "pck@1"),
                 "pck3": ("evaluations", "correspondence", "pck@3"),
                 "pck5": ("evaluations", "correspondence", "pck@5"),
                 "pck3_raw": ("evaluations", "correspondence", "raw_pixels", "pck@3")}
"""Other numbers a sweep can summarise, where they are in ``results.json``: not fractions, shown as
they are. A verdict on a metric where lower is better says ``lower: true``."""
STUDY_KEYS = {"name", "claim", "recipe", "overrides", "grid", "points", "seeds", "metrics", "finetune", "verdict",
              "notes", "out", "runs", "finetune_steps"}
VERDICT_KEYS = {"best", "order", "better", "than", "above_floor", "point", "beats", "metric", "lower", "claim"}
VERDICT_KINDS = ({"best"}, {"order"}, {"better", "than"}, {"above_floor"}, {"point", "beats"})


@dataclass(frozen=True)
class Point:
    """One grid point: a name and the overrides that make it."""

    name: str
    overrides: tuple[str, ...]
    recipe: str | None = None
    """The point's own recipe (else the study's)."""
    seeds: tuple[int, ...] | None = None
    """The point's own seeds (else the study's)."""

    @property
    def slug(self) -> str:
        """The point's folder name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("_") or "point"


@dataclass
class Study:
    """A claim, the runs that test it, and how they are read (see the module docstring)."""

    name: str
    recipe: str | None
    points: list[Point]
    seeds: list[int]
    claim: str = ""
    overrides: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["knn", "linear", "fewshot_5way_1shot"])
    finetune: list[float] = field(default_factory=list)
    finetune_steps: int | None = None
    verdict: dict[str, Any] | list[dict[str, Any]] = field(default_factory=dict)
    notes: str = ""
    out: Path = Path("runs/sweeps")
    runs: str | None = None
    """Another study's name whose run folders this one shares (None: its own)."""
    source: str = ""
    """How the study was given: the YAML file, or the command line."""

    @property
    def folder(self) -> Path:
        """Where the summary goes: ``<out>/<name>``."""
        return self.out / self.name

    @property
    def runs_folder(self) -> Path:
        """Where the runs are: ``<out>/<runs or name>``."""
        return self.out / (self.runs or self.name)

    def seeds_of(self, point: Point) -> list[int]:
        """The seeds ``point`` runs: its own, else the study's."""
        return list(point.seeds) if point.seeds is not None else self.seeds

    @property
    def uniform_seeds(self) -> bool:
        """Whether every point runs the study's seeds."""
        return all(self.seeds_of(p) == self.seeds for p in self.points)

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        """The verdict specs as a list (one study may test several claims)."""
        return [self.verdict] if isinstance(self.verdict, dict) else list(self.verdict)


@dataclass(frozen=True)
class Run:
    """One ordinary run of a sweep."""

    point: Point
    seed: int
    folder: Path
    overrides: tuple[str, ...]

    def status(self) -> str:
        """``done`` (results.json written), ``resume`` (a checkpoint, no results) or ``new``."""
        if (self.folder / "results.json").is_file():
            return "done"
        return "resume" if (self.folder / "checkpoints" / "last.ckpt").is_file() else "new"


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{where}: seeds must be a count (3) or a list of integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{where}: seeds must be at least 1, got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: seeds repeat: {value}")
        return list(value)
    raise ConfigError(f"{where}: seeds must be a count (3) or a list of integers, got {value!r}")


def _value_text(value: Any) -> str:
    """A YAML value as an override's right-hand side."""
    if isinstance(value, (list, dict)):
        return json.dumps(value).replace(" ", "")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def grid_points(grid: dict[str, Sequence[Any]]) -> list[Point]:
    """Every combination of the grid's values, in the order given, each a :class:`Point` named
    ``key=value,key=value``.

    Examples:
        >>> [p.name for p in grid_points({"a": [1, 2], "b": ["x"]})]
        ['a=1,b=x', 'a=2,b=x']
    """
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[key] for key in keys)):
        overrides = tuple(f"{key}={_value_text(value)}" for key, value in zip(keys, values))
        points.append(Point(",".join(overrides), overrides))
    return points


def load_study(path: str | Path, out: str | Path | None = None) -> Study:
    """Read a study file (see the module docstring); every key is checked and named when wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a study is a mapping of keys ({', '.join(sorted(STUDY_KEYS))})")
    unknown = set(spec) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a study has {', '.join(sorted(STUDY_KEYS))}")
    if ("grid" in spec) == ("points" in spec):
        raise ConfigError(f"{path}: give either grid (every combination of values) or points (named overrides)")
    if "grid" in spec:
        grid = spec["grid"]
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError(f"{path}: grid must map each key to a non-empty list of values, got {grid!r}")
        points = grid_points(grid)
    else:
        points = []
        for k, item in enumerate(spec["points"] or []):
            if (not isinstance(item, dict) or not isinstance(item.get("name"), str)
                    or set(item) - {"name", "overrides", "recipe", "seeds"}):
                raise ConfigError(f"{path}: points[{k}] must be {{name: ..., overrides: [key=value, ...]}} (and an "
                                  f"optional recipe and seeds), got {item!r}")
            seeds = tuple(_seeds(item["seeds"], f"{path}: points[{k}]")) if "seeds" in item else None
            points.append(Point(item["name"], tuple(_overrides(item.get("overrides") or [], f"{path}: points[{k}]")),
                                recipe=item.get("recipe"), seeds=seeds))
        if not points:
            raise ConfigError(f"{path}: points is empty")
    if len({p.slug for p in points}) != len(points):
        raise ConfigError(f"{path}: two points share a folder name: {[p.name for p in points]}")
    verdict = spec.get("verdict") or {}
    if not isinstance(verdict, (dict, list)) or (isinstance(verdict, list) and not all(isinstance(v, dict) for v in verdict)):
        raise ConfigError(f"{path}: verdict must be a mapping or a list of mappings, got {verdict!r}")
    study = Study(name=str(spec.get("name") or path.stem), recipe=spec.get("recipe"), points=points,
                  seeds=_seeds(spec.get("seeds", 1), str(path)), claim=str(spec.get("claim", "")).strip(),
                  overrides=_overrides(spec.get("overrides") or [], f"{path}: overrides"),
                  metrics=list(spec.get("metrics") or ["knn", "linear", "fewshot_5way_1shot"]),
                  finetune=[float(f) for f in spec.get("finetune") or []], verdict=verdict, runs=spec.get("runs"),
                  finetune_steps=spec.get("finetune_steps"),
                  notes=str(spec.get("notes", "")).strip(), out=Path(out or spec.get("out") or "runs/sweeps"),
                  source=str(path))
    _check(study, str(path))
    return study


def _overrides(values: Any, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) and "=" in v for v in values):
        raise ConfigError(f"{where}: overrides must be a list of key=value strings, got {values!r}")
    return list(values)


def study_from_command_line(recipe: str, items: Sequence[str], seeds: int, out: str | Path | None = None) -> Study:
    """``RECIPE key=a,b,c other=x`` as a study: a key with commas is a grid axis, one without is
    set in every run. (A value that is itself a list, ``key=[1,2]``, is one value.)"""
    grid: dict[str, list[str]] = {}
    common = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r} is not of the form key=value (a grid axis: key=a,b,c)")
        if "," in value and not value.startswith(("[", "{")):
            grid[key] = value.split(",")
        else:
            common.append(item)
    points = grid_points(grid) if grid else [Point("recipe", ())]
    name = Path(recipe).stem + ("_" + "_".join(k.split(".")[-1] for k in grid) if grid else "")
    study = Study(name=name, recipe=recipe, points=points, seeds=list(range(seeds)), overrides=common,
                  out=Path(out or "runs/sweeps"), source=shlex.join(["selfsup", "sweep", recipe, *items,
                                                                      "--seeds", str(seeds)]))
    _check(study, "selfsup sweep")
    return study


def _check(study: Study, where: str) -> None:
    allowed = set(METRICS) | set(VALUE_METRICS) | {f"finetune_{f:g}" for f in study.finetune}
    bad = [m for m in study.metrics if m not in allowed]
    if bad:
        raise ConfigError(f"{where}: unknown metrics {bad}; choose among {sorted(allowed)}")
    names = {p.name for p in study.points}
    for spec in study.verdicts:
        kind = set(spec) - {"metric", "lower", "claim"}
        if set(spec) - VERDICT_KEYS or (spec and kind not in VERDICT_KINDS):
            raise ConfigError(f"{where}: a verdict is {{best: P}}, {{order: [P, Q, ...]}}, {{better: P, than: [Q, ...]}}, "
                              f"{{above_floor: P}} or {{point: P, beats: METRIC}} (and optional metric, lower and "
                              f"claim), got {spec!r}")
        if "beats" in spec and spec["beats"] not in study.metrics:
            raise ConfigError(f"{where}: the verdict's beats {spec['beats']!r} is not among the metrics {study.metrics}")
        if spec.get("metric", study.metrics[0]) not in study.metrics:
            raise ConfigError(f"{where}: the verdict's metric {spec['metric']!r} is not among the metrics "
                              f"{study.metrics}")
        for key in ("order", "than"):
            if key in spec and not isinstance(spec[key], list):
                raise ConfigError(f"{where}: the verdict's {key} must be a list of points, e.g. {key}: "
                                  f"[{spec[key]}], got {spec[key]!r}")
        mentioned = [spec[k] for k in ("best", "better", "above_floor", "point") if k in spec]
        mentioned += [n for k in ("order", "than") for n in spec.get(k, [])]
        missing = [n for n in mentioned if n not in names]
        if missing:
            raise ConfigError(f"{where}: the verdict names points {missing} that the study does not have "
                              f"({sorted(names)})")
    for recipe in {study.recipe, *(p.recipe for p in study.points)} - {None}:
        if not Path(recipe).is_file():
            raise FileNotFoundError(f"{where}: recipe {recipe} does not exist")


def expand(study: Study) -> list[Run]:
    """Every (point, seed) of the study as a :class:`Run`, points first."""
    runs = []
    for point in study.points:
        for seed in study.seeds_of(point):
            folder = study.runs_folder / point.slug / f"seed{seed}"
            overrides = (*study.overrides, *point.overrides, f"train.seed={seed}",
                         f"name={study.runs or study.name}-{point.slug}-seed{seed}", f"train.out_dir={folder}",
                         "train.progress=false")
            runs.append(Run(point, seed, folder, overrides))
    return runs


def commands(study: Study, run: Run) -> list[list[str]]:
    """The commands that bring ``run`` to done: pretrain (resumed when it was cut), then the study's
    fine-tuning where it is not written yet."""
    python = [sys.executable, "-m", "selfsup"]
    steps = []
    status = run.status()
    if status != "done":
        recipe = run.point.recipe or study.recipe
        steps.append([*python, "pretrain", *([recipe] if recipe else []), *run.overrides,
                      *(["--resume"] if status == "resume" else [])])
    if study.finetune and not (run.folder / "evaluations" / "finetune.json").is_file():
        labels = ",".join(f"{100 * f:g}%" for f in study.finetune)
        steps.append([*python, "evaluate", "finetune", str(run.folder / "checkpoints" / "last.ckpt"),
                      "--labels", labels, "--seeds", str(run.seed),  # each run its own subset and scratch network
                      *(["--steps", str(study.finetune_steps)] if study.finetune_steps else [])])
    return steps


def _execute_one(steps: list[list[str]], log: str) -> int:
    """Run the commands in order, appending their output to ``log``; the first failing status."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        for command in steps:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
            if code != 0:
                return code
    return 0


def execute(study: Study, *, jobs: int = 1, executor: str = "local", slurm: dict[str, Any] | None = None,
            progress: bool = True, say: Callable[[str], None] = print) -> dict[str, int]:
    """Bring every run of ``study`` to done; returns ``{run folder: exit status}`` of those run now.

    ``executor="local"``: ``jobs`` processes at a time on this machine. ``"slurm"``: each run a
    submitit job (``slurm`` holds submitit's parameters, e.g. ``{"slurm_partition": "gpu",
    "timeout_min": 60, "gpus_per_node": 1}``); ``"submitit-local"``: submitit's local executor (the
    same path without a cluster, what the tests use).
    """
    from tqdm.auto import tqdm

    runs = expand(study)
    todo = [run for run in runs if commands(study, run)]
    counts = {status: sum(r.status() == status for r in todo) for status in ("resume", "new")}
    shape = (f"{len(study.points)} points x {len(study.seeds)} seeds" if study.uniform_seeds else
             f"{len(study.points)} points, " + ", ".join(f"{p.name} {len(study.seeds_of(p))}" for p in study.points)
             + " seeds")
    say(f"sweep {study.name}: {len(runs)} runs ({shape}) in "
        f"{study.folder}; {len(runs) - len(todo)} done, {counts['resume']} to resume, {counts['new']} to start")
    results: dict[str, int] = {}
    if not todo:
        return results
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", desc=study.name, disable=not progress)
    if executor == "local":
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(_execute_one, commands(study, run), str(run.folder / "sweep.log")): run
                       for run in todo}
            for future, run in futures.items():
                results[str(run.folder)] = future.result()
                bar.update()
    elif executor in ("slurm", "submitit-local"):
        import submitit  # the cluster extra

        folder = study.folder / "submitit"
        pool = submitit.AutoExecutor(folder=folder, cluster="local" if executor == "submitit-local" else "slurm")
        pool.update_parameters(**(slurm or {}))
        submitted = [(pool.submit(_execute_one, commands(study, run), str(run.folder / "sweep.log")), run)
                     for run in todo]
        for job, run in submitted:
            results[str(run.folder)] = job.result()
            bar.update()
    else:
        raise ConfigError(f"--executor: {executor!r}; choose local, slurm or submitit-local")
    bar.close()
    failed = [folder for folder, code in results.items() if code != 0]
    if failed:
        say(f"sweep {study.name}: {len(failed)} run(s) failed; their output is in <run>/sweep.log: "
            + ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else ""))
    return results


# -- the summary ------------------------------------------------------------------------------


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
                results[-1].setdefault("evaluations", {})[extra.stem] = json.loads(extra.read_text())
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
        means = [scale * (s["mean"] or 0) for s in stats_of]
        errors = [scale * (s["ci95"] or 0) for s in stats_of]
        ax.errorbar(range(len(names)), means, yerr=errors, fmt="o", capsize=4, color="#1f6feb")
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
        over = (f"{len(study.seeds)} seeds" if study.uniform_seeds
                else "each point's seeds (" + ", ".join(str(len(study.seeds_of(p))) for p in study.points) + ")")
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
            if s.get("floor") is not None:
                cell += f"; *floor* {_shown(metric, s['floor'])}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if summary["missing"]:
        lines += [f"*{len(summary['missing'])} run(s) have no results yet.*", ""]
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
    page, claim and verdict; a summary whose floor verdicts predate the paired rule says so."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        summary = json.loads(path.read_text())
        claim = " ".join(str(summary.get("claim", "")).split()).replace("|", "\\|")
        runs = summary.get("runs") or len(summary.get("points", {})) * len(summary.get("seeds", []))
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


__all__ = ["Point", "Run", "Study", "collect", "commands", "expand", "execute", "grid_points", "load_study", "page",
           "statistics", "study_from_command_line", "study_list", "summarise", "t_quantile", "verdict", "verdict_of",
           "verdicts"]
