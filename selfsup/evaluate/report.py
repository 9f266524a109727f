"""A run's results as one self-contained HTML page; the run folder's files read and checked.

Several runs as the README's tables: :mod:`selfsup.evaluate.tables`, which reads them with `load_run`.

Unlike the rest of :mod:`selfsup.evaluate` this module takes paths: it reads the files a run
folder holds (plain JSON, CSV and YAML; never a checkpoint) and imports nothing from the engine,
the configuration or the command line. A run folder, as ``selfsup pretrain`` writes it::

    <run>/results.json            the numbers (schema below)
    <run>/config.yaml             the resolved configuration (absent in older runs)
    <run>/logs/metrics.csv        column ``step`` and one per metric (loss, lr, images_per_s, epoch,
                                  knn_accuracy, ...), empty where a metric was not logged at that step
    <run>/curves.png, views.png, umap.png or tsne.png, retrieval.png,
    correspondence.png                                                    pictures; any may be absent
    <run>/evaluations/<key>.json  written by ``selfsup evaluate ...``: one object like an entry of
                                  ``evaluations`` below; it replaces that entry of results.json

``results.json`` (any key may be missing; older runs hold only the two accuracies)::

    {
      "name": "simclr_fashion_mnist", "method": "simclr", "data": "fashion_mnist", "backbone": "convnet",
      "epochs": 10.0, "batch_size": 256, "steps": 2340, "precision": "32-true",
      "device": "cpu", "devices": 1, "cpu_capability": "AVX2",
      "command": "selfsup pretrain recipes/simclr_fashion_mnist.yaml", "commit": "0a3e916",
      "wall_time_s": 1003.2, "pretrain_time_s": 880.1, "images_per_s": 715.0,
      "linear_accuracy": 0.8712, "knn_accuracy": 0.8301,
      "evaluations": {
        "linear": {"accuracy": 0.8712, "data": "fashion_mnist", "protocol": "<in words>",
                   "random_init": {"accuracy": 0.8450}},
        "knn": {"accuracy": 0.8301, "k": 200, "temperature": 0.1, "data": "fashion_mnist", "protocol": "...",
                "random_init": {"accuracy": 0.7940}},
        "finetune": {"data": "fashion_mnist", "protocol": "...",
                     "fractions": {"0.01": {"mean": 0.71, "std": 0.01, "scratch_mean": 0.62,
                                            "scratch_std": 0.02, "seeds": [0, 1, 2]},
                                   "0.1": {...}}},
        "transfer_<data>": {"data": "digits", "linear": 0.93, "knn": 0.91, "protocol": "..."},
        "fewshot_<n>way_<k>shot": {"accuracy": 0.61, "ci95": 0.008, "episodes": 600, "n_way": 5,
                                   "k_shot": 1, "protocol": "..."},
        "retrieval": {"recall@1": 0.8, "recall@5": 0.95, "protocol": "..."}
      }
    }

Accuracies and recalls are fractions in [0, 1], shown as percentages with two decimals; ``ci95``
is the half-width of the 95% confidence interval; times are seconds. ``random_init`` holds the
floor of an evaluation: its scores for the same evaluation encoder at the run's random
initialisation, by the same protocol on the same data. Keys of an evaluation other
than the scores (``accuracy``, ``linear``, ``knn``, ``recall@k``, ``ci95``), ``data``,
``protocol`` and ``fractions`` are its settings (``k``, ``episodes``, ``seeds``, ...) and are
shown beside the scores.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import DataError
from selfsup.evaluate._common import atomic_write

MISSING = "–"
"""What the page and the table show for a value the run's files do not hold."""

# Where config.yaml keeps what results.json of an older run lacks (it held only the accuracies).
_FROM_CONFIG = {"name": ("name",), "method": ("method",), "data": ("data", "name"),
                "backbone": ("backbone", "name"), "epochs": ("train", "epochs"),
                "batch_size": ("train", "batch_size")}
_HEADER_KEYS = ("name", "method", "data", "backbone", "epochs", "batch_size", "steps", "precision",
                "device", "devices", "cpu_capability", "wall_time_s", "pretrain_time_s", "images_per_s",
                "command", "commit", "linear_accuracy", "knn_accuracy", "evaluations")
