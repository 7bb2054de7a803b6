"""The gradebook: nbgrader's own SQLite schema, plus our tables beside it in the same file.

nbgrader's tables (assignments, notebooks, grade/solution/task/source cells, students,
submissions, grades, comments) are written through nbgrader's ``Gradebook`` API, so
nbgrader's formgrader and exporters read our results. What nbgrader has no column for
lives in ``qcoder_*`` tables: each notebook's instructor and released copies (what
autograde restores from), and each graded cell's status and reason. A submission's grades
and its "done" row are committed in one transaction, so a crash loses at most the
submission being graded, and a rerun skips every submission already done.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from sqlalchemy import text

from qcoder_ds.grading.errors import GradebookError

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS qcoder_notebook_defs (
        assignment TEXT NOT NULL, notebook TEXT NOT NULL, position INTEGER NOT NULL,
        instructor_json TEXT NOT NULL, released_json TEXT NOT NULL, source_dir TEXT,
        PRIMARY KEY (assignment, notebook))""",
    """CREATE TABLE IF NOT EXISTS qcoder_submissions (
        assignment TEXT NOT NULL, student TEXT NOT NULL, finished_at TEXT NOT NULL,
        report_json TEXT NOT NULL, PRIMARY KEY (assignment, student))""",
    """CREATE TABLE IF NOT EXISTS qcoder_cells (
        assignment TEXT NOT NULL, student TEXT NOT NULL, notebook TEXT NOT NULL,
        grade_id TEXT NOT NULL, position INTEGER NOT NULL, kind TEXT NOT NULL,
        score REAL, max_score REAL NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
        error_json TEXT, PRIMARY KEY (assignment, student, notebook, grade_id))""",
]


@dataclass
class NotebookDef:
    """One notebook of an assignment, as released and as the instructor holds it."""

    name: str
    instructor: NotebookNode
    released: NotebookNode


def _alembic_head() -> str:
    """nbgrader's schema revision, read in-process.

    nbgrader asks for it by running the ``alembic`` command, which fails when the venv's
    bin/ is not on PATH and costs a subprocess per open; alembic's API gives the same answer.
    """
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from nbgrader import alembic as nb_alembic

    cfg = Config()
    cfg.set_main_option("script_location", list(nb_alembic.__path__)[0])
    return ScriptDirectory.from_config(cfg).get_current_head()


def _gradebook_cls():
    import nbgrader.api as api  # heavy import (SQLAlchemy models): only when used

    if getattr(api.get_alembic_version, "__module__", "") != __name__:
        api.get_alembic_version = _alembic_head
    return api.Gradebook


