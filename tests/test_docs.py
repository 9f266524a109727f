"""The documentation site: built with mkdocs --strict (a broken page, snippet or API reference fails),
and its result pages equal what the commands they name generate from the committed run files."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup import sweep
from selfsup.evaluate import headline_table, results_table

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "losses" / "index.html").is_file()
    page = (tmp_path / "site" / "results" / "index.html").read_text()
    assert "random init" in page  # the generated table was included


@pytest.mark.parametrize("runs, table", [("bar", "bar.md"), ("views_dense", "views_dense.md"),
                                         ("video", "video_runs.md")])
def test_the_results_tables_are_the_ones_report_generates_from_the_run_files(runs, table):
    folders = sorted(p for p in (ROOT / "docs" / "runs" / runs).iterdir() if p.is_dir())
    assert folders, f"docs/runs/{runs} holds the runs the results page is generated from"
    assert (ROOT / "docs" / "results" / table).read_text() == results_table(folders)


def test_the_study_list_is_the_one_sweep_generates_from_the_summaries():
    assert (ROOT / "docs" / "studies" / "list.md").read_text() == sweep.study_list(ROOT / "docs" / "studies")


def test_run_all_regenerates_every_study_page():
    # Each page under docs/studies/ is made by studies/run_all.sh, so every page can be remade by one command.
    script = (ROOT / "studies" / "run_all.sh").read_text()
    words = set(re.findall(r"\w+", script))
    for page in sorted((ROOT / "docs" / "studies").glob("*.json")):
        assert page.stem in words, f"studies/run_all.sh does not make docs/studies/{page.stem}.md"


def test_every_relative_link_of_the_readme_and_docs_resolves():
    """The README is the front door to docs/: a moved or renamed page must not leave a dead link."""
    import re

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    dead = []
    for page in pages:
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # printed output is not a link
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                dead.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not dead, dead


# Pages whose commands a reader copies: the README, the site, the benchmarks' page and the recipes' comments.
COMMAND_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md",
                 *sorted((ROOT / "recipes").glob("*.yaml"))]
# Commands a page shows failing on purpose (the misspelt key of docs/guide/running.md's error example).
SHOWN_FAILING = {"recipes/simclr_fashion_mnist.yaml train.epohcs=1"}


def _pretrain_commands() -> list[tuple[str, str, list[str]]]:
    """Every ``selfsup pretrain [RECIPE] key=value ...`` in the pages: (page, recipe or "", overrides)."""
    import re
    import shlex

    found = []
    for page in COMMAND_PAGES:
        for match in re.finditer(r"selfsup pretrain ([^`|\n]*)", page.read_text()):
            recipe, overrides = "", []
            for word in shlex.split(match.group(1).strip().rstrip(").,;")):
                if word.startswith("#"):
                    break
                if "=" in word:
                    overrides.append(word)
                elif word.endswith(".yaml") and not recipe and not overrides:
                    recipe = word
                elif not word.startswith("-"):
                    break  # prose after the command
            if "<" not in recipe and not any(mark in word for word in overrides for mark in "<$"):  # placeholders
                found.append((page.relative_to(ROOT).as_posix(), recipe, overrides))
    return found


def test_every_pretrain_command_the_pages_show_reads_as_a_config():
    """A renamed key, a removed option or a recipe moved away must not leave a command that fails when
    copied: each is read as ``selfsup pretrain`` reads it (keys, types, method_args against the method)."""
    from selfsup.config import ConfigError, load_config

    commands = _pretrain_commands()
    assert len(commands) > 50  # the scan found the pages' commands (101 on 2026-12-06)
    failing, shown = [], set()
    for page, recipe, overrides in commands:
        text = " ".join([recipe, *overrides]).strip()
        try:
            load_config(ROOT / recipe if recipe else None, overrides)
        except (ConfigError, FileNotFoundError) as error:
            if text in SHOWN_FAILING:
                shown.add(text)
            else:
                failing.append(f"{page}: selfsup pretrain {text}: {error}")
        else:
            assert text not in SHOWN_FAILING, f"{page} shows `selfsup pretrain {text}` failing, and it reads"
    assert not failing, "\n".join(failing)
    assert shown == SHOWN_FAILING


def test_every_file_a_command_names_exists():
    """Recipes, studies, benchmarks, scripts and tutorials named in the pages (paths from the repository root)."""
    import re

    missing = []
    for page in [*COMMAND_PAGES, *sorted((ROOT / "studies").glob("*.yaml"))]:
        for path in re.findall(r"(?<![\w/.(\"])((?:recipes|studies|benchmarks|scripts|tutorials|tests)/[\w./-]+"
                               r"\.(?:yaml|py|sh|ipynb))", page.read_text()):
            if not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, missing


def _learning_bar():
    import importlib.util

    spec = importlib.util.spec_from_file_location("learning_bar", ROOT / "benchmarks" / "learning_bar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bar_verdicts_are_the_ones_learning_bar_writes_from_the_run_files():
    runs = sorted(p for p in (ROOT / "docs" / "runs" / "bar").iterdir() if (p / "results.json").is_file())
    assert (ROOT / "docs" / "results" / "bar_verdicts.md").read_text() == _learning_bar().verdict_table(runs)


def test_the_table_across_seeds_takes_each_seed_over_its_own_floor(tmp_path):
    def run(folder, name, linear, knn, shot, floors):
        (tmp_path / folder / name).mkdir(parents=True)
        evaluations = {key: {"accuracy": value, "random_init": {"accuracy": floor}} for key, value, floor in
                       zip(("linear", "knn", "fewshot_5way_5shot"), (linear, knn, shot), floors)}
        (tmp_path / folder / name / "results.json").write_text(json.dumps({"evaluations": evaluations}))

    run("s0", "a", 0.84, 0.75, 0.70, (0.82, 0.73, 0.66))  # gains 2, 2, 4 points: clears the bar
    run("s1", "a", 0.84, 0.76, 0.70, (0.83, 0.73, 0.68))  # gains 1, 3, 2: not (linear)
    run("s0", "b", 0.90, 0.90, 0.90, (0.80, 0.80, 0.80))  # only in one folder: left out
    table = _learning_bar().across_seeds_table([tmp_path / "s0", tmp_path / "s1"])
    assert table.startswith("0 of 1 recipes clear the bar")
    # linear: gains 2 and 1, mean 1.5, sample std sqrt(((0.5)^2 + (0.5)^2) / 1) = 0.7071
    row = "| a | 1 of 2 | +1.50 ± 0.71 (+2.00, +1.00) | +2.50 ± 0.71 (+2.00, +3.00) | +3.00 ± 1.41 (+4.00, +2.00) | " \
          "82.00-83.00% |"
    assert row in table.splitlines() and "| b |" not in table


def test_a_gain_of_exactly_the_bar_clears_it():
    # SimCLR's seed-0 kNN at 2169374: 74.94% over 72.94%, 200 of 10,000 test images, 0.01999... in floating point.
    assert 0.7494 - 0.7294 < 0.02
    results = {"evaluations": {"linear": {"accuracy": 0.8462, "random_init": {"accuracy": 0.8201}},
                               "knn": {"accuracy": 0.7494, "random_init": {"accuracy": 0.7294}}}}
    assert _learning_bar().verdict(results)[0] == "pass"
    results["evaluations"]["knn"]["accuracy"] = 0.7493
    assert _learning_bar().verdict(results)[0] == "FAIL"


@pytest.mark.parametrize("folders, table", [
    (["bar", "bar_seeds/*"], "bar_seeds.md"),                                  # today's recipes and code
    (["bar_1206/seed0", "bar_1206/seed1", "bar_1206/seed2"], "bar_seeds_1206.md"),  # before 2026-12-07's changes
])
def test_the_bar_across_seeds_is_the_table_learning_bar_writes_from_the_run_files(folders, table):
    runs = ROOT / "docs" / "runs"
    found = [path for pattern in folders for path in sorted(runs.glob(pattern))]
    assert len(found) >= 2
    assert (ROOT / "docs" / "results" / table).read_text() == _learning_bar().across_seeds_table(found)


def test_the_readme_headlines_are_the_ones_report_generates_from_the_run_files():
    import glob
    import re

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- headlines: selfsup report --headlines (.+?) -->\n(.*?)<!-- /headlines -->", readme, re.S)
    assert block, "the README's headline table sits between its <!-- headlines: ... --> markers"
    folders = [Path(p) for pattern in block[1].split() for p in sorted(glob.glob(str(ROOT / pattern)))]
    assert len(folders) >= 20
    assert block[2] == headline_table(folders)
