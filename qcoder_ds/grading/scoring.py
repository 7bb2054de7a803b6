"""Score one graded cell by nbgrader's rules, from what the kernel reported for that cell.

nbgrader (``utils.determine_grade``): a test cell with an error or any stderr output
scores 0; one whose first ``execute_result`` reads as a number scores that many points
(clamped, partial credit); otherwise full points. An answer cell that is also graded
(written answer) scores 0 when unchanged and otherwise waits for a human.

We add: the kernel's own execute_reply status counts as an error even when no traceback
was displayed (an overridden ``showtraceback``); a test that timed out, was cut off by the
output limit, never ran because the kernel died, or ran after the guard found tampering,
scores 0 with that reason.
"""

from __future__ import annotations

import logging
import re

from nbformat import NotebookNode
from nbgrader import utils as nbutils

from qcoder_ds.grading.kernel import CellRun

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_log = logging.getLogger("qcoder_ds.grading")


def strip_ansi(s: str) -> str:
    return _ANSI.sub("", s)


def first_error(outputs: list) -> dict | None:
    for o in outputs:
        if o.get("output_type") == "error":
            return {"ename": o.get("ename", ""), "evalue": o.get("evalue", ""),
                    "traceback": [strip_ansi(t) for t in o.get("traceback", [])]}
    return None


def cell_kind(cell: NotebookNode) -> str | None:
    """test (autograded code), manual (graded answer), task, answer (ungraded), or None."""
    if nbutils.is_task(cell):
        return "task"
    if nbutils.is_grade(cell):
        if nbutils.is_solution(cell) or cell.cell_type != "code":
            return "manual"
        return "test"
    if nbutils.is_solution(cell):
        return "answer"
    return None


def score_cell(cell: NotebookNode, run: CellRun | None, tamper: list[str]) -> dict:
    """The score, status and reason of one marked cell after its notebook ran."""
    meta = cell.metadata.nbgrader
    kind = cell_kind(cell)
    max_score = float(meta.get("points", 0) or 0) if kind in ("test", "manual", "task") else 0.0
    res = {"grade_id": meta["grade_id"], "kind": kind, "max_score": max_score, "score": None,
           "status": "ok", "reason": "", "error": None, "comment": None}
    unchanged = meta.get("checksum") == nbutils.compute_checksum(cell)
    if kind in ("answer", "manual"):
        if unchanged:
            res["comment"] = "No response."
    if kind == "task":
        res["status"], res["reason"] = "manual", "graded by hand"
        return res
    if kind == "manual":
        if unchanged:
            res.update(score=0.0, status="no-response", reason="the answer was left unchanged")
        else:
            res.update(status="manual", reason="graded by hand")
        return res
    if kind == "answer":
        res["status"] = "no-response" if unchanged else "answered"
        return res
    # an autograded test cell
    if run is None or run.status == "not-run":
        why = run.reason if run is not None and run.reason else "the notebook stopped earlier"
        res.update(score=0.0, status="not-run", reason=f"the test did not run: {why}")
        return res
    res["error"] = first_error(run.outputs)
    if run.status in ("timeout", "dead", "output-limit"):
        res.update(score=0.0, status=run.status, reason=run.reason)
        return res
    if tamper:
        res.update(score=0.0, status="tampered",
                   reason="grading was interfered with: " + "; ".join(tamper))
        return res
    if run.status != "ok" or res["error"] is not None:
        err = res["error"]
        name = err["ename"] if err else "an error (no traceback was shown)"
        res.update(score=0.0, status="failed", reason=f"the test raised {name}")
        return res
    for o in run.outputs:
        if o.get("output_type") == "stream" and o.get("name") == "stderr":
            res.update(score=0.0, status="failed", reason="the test wrote to stderr")
            return res
        if o.get("output_type") == "execute_result":
            partial = nbutils.get_partial_grade(o, max_score, _log)
            res.update(score=float(partial), status="partial" if partial < max_score else "passed",
                       reason="" if partial >= max_score else
                       f"partial credit: {partial:g} of {max_score:g}")
            return res
    res.update(score=max_score, status="passed")
    return res
