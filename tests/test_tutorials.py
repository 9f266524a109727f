"""The tutorials run, and their pages in docs/tutorials show exactly the scripts' code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9]*.py"))


def _render_module():
    spec = importlib.util.spec_from_file_location("tutorial_render", ROOT / "tutorials" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)\n```", page, flags=re.S)


def test_there_are_tutorials_and_each_has_a_page_in_the_nav():
    assert len(TUTORIALS) >= 3
    nav = (ROOT / "mkdocs.yml").read_text()
    for path in TUTORIALS:
        assert (ROOT / "docs" / "tutorials" / f"{path.stem}.md").is_file(), f"run python tutorials/render.py ({path.name})"
        assert f"tutorials/{path.stem}.md" in nav, f"{path.stem} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_page_code_is_the_script_code(path):
    """A page edited by hand, or a script changed without re-rendering, fails here."""
    render = _render_module()
    script_code = [text for kind, text in render.cells(path) if kind == "code"]
    page = (ROOT / "docs" / "tutorials" / f"{path.stem}.md").read_text()
    assert _code_blocks(page) == script_code


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    render = _render_module()
    page = render.render(path, workdir=tmp_path)
    # Every code cell ran (an exception would have propagated) and printed what its page shows.
    assert _code_blocks(page) == [text for kind, text in render.cells(path) if kind == "code"]
    assert "```text" in page