_SCORE_LABELS = {"accuracy": "", "linear": "linear", "knn": "kNN", "chance": "chance",
                 "held_out_accuracy": "held-out", "held_out_chance": "held-out chance", "seen_accuracy": "seen",
                 "feature_std": "feature std", "effective_rank": "effective rank",
                 "j_and_f": "J&F", "j": "J", "f": "F", "tau": "tau", "mean_gap": "mean gap",
                 "alignment_tau": "alignment tau", "alignment_error": "alignment error",
                 "task_alignment_tau": "task alignment tau", "task_alignment_error": "task alignment error"}
# Scores that are not fractions: shown as numbers, not percentages.
_PLAIN_SCORES = {"feature_std", "effective_rank", "j_and_f", "j", "f", "tau", "mean_gap", "alignment_tau", "alignment_error",
                 "task_alignment_tau", "task_alignment_error"}
# Shown in their own columns, or as part of a score, rather than as settings (per_video: one score per video).
_NOT_SETTINGS = {"ci95", "data", "protocol", "fractions", "mean", "std", "scratch_mean", "scratch_std", "random_init",
                 "raw_pixels", "baselines", "per_video"}
_FEWSHOT = re.compile(r"fewshot_(\d+)way_(\d+)shot")
_PICTURES = (("Training curves", ("curves.png",)), ("Views", ("views.png",)),
             ("Embedding map", ("umap.png", "tsne.png")), ("Retrieval", ("retrieval.png",)),
             ("Dense correspondence", ("correspondence.png",)))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a run folder: its results, configuration and logged metrics.

    Keys that ``results.json`` lacks but ``config.yaml`` holds (name, method, data, backbone,
    epochs, batch_size) are filled from the configuration; a run without a name is named after
    its folder.

    Returns:
        ``{"dir": Path, "results": dict, "config": str | None, "metrics": list[dict]}``:
        ``results`` is results.json with ``results["evaluations"][stem]`` replaced by each
        ``evaluations/<stem>.json``; ``config`` the text of config.yaml (None when absent);
        ``metrics`` the rows of logs/metrics.csv as ``{column: float or None}`` (None for an
        empty cell; ``[]`` when the file is absent).

    Raises:
        FileNotFoundError: the folder does not exist or holds no results.json.
        DataError: a corrupt JSON, YAML or CSV file (named), or values of the wrong shape.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; give the train.out_dir of a "
                                f"`selfsup pretrain` run")
    results_path = run / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{run} is not a selfsup run folder: it has no results.json, which "
                                f"`selfsup pretrain` writes when a run finishes")
    results = _read_json(results_path)
    evaluations = results.get("evaluations") or {}
    if not isinstance(evaluations, dict) or not all(isinstance(entry, dict) for entry in evaluations.values()):
        raise DataError(f"{results_path}: 'evaluations' must map each evaluation to an object "
                        f"{{\"accuracy\": ..., \"protocol\": ...}}, got {evaluations!r:.200}")
    evaluations = dict(evaluations)
    for path in sorted((run / "evaluations").glob("*.json")):
        evaluations[path.stem] = _read_json(path)
    results["evaluations"] = evaluations

    config_path = run / "config.yaml"
    try:
        config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    except UnicodeDecodeError as error:
        raise DataError(f"{config_path} is not UTF-8 text ({error.reason} at byte {error.start}); restore it from "
                        f"the recipe or delete it") from None
    config = _parse_yaml(config_path, config_text) if config_text is not None else {}
    for key, place in _FROM_CONFIG.items():
        value = config
        for part in place:
            value = value.get(part) if isinstance(value, dict) else None
        if results.get(key) is None and value is not None:
            results[key] = value
    if results.get("name") is None:
        results["name"] = run.resolve().name
    return {"dir": run, "results": results, "config": config_text,
            "metrics": _read_metrics(run / "logs" / "metrics.csv")}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); rerun the command that wrote it, "
                        f"or delete it") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} must hold one JSON object {{...}}, got {type(value).__name__}")
    return value


def _parse_yaml(path: Path, text: str) -> dict[str, Any]:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DataError(f"{path} is not valid YAML ({error}); restore it from the recipe or delete it") from None
    if not isinstance(value, (dict, type(None))):
        raise DataError(f"{path} must hold a mapping of configuration keys, got {type(value).__name__}")
    return value or {}


