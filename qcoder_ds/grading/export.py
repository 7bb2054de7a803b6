"""Export grades: nbgrader's CSV (its own exporter, same columns) or JSON with cell detail."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from qcoder_ds.grading.errors import GradingError
from qcoder_ds.grading.gradebook import GradebookStore
from qcoder_ds.paths import atomic_write_text

CSV_COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name",
               "email", "raw_score", "late_submission_penalty", "score", "max_score"]


def _csv_text(store: GradebookStore, assignments: list[str]) -> str:
    """Run nbgrader's CsvExportPlugin on our gradebook (it only writes to a path)."""
    from nbgrader.plugins.export import CsvExportPlugin

    tmp = store.path.with_name(f".{store.path.name}.export.{os.getpid()}.csv")
    try:
        CsvExportPlugin(to=str(tmp), assignment=assignments).export(store.gb)
        return tmp.read_text(encoding="utf-8")
    finally:
        tmp.unlink(missing_ok=True)


def export_grades(gradebook: str | os.PathLike, fmt: str = "csv",
                  assignments: list[str] | None = None,
                  out: str | os.PathLike | None = None) -> str:
    """The export as text; also written to ``out`` (atomically) when given."""
    if fmt not in ("csv", "json"):
        raise GradingError(f"unknown export format {fmt!r}: use csv or json")
    if not Path(gradebook).is_file():
        raise GradingError(f"{gradebook}: no gradebook here; run `qcoder grade assign` first")
    with GradebookStore(gradebook) as store:
        names = assignments or store.assignments()
        unknown = sorted(set(names) - set(store.assignments()))
        if unknown:
            raise GradingError(f"no such assignment(s) in {gradebook}: {', '.join(unknown)}")
        text = _csv_text(store, names)
        if fmt == "json":
            rows = list(csv.DictReader(io.StringIO(text)))
            for row in rows:
                for k in ("raw_score", "late_submission_penalty", "score", "max_score"):
                    row[k] = float(row[k]) if row[k] not in ("", None) else None
                cells = [c for c in store.cell_results(row["assignment"], row["student_id"])]
                row["cells"] = [{k: c[k] for k in ("notebook", "grade_id", "kind", "score",
                                                   "max_score", "status", "reason")}
                                for c in cells]
            text = json.dumps(rows, indent=2) + "\n"
    if out is not None:
        atomic_write_text(out, text)
    return text
