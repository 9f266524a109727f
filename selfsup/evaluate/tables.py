"""Several runs as the README's tables: every evaluation of each run beside its floor (`results_table`), and the
headline numbers (`headline_table`). The run folders are read by `selfsup.evaluate.report.load_run`, whose
docstring gives the files' schema; like that module this one reads plain files only, never a checkpoint."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from selfsup.evaluate.report import (MISSING, _FEWSHOT, _finetune_text, _fraction_label, _fractions, _number,
                                     _percent, _plain, _scores_text, _spread, load_run)


def _markdown_cell(text: str) -> str:
    # A pipe would end the cell; a newline would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def _text(value: Any) -> str:
    """A string from a run's files as Markdown text that shows it and nothing more: HTML escaped (a results.json
    someone sent may hold ``<script>``), and the characters that would start emphasis, a link or code
    backslash-escaped (an underscore inside a word, as in ``fashion_mnist``, is no emphasis and stays)."""
    text = html.escape(_plain(value), quote=False)
    text = re.sub(r"([\\`*\[\]])", r"\\\1", text)
    return re.sub(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])", r"\\_", text)


def _code(value: Any) -> str:
    """A string as a Markdown code span, whose content is shown as it is (HTML included): fenced by one more
    backtick than its longest run of backticks, so none can close it early."""
    text = _plain(value)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def results_table(run_dirs: Iterable[str | os.PathLike]) -> str:
    """The README's results table, as GitHub markdown, from the runs' files only.

    One row per run, in the order given; beside each accuracy, in parentheses, its floor (the same
    evaluation of the same encoder at random initialisation, ``random_init``) when the run recorded
    it. Columns: run, method, epochs, batch, linear probe, kNN,
    (bank kNN, when some run kept a memory bank; correspondence PCK@3 with its floor and raw-pixel
    patches, when some run is a dense method; propagation J&F with its floor and the Lab and
    copy-first-mask baselines, and the temporal-order tau with its floor, when some run is a video
    method), wall time (min), img/s, command; then, only when
    some run has them, one column per
    fine-tuning label fraction (mean ± std, training from scratch in parentheses), one per
    few-shot setting (accuracy ± 95% CI) and transfer. A value a run lacks is ``–``.

    Raises:
        ValueError: no run folder given.
        FileNotFoundError, DataError: as :func:`load_run`.

    Examples:
        >>> print(results_table(["runs/simclr_fashion_mnist", "runs/moco_fashion_mnist"]))  # doctest: +SKIP
    """
    runs = [load_run(run_dir) for run_dir in run_dirs]
    if not runs:
        raise ValueError("results_table needs at least one run folder")
    fractions: set[float] = set()
    fewshot: set[tuple[int, int]] = set()
    for run in runs:
        evaluations = run["results"]["evaluations"]
        fractions |= {value for value, _, _ in _fractions(evaluations.get("finetune", {}),
                                                          f"{run['dir']}: evaluation 'finetune'")}
        fewshot |= {(int(match[1]), int(match[2])) for match in map(_FEWSHOT.fullmatch, evaluations) if match}
    transfer = any(key.startswith("transfer_") for run in runs for key in run["results"]["evaluations"])
    bank = any("bank_knn" in run["results"]["evaluations"] for run in runs)
    dense = any("correspondence" in run["results"]["evaluations"] for run in runs)
    videos = any("propagation" in run["results"]["evaluations"] for run in runs)
    keypoints = any("pck@0.1" in (run["results"]["evaluations"].get("propagation") or {}) for run in runs)

    head = ["run", "method", "epochs", "batch", "linear probe (random init)", "kNN (random init)",
            *(["bank kNN"] if bank else []), *(["PCK@3 (random init; raw patches)"] if dense else []),
            *(["propagation J&F (random init; Lab; copy)", "temporal-order tau (random init)"] if videos else []),
            *(["keypoint PCK@0.1 (random init; Lab; copy)"] if keypoints else []),
            "wall time (min)", "img/s", "command"]
    align = ["---", "---", "---:", "---:", "---:", "---:", *(["---:"] if bank else []), *(["---:"] if dense else []),
             *(["---:", "---:"] if videos else []), *(["---:"] if keypoints else []), "---:", "---:", "---"]
    head += [f"fine-tune {_fraction_label(value)} (scratch)" for value in sorted(fractions)]
    head += [f"few-shot {n_way}-way {k_shot}-shot (random init)" for n_way, k_shot in sorted(fewshot)]
    head += ["transfer"] if transfer else []
    align += ["---:"] * (len(fractions) + len(fewshot)) + (["---"] if transfer else [])
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for run in runs:
        run_dir, results = run["dir"], run["results"]
        where = f"{run_dir}: results.json"
        evaluations = results["evaluations"]
        seconds = _number(results, "wall_time_s", where)
        rate = _number(results, "images_per_s", where)
        row = [_text(results["name"]), _text(results.get("method")), _text(results.get("epochs")),
               _text(results.get("batch_size")), _accuracy(results, "linear", run_dir),
               _accuracy(results, "knn", run_dir),
               *([_accuracy(results, "bank_knn", run_dir) if "bank_knn" in evaluations else MISSING] if bank else []),
               *([_pck_text(evaluations.get("correspondence"), f"{run_dir}: evaluation 'correspondence'")]
                 if dense else []),
               *([_video_text(evaluations.get("propagation"), "j_and_f", f"{run_dir}: evaluation 'propagation'"),
                  _video_text(evaluations.get("temporal"), "tau", f"{run_dir}: evaluation 'temporal'")]
                 if videos else []),
               *([_video_text(evaluations.get("propagation"), "pck@0.1", f"{run_dir}: evaluation 'propagation'")
                  if "pck@0.1" in (evaluations.get("propagation") or {}) else MISSING] if keypoints else []),
               MISSING if seconds is None else f"{seconds / 60:.1f}",
               MISSING if rate is None else f"{round(rate):,}",
               MISSING if results.get("command") is None else _code(results["command"])]
        where = f"{run_dir}: evaluation 'finetune'"
        finetunes = {value: (key, result) for value, key, result in _fractions(evaluations.get("finetune", {}), where)}
        row += [_finetune_text(finetunes[value][1], f"{where} fraction {finetunes[value][0]}")
                if value in finetunes else MISSING for value in sorted(fractions)]
        for n_way, k_shot in sorted(fewshot):
            name = f"fewshot_{n_way}way_{k_shot}shot"
            entry, where = evaluations.get(name), f"{run_dir}: evaluation {name!r}"
            row.append(MISSING if entry is None else _accuracy(results, name, run_dir))
        if transfer:
            row.append("; ".join(f"{_text(entry.get('data', key.removeprefix('transfer_')))}: "
                                 f"{_scores_text(entry, f'{run_dir}: evaluation {key!r}')}"
                                 for key, entry in evaluations.items() if key.startswith("transfer_")) or MISSING)
        lines.append("| " + " | ".join(map(_markdown_cell, row)) + " |")
    return "\n".join(lines) + "\n"


def headline_table(run_dirs: Iterable[str | os.PathLike]) -> str:
    """The README's method list in numbers: one row per run with its data, its budget, the linear
    probe and kNN beside their floors (``random_init``), the gain over each floor in points, and the
    method's own measure where it has one (PCK@3 of a dense method; a video method's propagation
    J&F and keypoint PCK, its temporal-order tau and, for synchronised views, its cross-view alignment
    tau; each beside its random network and baselines). From the runs' files only.

    Raises:
        ValueError: no run folder given.
    """
    runs = [load_run(run_dir) for run_dir in run_dirs]
    if not runs:
        raise ValueError("headline_table needs at least one run folder")
    lines = ["| run | data | epochs | linear (random init) | kNN (random init) | gain linear / kNN | own measure |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for run in runs:
        run_dir, results = run["dir"], run["results"]
        evaluations = results["evaluations"]
        gains = []
        for name in ("linear", "knn"):
            entry = evaluations.get(name) or {}
            score = _number(entry, "accuracy", f"{run_dir}: evaluation {name!r}")
            floor = entry.get("random_init")
            base = _number(floor, "accuracy", f"{run_dir}: {name} random_init") if isinstance(floor, Mapping) else None
            gains.append(MISSING if score is None or base is None else f"{100 * (score - base):+.2f}")
        own = MISSING
        if "correspondence" in evaluations:
            own = "PCK@3 " + _pck_text(evaluations["correspondence"], f"{run_dir}: evaluation 'correspondence'")
        elif "propagation" in evaluations or "temporal" in evaluations:
            parts = []
            for name, keys in (("propagation", (("j_and_f", "J&F"), ("pck@0.1", "PCK@0.1"))),
                               ("temporal", (("tau", "tau"), ("alignment_tau", "alignment tau"),
                                             ("task_alignment_tau", "task alignment tau")))):
                entry = evaluations.get(name) or {}
                parts += [f"{label} " + _video_text(entry, key, f"{run_dir}: evaluation {name!r}")
                          for key, label in keys if key in entry]
            own = "; ".join(parts) or MISSING
        data = _text(results.get("data"))
        row = [_text(results["name"]), data, _text(results.get("epochs")),
               _accuracy(results, "linear", run_dir) if "linear" in evaluations else MISSING,
               _accuracy(results, "knn", run_dir) if "knn" in evaluations else MISSING, " / ".join(gains), own]
        lines.append("| " + " | ".join(map(_markdown_cell, row)) + " |")
    return "\n".join(lines) + "\n"


def _accuracy(results: Mapping[str, Any], name: str, run: Path) -> str:
    """The ``accuracy`` of evaluation ``name`` with its floor in parentheses (the same evaluation at
    random initialisation, when recorded), else results.json's ``<name>_accuracy`` (older runs)."""
    entry = results["evaluations"].get(name)
    if entry is None:
        return _percent(_number(results, f"{name}_accuracy", f"{run}: results.json"))
    where = f"{run}: evaluation {name!r}"
    text = _spread(_number(entry, "accuracy", where), _number(entry, "ci95", where))
    return text + _floor_cell(entry, where)


