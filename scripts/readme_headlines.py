"""Regenerate the README's headline table from the run folders its marker names.

    .venv/bin/python scripts/readme_headlines.py

The block between ``<!-- headlines: selfsup report --headlines RUNS... -->`` and ``<!-- /headlines -->``
is replaced by ``selfsup.evaluate.headline_table`` of those runs (globs expanded, sorted);
tests/test_docs.py checks that the committed block is what this writes.
"""

import glob
import re
from pathlib import Path

from selfsup.evaluate import headline_table

ROOT = Path(__file__).resolve().parent.parent
readme = ROOT / "README.md"
text = readme.read_text()
block = re.search(r"(<!-- headlines: selfsup report --headlines (.+?) -->\n)(.*?)(<!-- /headlines -->)", text, re.S)
if block is None:
    raise SystemExit("README.md has no <!-- headlines: selfsup report --headlines RUNS... --> block")
folders = [Path(p) for pattern in block[2].split() for p in sorted(glob.glob(str(ROOT / pattern)))]
readme.write_text(text[:block.start(3)] + headline_table(folders) + text[block.end(3):])
print(f"README.md: headlines of {len(folders)} runs")
