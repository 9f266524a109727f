"""The documentation site: built with mkdocs --strict (a broken page, snippet or API reference fails),
and its result pages equal what the commands they name generate from the committed run files."""

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


def test_the_bar_verdicts_are_the_ones_learning_bar_writes_from_the_run_files():
    import importlib.util

    spec = importlib.util.spec_from_file_location("learning_bar", ROOT / "benchmarks" / "learning_bar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = sorted(p for p in (ROOT / "docs" / "runs" / "bar").iterdir() if (p / "results.json").is_file())
    assert (ROOT / "docs" / "results" / "bar_verdicts.md").read_text() == module.verdict_table(runs)


def test_the_readme_headlines_are_the_ones_report_generates_from_the_run_files():
    import glob
    import re

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- headlines: selfsup report --headlines (.+?) -->\n(.*?)<!-- /headlines -->", readme, re.S)
    assert block, "the README's headline table sits between its <!-- headlines: ... --> markers"
    folders = [Path(p) for pattern in block[1].split() for p in sorted(glob.glob(str(ROOT / pattern)))]
    assert len(folders) >= 20
    assert block[2] == headline_table(folders)
