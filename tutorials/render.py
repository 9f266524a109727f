"""Run the tutorials and write their pages: ``python tutorials/render.py [OUT_DIR]`` (default docs/tutorials).

A tutorial is a Python script in the "percent" format: ``# %% [markdown]`` cells of comment lines
(the prose) and ``# %%`` cells of code. Each code cell runs, in order, in one namespace, with the
tutorial's own folder as the working directory; the page shows the prose, each cell's code and
what it printed. ``render(path)`` is what the test suite runs, so a tutorial that stops working
fails the suite, and the pages' code is always the scripts' code.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def cells(path: Path) -> list[tuple[str, str]]:
    """``(kind, text)`` of each cell: ``markdown`` (comment markers removed) or ``code``."""
    found: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            found.append(("markdown" if "[markdown]" in line else "code", []))
        elif found:
            found[-1][1].append(line)
    out = []
    for kind, lines in found:
        if kind == "markdown":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def render(path: Path, workdir: Path | None = None) -> str:
    """Run the tutorial at ``path`` and return its page (markdown)."""
    path = Path(path).resolve()
    namespace: dict = {"__name__": "__tutorial__"}
    parts = []
    previous = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(workdir or scratch)
        try:
            for kind, text in cells(path):
                if kind == "markdown":
                    parts.append(text)
                    continue
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    exec(compile(text, f"{path.name}", "exec"), namespace)
                parts.append(f"```python\n{text}\n```")
                if printed.getvalue().strip():
                    parts.append(f"```text\n{printed.getvalue().rstrip()}\n```")
        finally:
            os.chdir(previous)
    return "\n\n".join(parts) + "\n"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "docs" / "tutorials"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(ROOT.glob("[0-9]*.py")):
        (out / f"{path.stem}.md").write_text(render(path))
        print(out / f"{path.stem}.md")


if __name__ == "__main__":
    main()
