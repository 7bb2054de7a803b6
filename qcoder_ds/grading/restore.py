"""Rebuild the notebook to grade from the instructor's copy and the student's answers.

The instructor's marked cells (answers, tests, read-only and task cells) are the skeleton,
in the instructor's order, matched to the student's cells by ``grade_id``: every test and
read-only cell is the instructor's (hidden tests re-inserted, edits and metadata changes
undone, deleted cells put back); answer cells keep the student's text under the
instructor's metadata. The student's own unmarked cells stay where the student put them,
after the marked cell they followed. A student cell that claims a ``grade_id`` the
instructor never used, or a duplicate of one, loses its nbgrader metadata and earns nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from nbformat import NotebookNode
from nbgrader import utils as nbutils


@dataclass
class Restored:
    nb: NotebookNode
    events: list[str] = field(default_factory=list)


def _gid(cell) -> str | None:
    meta = cell.get("metadata", {}).get("nbgrader")
    if not isinstance(meta, dict):
        return None
    if not (meta.get("grade") or meta.get("solution") or meta.get("locked") or meta.get("task")):
        return None
    gid = meta.get("grade_id")
    return gid if isinstance(gid, str) and gid else None


def _plain(cell) -> NotebookNode:
    """A student cell as an ordinary cell: no nbgrader metadata, no stale outputs."""
    c = copy.deepcopy(cell)
    c.metadata.pop("nbgrader", None)
    if c.cell_type == "code":
        c.outputs = []
        c.execution_count = None
    return c


def restore(submitted: NotebookNode, instructor: NotebookNode,
            released: NotebookNode) -> Restored:
    """Merge a submission into the instructor's skeleton; ``events`` says what was undone."""
    marked = {_gid(c): c for c in instructor.cells if _gid(c)}
    released_by_id = {_gid(c): c for c in released.cells if _gid(c)}
    events: list[str] = []
    student_marked: dict[str, NotebookNode] = {}
    extras: dict[str | None, list[NotebookNode]] = {None: []}
    anchor: str | None = None
    for cell in submitted.cells:
        gid = _gid(cell)
        if gid is not None and gid in marked and gid not in student_marked:
            student_marked[gid] = cell
            anchor = gid
            continue
        if gid is not None:
            why = "is a duplicate of" if gid in student_marked else "claims"
            events.append(f"a cell that {why} grade id {gid!r} was treated as an ordinary cell")
        elif cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
            events.append("a cell marked as graded without a grade id was treated as ordinary")
        extras.setdefault(anchor, []).append(_plain(cell))

    cells: list[NotebookNode] = list(extras[None])
    for icell in instructor.cells:
        gid = _gid(icell)
        if gid is None:
            continue  # unmarked instructor cells belong to the student's copy
        scell = student_marked.get(gid)
        out = copy.deepcopy(icell)
        if nbutils.is_solution(icell):
            if scell is None:
                events.append(f"answer cell {gid!r} is missing from the submission; "
                              "graded as unanswered")
            else:
                out.source = scell.source
                _note_meta_change(scell, released_by_id.get(gid), gid, events)
        else:
            what = "test" if nbutils.is_grade(icell) else (
                "task" if nbutils.is_task(icell) else "read-only")
            if scell is None:
                events.append(f"{what} cell {gid!r} was deleted; the instructor's copy was "
                              "put back")
            else:
                rel = released_by_id.get(gid)
                if rel is not None and scell.source != rel.source:
                    events.append(f"{what} cell {gid!r} was edited; the instructor's copy was "
                                  "used")
                _note_meta_change(scell, rel, gid, events)
        if out.cell_type == "code":
            out.outputs = []
            out.execution_count = None
        cells.append(out)
        cells.extend(extras.get(gid, []))
    nb = copy.deepcopy(instructor)
    nb.cells = cells
    # nbformat 4.5 needs unique ids: extras may collide with instructor ids after a copy
    seen: set[str] = set()
    for i, c in enumerate(nb.cells):
        cid = c.get("id")
        if cid is None or cid in seen:
            c["id"] = f"qc{i:05d}"
        seen.add(c["id"])
    return Restored(nb, events)


def _note_meta_change(scell, rel, gid: str, events: list[str]) -> None:
    if rel is None:
        return
    smeta = dict(scell.metadata.get("nbgrader", {}))
    rmeta = dict(rel.metadata.get("nbgrader", {}))
    keys = ("grade", "solution", "locked", "task", "points", "grade_id")
    if any(smeta.get(k) != rmeta.get(k) for k in keys if k in rmeta or k in smeta):
        if not (smeta.get("locked") is None and rmeta.get("locked") is False):
            events.append(f"the nbgrader metadata of cell {gid!r} was changed; the "
                          "instructor's was used")
    if scell.cell_type != rel.cell_type:
        events.append(f"cell {gid!r} changed type to {scell.cell_type}; the instructor's type "
                      "was used")
