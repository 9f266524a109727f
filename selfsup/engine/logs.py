"""The run's metrics as one CSV file that survives a resume.

Lightning's CSV logger deletes an existing ``metrics.csv`` when a run starts again, so a resumed
run would lose its first part. This writer keeps the rows up to the resumed step (dropping any
logged after the checkpoint by a run that was then killed) and appends from there.
"""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsCSV:
    """Rows of ``{"step": ..., metric: value}``; columns grow as new metrics appear.

    Args:
        path: the CSV file.
        resume_step: keep the rows of an existing file up to this step (None: start afresh).
    """

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as file:
                self.rows = [row for row in csv.DictReader(file) if float(row["step"]) <= resume_step]
        self.columns = ["step"] + sorted({key for row in self.rows for key in row} - {"step"})
        self._write()

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Append one row; rewrites the file only when a new column appears."""
        row = {"step": str(step), **{key: repr(float(value)) for key, value in metrics.items()}}
        self.rows.append(row)
        if set(row) - set(self.columns):
            self.columns += sorted(set(row) - set(self.columns))
            self._write()
            return
        with open(self.path, "a", newline="") as file:
            csv.DictWriter(file, self.columns).writerow(row)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as file:
            writer = csv.DictWriter(file, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