def _read_metrics(path: Path) -> list[dict[str, float | None]]:
    if not path.is_file():
        return []
    try:
        return _read_metric_rows(path)
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); delete it to leave the "
                        f"curves out") from None


def _read_metric_rows(path: Path) -> list[dict[str, float | None]]:
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if "step" not in (reader.fieldnames or []):
            raise DataError(f"{path} needs a 'step' column, found columns {reader.fieldnames}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                # A row longer than the header puts its extra cells under None; they have no metric.
                rows.append({name: None if cell in (None, "") else float(cell)
                             for name, cell in row.items() if name is not None})
            except ValueError:
                raise DataError(f"{path} line {line}: every cell must be a number or empty, got "
                                f"{dict(row)}") from None
    return rows


def _number(mapping: Mapping[str, Any], key: str, where: str) -> float | None:
    """``mapping[key]`` as a number, None when it is missing or null."""
    value = mapping.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: {key!r} must be a number, got {value!r}")
    return value


def _plain(value: Any) -> str:
    """A value from a file as text: numbers without a trailing ``.0``, lists and objects as JSON."""
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value)


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.2f}%"


def _spread(mean: float | None, spread: float | None) -> str:
    """``mean ± spread`` in percent (just the mean when there is no spread)."""
    if mean is None:
        return MISSING
    return _percent(mean) if spread is None else f"{_percent(mean)} ± {_percent(spread)}"


def _minutes(seconds: float | None) -> str:
    return MISSING if seconds is None else f"{seconds / 60:.1f} min"


def _fraction_label(fraction: float) -> str:
    """``0.01`` as ``"1%"``."""
    return f"{100 * fraction:g}%"


def _fractions(entry: Mapping[str, Any], where: str) -> list[tuple[float, str, dict[str, Any]]]:
    """``(fraction, its key, result)`` per label fraction of a fine-tuning entry, smallest first."""
    fractions = entry.get("fractions") or {}
    if not isinstance(fractions, dict) or not all(isinstance(value, dict) for value in fractions.values()):
        raise DataError(f"{where}: 'fractions' must map each label fraction (\"0.01\") to "
                        f"{{\"mean\": ..., \"std\": ...}}, got {fractions!r:.200}")
    parsed = []
    for key, result in fractions.items():
        try:
            parsed.append((float(key), key, result))
        except ValueError:
            raise DataError(f"{where}: fraction {key!r} must be a number such as \"0.01\" "
                            f"(the share of labels used)") from None
    return sorted(parsed, key=lambda item: item[0])


def _finetune_text(result: Mapping[str, Any], where: str) -> str:
    """Fine-tuned ``mean ± std``, with training from scratch in parentheses when recorded."""
    text = _spread(_number(result, "mean", where), _number(result, "std", where))
    scratch = _number(result, "scratch_mean", where)
    if scratch is not None:
        text += f" (scratch {_spread(scratch, _number(result, 'scratch_std', where))})"
    return text


def _is_score(key: str) -> bool:
    return key in _SCORE_LABELS or "@" in key


def _scores_text(entry: Mapping[str, Any], where: str) -> str:
    """The scores of one evaluation: ``accuracy ± ci95``, ``linear 93.00%, kNN 91.00%``, ``recall@1 ...``."""
    parts = []
    for key in entry:
        if not _is_score(key):
            continue
        label = _SCORE_LABELS.get(key, key)
        value = _percent(_number(entry, key, where))
        if key in _PLAIN_SCORES:
            value = f"{_number(entry, key, where):.4g}"
        if key == "accuracy" and entry.get("ci95") is not None:
            value = _spread(_number(entry, key, where), _number(entry, "ci95", where))
        parts.append(f"{label} {value}".strip())
    text = ", ".join(parts) or MISSING
    floor = entry.get("random_init")
    if isinstance(floor, Mapping) and floor:
        text += f" (random init: {_scores_text(floor, f'{where} random_init')})"
    raw = entry.get("raw_pixels")
    if isinstance(raw, Mapping) and raw:
        text += f" (raw pixels: {_scores_text(raw, f'{where} raw_pixels')})"
    baselines = entry.get("baselines")
    if isinstance(baselines, Mapping):
        for name, scores in baselines.items():
            if isinstance(scores, Mapping) and scores:
                text += f" ({name} baseline: {_scores_text(scores, f'{where} baselines {name}')})"
    return text