class GradebookStore:
    """Open (creating if needed) the SQLite gradebook at ``path``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.gb = _gradebook_cls()(f"sqlite:///{self.path}")
        except Exception as e:  # SQLAlchemy raises many kinds for a bad file
            raise GradebookError(f"{self.path}: cannot open the gradebook ({e})") from e
        for stmt in _SCHEMA:
            self.gb.db.execute(text(stmt))
        self.gb.db.commit()

    def close(self) -> None:
        self.gb.close()

    def __enter__(self) -> GradebookStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _q(self, sql: str, **params):
        return self.gb.db.execute(text(sql), params)

    # -- assignments ---------------------------------------------------------------------------

    def save_assignment(self, name: str, notebooks: list[NotebookDef], source_dir: str) -> None:
        """Record an assignment the way nbgrader's SaveCells does, plus both notebook copies."""
        from nbgrader.api import MissingEntry
        from nbgrader.preprocessors import SaveCells

        gb = self.gb
        try:
            assignment = gb.find_assignment(name)
        except MissingEntry:
            assignment = gb.add_assignment(name)
        old = {n.name for n in assignment.notebooks}
        new = {d.name for d in notebooks}
        if assignment.submissions and old != new:
            raise GradebookError(
                f"assignment {name!r} already has graded submissions; its notebooks cannot "
                f"change (had {sorted(old)}, now {sorted(new)})")
        for gone in old - new:
            gb.remove_notebook(gone, name)
        for d in notebooks:
            saver = SaveCells()
            resources = {"nbgrader": {"notebook": d.name, "assignment": name,
                                      "db_url": f"sqlite:///{self.path}"}}
            try:
                saver.preprocess(nbformat.from_dict(d.instructor), resources)
            except RuntimeError as e:
                raise GradebookError(f"{name}/{d.name}: {e}") from e
        # SaveCells used its own connection: drop what this session cached
        self.gb.db.expire_all()
        self._q("DELETE FROM qcoder_notebook_defs WHERE assignment=:a", a=name)
        for i, d in enumerate(notebooks):
            self._q("INSERT INTO qcoder_notebook_defs VALUES (:a,:n,:p,:i,:r,:s)", a=name,
                    n=d.name, p=i, i=nbformat.writes(d.instructor), r=nbformat.writes(d.released),
                    s=str(source_dir))
        self.gb.db.commit()

    def assignment_defs(self, name: str) -> list[NotebookDef]:
        rows = self._q("SELECT notebook, instructor_json, released_json FROM qcoder_notebook_defs "
                       "WHERE assignment=:a ORDER BY position", a=name).fetchall()
        if not rows:
            known = [r[0] for r in self._q(
                "SELECT DISTINCT assignment FROM qcoder_notebook_defs").fetchall()]
            if name in self.assignments():
                raise GradebookError(
                    f"assignment {name!r} in {self.path} was released by nbgrader, which keeps "
                    "no instructor copy we can restore from; run `qcoder grade assign "
                    f"source/{name} -o release/{name}` (AUTOTEST cells included) first")
            raise GradebookError(
                f"assignment {name!r} is not in {self.path}; run `qcoder grade assign` first"
                + (f" (known: {', '.join(sorted(known))})" if known else ""))
        return [NotebookDef(n, nbformat.reads(i, as_version=4), nbformat.reads(r, as_version=4))
                for n, i, r in rows]

    def source_dir(self, name: str) -> str | None:
        row = self._q("SELECT source_dir FROM qcoder_notebook_defs WHERE assignment=:a LIMIT 1",
                      a=name).fetchone()
        return row[0] if row else None

    # -- submissions ---------------------------------------------------------------------------

    def done_students(self, assignment: str) -> set[str]:
        return {r[0] for r in self._q(
            "SELECT student FROM qcoder_submissions WHERE assignment=:a", a=assignment)}

    def graded_fingerprints(self, assignment: str) -> dict[str, str | None]:
        """Each graded student's fingerprint of what was graded (None: graded before we
        kept one, so it is regraded once)."""
        return {s: json.loads(r).get("fingerprint") for s, r in self._q(
            "SELECT student, report_json FROM qcoder_submissions WHERE assignment=:a",
            a=assignment)}

    def record_submission(self, assignment: str, result: dict) -> None:
        """Write one graded submission: nbgrader grades + our rows, one commit at the end."""
        gb = self.gb
        student = result["student"]
        gb.update_or_create_student(student)
        kwargs = {}
        if result.get("timestamp"):
            kwargs["timestamp"] = result["timestamp"]
        with warnings.catch_warnings():
            # nbgrader builds submission rows before adding them to the session, which
            # SQLAlchemy 2 reports as autoflush warnings; the rows are added right after.
            warnings.simplefilter("ignore")
            try:
                gb.update_or_create_submission(assignment, student, **kwargs)
            except Exception:  # an unparsable timestamp.txt must not lose the grades
                gb.db.rollback()
                gb.update_or_create_submission(assignment, student)
        self._q("DELETE FROM qcoder_cells WHERE assignment=:a AND student=:s", a=assignment,
                s=student)
        for nbres in result["notebooks"]:
            for c in nbres["cells"]:
                grade = None
                if c["kind"] in ("test", "manual", "task"):
                    grade = gb.find_grade(c["grade_id"], nbres["notebook"], assignment, student)
                    grade.auto_score = c["score"]
                    grade.needs_manual_grade = (grade.manual_score is not None
                                                or c["score"] is None)
                if c.get("comment") is not None or c["kind"] in ("answer", "manual", "task"):
                    try:
                        comment = gb.find_comment(c["grade_id"], nbres["notebook"], assignment,
                                                  student)
                        comment.auto_comment = c.get("comment")
                    except Exception:  # grade-only cells have no comment row
                        pass
                if grade is not None or c["kind"] == "answer":
                    self._q("INSERT INTO qcoder_cells VALUES (:a,:s,:n,:g,:p,:k,:sc,:m,:st,:r,:e)",
                            a=assignment, s=student, n=nbres["notebook"], g=c["grade_id"],
                            p=c["position"], k=c["kind"], sc=c["score"], m=c["max_score"],
                            st=c["status"], r=c["reason"], e=json.dumps(c.get("error")))
        report = {k: v for k, v in result.items() if k != "notebooks"}
        report["notebooks"] = [{k: v for k, v in n.items() if k not in ("cells", "executed")}
                               for n in result["notebooks"]]
        self._q("INSERT OR REPLACE INTO qcoder_submissions VALUES (:a,:s,:t,:r)", a=assignment,
                s=student, t=datetime.now(timezone.utc).isoformat(), r=json.dumps(report))
        gb.db.commit()

    def cell_results(self, assignment: str, student: str | None = None) -> list[dict]:
        sql = ("SELECT student, notebook, grade_id, position, kind, score, max_score, status, "
               "reason, error_json FROM qcoder_cells WHERE assignment=:a")
        params = {"a": assignment}
        if student is not None:
            sql += " AND student=:s"
            params["s"] = student
        sql += " ORDER BY student, notebook, position"
        keys = ("student", "notebook", "grade_id", "position", "kind", "score", "max_score",
                "status", "reason", "error")
        out = []
        for row in self._q(sql, **params):
            d = dict(zip(keys, row, strict=True))
            d["error"] = json.loads(d["error"]) if d["error"] else None
            out.append(d)
        return out

    def submission_reports(self, assignment: str) -> dict[str, dict]:
        return {s: json.loads(r) for s, r in self._q(
            "SELECT student, report_json FROM qcoder_submissions WHERE assignment=:a "
            "ORDER BY student", a=assignment)}

    def assignments(self) -> list[str]:
        return [a.name for a in self.gb.assignments]
