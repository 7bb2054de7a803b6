"""Small nbgrader assignments and student submissions, built in code for the grading tests."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SOLUTION = "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION"
VISIBLE = '"""add works on small numbers"""\nassert add(1, 2) == 3'
HIDDEN = ('"""add works on other numbers"""\nassert add(0, 0) == 0\n'
          "### BEGIN HIDDEN TESTS\nassert add(10, 5) == 15\nassert add(-7, 2) == -5\n"
          "### END HIDDEN TESTS")
HIDDEN_LINES = ["assert add(10, 5) == 15", "assert add(-7, 2) == -5"]


def _meta(grade_id: str, *, grade=False, solution=False, locked=False, points=None) -> dict:
    m = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
         "solution": solution}
    if points is not None:
        m["points"] = points
    return {"nbgrader": m}


def source_notebook() -> nbformat.NotebookNode:
    """An nbgrader source notebook: one answer, a visible test (1 pt), a hidden test (2 pt)."""
    nb = new_notebook(metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                               "name": "python3"}})
    nb.cells = [
        new_markdown_cell("# Adding\nWrite `add(a, b)`.", metadata=_meta("intro", locked=True)),
        new_code_cell(SOLUTION, metadata=_meta("add", solution=True)),
        new_code_cell(VISIBLE, metadata=_meta("test_visible", grade=True, points=1)),
        new_code_cell(HIDDEN, metadata=_meta("test_hidden", grade=True, points=2)),
        new_markdown_cell("Explain your approach.",
                          metadata=_meta("explain", grade=True, solution=True, points=1)),
    ]
    return nb


def write_source(course: Path, name: str = "adder") -> Path:
    d = course / "source" / name
    d.mkdir(parents=True, exist_ok=True)
    nbformat.write(source_notebook(), str(d / "problem.ipynb"))
    return d


def student_copy(released: nbformat.NotebookNode, answer: str | None,
                 edit=None) -> nbformat.NotebookNode:
    """The released notebook with the answer cell filled in, then ``edit(nb)`` applied."""
    nb = copy.deepcopy(released)
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "add" and answer is not None:
            c.source = answer
    if edit is not None:
        edit(nb)
    return nb


def cell_by_id(nb: nbformat.NotebookNode, grade_id: str):
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return c
    raise KeyError(grade_id)


def write_submission(root: Path, student: str, nb: nbformat.NotebookNode | str,
                     assignment: str = "adder", name: str = "problem") -> Path:
    d = root / student / assignment
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}.ipynb"
    if isinstance(nb, str):
        p.write_text(nb)
    else:
        nbformat.write(nb, str(p))
    return d