def _settings_text(*entries: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={_plain(value)}" for entry in entries for key, value in entry.items()
                     if key not in _NOT_SETTINGS and not _is_score(key))


def _evaluation_rows(results: Mapping[str, Any], run: Path) -> list[tuple[str, str, str, str, str]]:
    """``(evaluation, data, result, settings, protocol)`` for every evaluation of a run."""
    evaluations = results["evaluations"]
    rows = []
    for name, top_key in (("linear", "linear_accuracy"), ("knn", "knn_accuracy")):
        if name not in evaluations and results.get(top_key) is not None:
            rows.append((name, _plain(results.get("data")), _percent(_number(results, top_key, str(run))),
                         "", "not recorded (results.json from before evaluations were described)"))
    for name, entry in evaluations.items():
        where = f"{run}: evaluation {name!r}"
        data, protocol = _plain(entry.get("data")), _plain(entry.get("protocol"))
        if "fractions" in entry:
            for fraction, key, result in _fractions(entry, where):
                rows.append((f"{name}, {_fraction_label(fraction)} of the labels", data,
                             _finetune_text(result, f"{where} fraction {key}"),
                             _settings_text(result, entry), protocol))
            continue
        scores = _scores_text(entry, where)
        if entry.get("ci95") is not None:
            scores += " (95% CI)"
        rows.append((name, data, scores, _settings_text(entry), protocol))
    return rows


def _header_rows(results: Mapping[str, Any], run: Path) -> list[tuple[str, str]]:
    where = f"{run / 'results.json'}"
    device = _plain(results.get("device"))
    if results.get("devices") is not None:
        device += f" × {_plain(results['devices'])}"
    if results.get("cpu_capability") is not None:
        device += f" (CPU {_plain(results['cpu_capability'])})"
    rate = _number(results, "images_per_s", where)
    rows = [("method", _plain(results.get("method"))), ("data", _plain(results.get("data"))),
            ("backbone", _plain(results.get("backbone"))), ("epochs", _plain(results.get("epochs"))),
            ("batch size", _plain(results.get("batch_size"))), ("steps", _plain(results.get("steps"))),
            ("precision", _plain(results.get("precision"))), ("device", device),
            ("wall time", _minutes(_number(results, "wall_time_s", where))),
            ("pretraining time", _minutes(_number(results, "pretrain_time_s", where))),
            ("images/s", MISSING if rate is None else f"{round(rate):,}"),
            ("command", _plain(results.get("command"))), ("commit", _plain(results.get("commit")))]
    # Keys this page does not know yet still show, so nothing in results.json goes unseen.
    rows += [(key, _plain(value)) for key, value in results.items() if key not in _HEADER_KEYS]
    return rows


def _last_values(rows: list[dict[str, float | None]]) -> list[tuple[str, str, str, str]]:
    """``(metric, last value, its step, points logged)`` per metric column of metrics.csv."""
    columns = [name for name in rows[0] if name != "step"] if rows else []
    table = []
    for name in columns:
        logged = [row for row in rows if row.get(name) is not None]
        if logged:
            table.append((name, f"{logged[-1][name]:.4g}", _plain(logged[-1]["step"]), str(len(logged))))
    return table


def _image(path: Path) -> str:
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        raise DataError(f"{path} is not a PNG image; redraw it (`selfsup plot RUN` redraws the curves "
                        f"and the embedding map) or delete it")
    width, height = struct.unpack(">II", data[16:24])  # IHDR, the first chunk, starts with the size
    source = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{source}" width="{width}" height="{height}" '
            f'alt="{html.escape(path.name)}"><figcaption>{html.escape(path.name)}</figcaption></figure>')


