"""A study: its file read and checked (points, seeds, metrics, verdicts) and expanded into runs."""

from __future__ import annotations

import itertools
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError

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

    def made_otherwise(self, recipe: str | None) -> str | None:
        """Where a done run was made by another command than the study now gives it (its overrides or its
        recipe edited since), a sentence saying how; else None. The command is results.json's
        ``command``; a run that recorded none is taken as it is."""
        try:
            recorded = json.loads((self.folder / "results.json").read_text(encoding="utf-8")).get("command")
        except (OSError, ValueError):
            return None
        if not isinstance(recorded, str):
            return None
        words = [w for w in shlex.split(recorded)[2:] if not w.startswith("--")]  # past "selfsup pretrain"
        made_recipe = words[0] if words and "=" not in words[0] else None
        made = [w for w in words if "=" in w]
        if sorted(made) == sorted(self.overrides) and made_recipe == recipe:
            return None
        gone = [w for w in made if w not in self.overrides]
        new = [w for w in self.overrides if w not in made]
        parts = ([f"recipe {made_recipe} -> {recipe}"] if made_recipe != recipe else []) + (
            [f"made with {' '.join(gone)}"] if gone else []) + ([f"now {' '.join(new)}"] if new else [])
        return f"{self.folder}: {'; '.join(parts)}"


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
    verdict = spec.get("verdict") or {}
    if not isinstance(verdict, (dict, list)) or (isinstance(verdict, list) and not all(isinstance(v, dict) for v in verdict)):
        raise ConfigError(f"{path}: verdict must be a mapping or a list of mappings, got {verdict!r}")
    recipe, metrics, finetune = spec.get("recipe"), spec.get("metrics"), spec.get("finetune")
    if recipe is not None and not isinstance(recipe, str):
        raise ConfigError(f"{path}: recipe must be a path to a recipe file, got {recipe!r}")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise ConfigError(f"{path}: metrics must be a list of names, e.g. [knn, linear], got {metrics!r}")
    if finetune is not None and (not isinstance(finetune, list) or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in finetune)):
        raise ConfigError(f"{path}: finetune must be a list of label shares in (0, 1], e.g. [0.01, 0.1], got {finetune!r}")
    study = Study(name=str(spec.get("name") or path.stem), recipe=recipe, points=points,
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
    if len({p.slug for p in study.points}) != len(study.points):  # e.g. key=0.5,+0.5 on a command line
        raise ConfigError(f"{where}: two points share a folder name: {[p.name for p in study.points]}")
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


def check_runs_match(study: Study) -> None:
    """Refuse a study whose finished runs were made by other commands than it now gives them (its overrides or
    recipe edited after they ran): reusing them would put numbers under settings they were not made with."""
    otherwise = [m for run in expand(study) if run.status() == "done"
                 and (m := run.made_otherwise(run.point.recipe or study.recipe))]
    if otherwise:
        raise ConfigError(f"sweep {study.name}: {len(otherwise)} finished run(s) were made with other settings than "
                          f"the study gives them now ({'; '.join(otherwise[:3])}{' ...' if len(otherwise) > 3 else ''}); "
                          f"delete those run folders to run them again, or restore the study's settings")


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
