"""Judge a study again from its stored summary when its runs' files are not at hand.

    .venv/bin/python studies/rejudge.py colorization_input r3m_language tcn_task vit_patch_projection

``selfsup sweep STUDY --summary-only`` reads the runs' folders; a study run on another machine keeps
only its summary (``docs/studies/<name>.json``: each point's per-seed values and floors). This applies
the current verdict rule (:func:`selfsup.sweep.verdict_of`) to those values and writes the page and the
summary again, numbers unchanged, the pictures kept, and a line saying when and by which rule the
verdicts were made. The runs' own commit stays on the page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from _page import DOCS, commit

from selfsup.sweep import load_study, page, study_list, verdict, verdicts

ROOT = Path(__file__).resolve().parent.parent


def rejudge(name: str, out: Path = DOCS) -> str:
    study = load_study(Path("studies") / f"{name}.yaml")  # from the repository root: the page's command as written
    stored = out / f"{name}.json"
    summary = json.loads(stored.read_text())
    old = (out / f"{name}.md").read_text(encoding="utf-8")
    made = re.search(r"\(selfsup commit (\w+)\)", old)
    word, sentence = verdict(study, summary)
    summary.update({"verdict": word, "verdict_text": sentence,
                    "verdicts": [{"claim": c, "verdict": w, "text": t} for c, w, t in verdicts(study, summary)],
                    "rejudged": time.strftime("%Y-%m-%d %H:%M:%S")})
    pictures = [path for path in (out / "img" / f"{study.name}_{metric}.png" for metric in study.metrics)
                if path.is_file()]
    text = page(study, summary, pictures, out / f"{name}.md", made[1] if made else None)
    text = text.rstrip("\n") + (f"\n\nVerdicts judged again from this summary at selfsup commit {commit()} by the paired "
                                f"rule (`python studies/rejudge.py {name}`; the runs' files are not on the machine "
                                f"that did it).\n")
    (out / f"{name}.md").write_text(text, encoding="utf-8")
    stored.write_text(json.dumps(summary, indent=2) + "\n")
    (out / "list.md").write_text(study_list(out), encoding="utf-8")
    return word


def main() -> None:
    os.chdir(ROOT)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="studies (studies/<name>.yaml, docs/studies/<name>.json)")
    for name in parser.parse_args().names:
        print(f"{name}: {rejudge(name)}", file=sys.stdout)


if __name__ == "__main__":
    main()