def _html_table(head: Iterable[str], rows: Iterable[Iterable[str]], classes: Iterable[str] = ()) -> str:
    """A table of plain-text cells (escaped here); ``classes`` gives each column's CSS class."""
    classes = list(classes)
    cells = "".join(f"<th>{html.escape(name)}</th>" for name in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="{classes[i]}">{html.escape(cell)}</td>' if i < len(classes) and classes[i]
                         else f"<td>{html.escape(cell)}</td>" for i, cell in enumerate(row)) + "</tr>\n"
        for row in rows)
    return f"<table>\n<thead><tr>{cells}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1d232a; background: #fff;
       max-width: 1100px; margin: 2rem auto; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2rem; }
.subtitle { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
thead th, tbody th { background: #f3f5f7; }
td.number { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.result { font-variant-numeric: tabular-nums; min-width: 9rem; }
td.code { font-family: ui-monospace, monospace; }
td.protocol { color: #3d444d; min-width: 22rem; font-size: 0.9rem; }
figure { margin: 0.6rem 0; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 0.85rem; }
pre { background: #f6f8fa; padding: 0.8rem; overflow-x: auto; }
.missing { color: #6e7781; font-style: italic; }
"""

# Written on load so that a headless browser can check, from the DOM alone, that every inlined
# picture decoded.
_SCRIPT = """window.addEventListener("load", () => {
  document.body.dataset.brokenImages = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
});"""


def _page(run: Mapping[str, Any]) -> str:
    folder, results = run["dir"], run["results"]
    name = _plain(results["name"])
    header = "".join(
        f"<tr><th>{html.escape(label)}</th>"
        + (f'<td class="code">{html.escape(value)}</td>' if label in ("command", "commit")
           else f"<td>{html.escape(value)}</td>") + "</tr>\n"
        for label, value in _header_rows(results, folder))
    evaluations = _evaluation_rows(results, folder)
    summary = (_html_table(("evaluation", "data", "result", "settings", "protocol"), evaluations,
                           ("", "", "result", "", "protocol"))
               if evaluations else '<p class="missing">This run has no evaluations.</p>')
    parts = [f"<h1>{html.escape(name)}</h1>",
             f'<p class="subtitle">{html.escape(_plain(results.get("method")))} on '
             f'{html.escape(_plain(results.get("data")))} — selfsup run {html.escape(str(folder))}</p>',
             f"<table>\n<tbody>\n{header}</tbody>\n</table>",
             "<h2>Evaluations</h2>", summary]
    for title, files in _PICTURES:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        present = [folder / file for file in files if (folder / file).is_file()]
        parts += [_image(path) for path in present] or [
            f'<p class="missing">This run has no {html.escape(" or ".join(files))}.</p>']
        if title == "Training curves":
            last = _last_values(run["metrics"])
            parts.append(_html_table(("metric", "last value", "at step", "points logged"), last,
                                     ("", "number", "number", "number"))
                         if last else '<p class="missing">This run has no logs/metrics.csv.</p>')
    parts.append("<h2>Configuration</h2>")
    parts.append(f"<pre>{html.escape(run['config'])}</pre>" if run["config"] is not None
                 else '<p class="missing">This run has no config.yaml.</p>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(name)} — selfsup report</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n<script>\n{_SCRIPT}\n</script>\n</body>\n</html>\n")


def write_report(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Write a run's results as one self-contained HTML page and return its path.

    The page holds a header (name, method, data, backbone, epochs, batch, steps, precision,
    device and CPU, wall and pretraining time, images/s, command, commit), a table of every
    evaluation with its scores (percentages; mean ± std; accuracy ± 95% CI), settings and
    protocol in words, the training curves with each metric's last logged value, the views, the
    embedding map, the retrieval grid and the full configuration. Pictures are inlined as
    ``data:`` URIs and nothing is fetched from elsewhere, so the file can be mailed alone.

    Args:
        run_dir: a run folder (see the module docstring for what it holds).
        path: where to write the page (default ``<run_dir>/report.html``); replaced atomically.

    Raises:
        FileNotFoundError, DataError: as :func:`load_run`; also a picture that is not a PNG.

    Examples:
        >>> write_report("runs/simclr_fashion_mnist")  # doctest: +SKIP
        PosixPath('runs/simclr_fashion_mnist/report.html')
    """
    run = load_run(run_dir)
    page = _page(run).encode("utf-8")
    return atomic_write(Path(path) if path is not None else run["dir"] / "report.html",
                        lambda file: file.write(page))