def _pck_text(entry: Mapping[str, Any] | None, where: str) -> str:
    """``72.10% (48.90%; raw 70.10%)``: PCK@3 of a dense method beside its random network and raw patches."""
    if entry is None:
        return MISSING
    text = _percent(_number(entry, "pck@3", where))
    shown = [f"{label}{_percent(_number(entry[key], 'pck@3', f'{where} {key}'))}"
             for label, key in (("", "random_init"), ("raw ", "raw_pixels")) if isinstance(entry.get(key), Mapping)]
    return text + (f" ({'; '.join(shown)})" if shown else "")


def _video_text(entry: Mapping[str, Any] | None, score: str, where: str) -> str:
    """``0.581 (0.464; Lab 0.683; copy 0.203)``: a video score beside its random network and, for
    propagation, the baselines ``selfsup evaluate propagate`` recorded."""
    if entry is None:
        return MISSING

    def text(mapping: Mapping[str, Any], at: str) -> str:
        value = _number(mapping, score, at)
        return MISSING if value is None else f"{value:.3f}"

    parts = [(label, value) for label, value in (("", entry.get("random_init")),
                                                ("Lab ", (entry.get("baselines") or {}).get("lab")),
                                                ("copy ", (entry.get("baselines") or {}).get("copy")))
             if isinstance(value, Mapping)]
    shown = [label + text(value, f"{where} {label or 'random_init'}") for label, value in parts]
    return text(entry, where) + (f" ({'; '.join(shown)})" if shown else "")


def _floor_cell(entry: Mapping[str, Any], where: str) -> str:
    """`` (82.01%)``: the floor of a table cell's accuracy, or nothing when the run did not record it."""
    floor = entry.get("random_init")
    if not isinstance(floor, Mapping) or _number(floor, "accuracy", f"{where} random_init") is None:
        return ""
    return f" ({_percent(floor['accuracy'])})"
