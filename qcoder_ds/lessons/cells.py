"""The nbgrader cells of one exercise: prompt, data set-up, answer, visible and hidden tests.

Cell metadata follows nbgrader's schema v3 exactly (it rejects extra keys); what we need
ourselves (exercise number, template, role) lives under ``metadata.qcoder``.
"""

from __future__ import annotations

import json
import re

from qcoder_ds.lessons.exercise import Exercise

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
VISIBLE_POINTS = 1

_TITLES = {"dataframe": "a DataFrame", "series": "a Series", "scalar": "a value",
           "query": "a SQL query", "figure": "a figure"}


def nbgrader_meta(grade_id: str, *, grade: bool = False, solution: bool = False,
                  locked: bool = False, points: float | None = None) -> dict:
    """Schema-v3 ``metadata.nbgrader`` for one cell."""
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked,
            "schema_version": 3, "solution": solution, "task": False}
    if grade:
        meta["points"] = points if points is not None else 0
    return meta


def stub_of(source: str) -> str:
    """What nbgrader's ClearSolutions leaves of a solution region (Python code cells)."""
    out: list[str] = []
    inside = False
    for line in source.splitlines():
        if line.strip() == BEGIN_SOLUTION:
            indent = re.match(r"\s*", line).group(0)
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError()"]
            inside = True
        elif line.strip() == END_SOLUTION:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def answer_cell(code: str) -> str:
    """The solution cell's text: the code between nbgrader's solution delimiters."""
    return f"{BEGIN_SOLUTION}\n{code.strip()}\n{END_SOLUTION}"


def _answer_expr(ex: Exercise) -> str:
    if ex.kind == "query":
        return f"query_rows(conn, {ex.answer})"
    return ex.answer


def visible_test(ex: Exercise, form: dict) -> str:
    """Checks the learner can run: the answer's type and shape, not its values."""
    imports = "check_form, query_rows" if ex.kind == "query" else "check_form"
    return "\n".join([
        f"# Run this cell to check the form of your answer ({_TITLES[ex.kind]}).",
        f"from qcoder_checks import {imports}",
        "",
        f"check_form({_answer_expr(ex)}, {json.dumps(form)}, name={ex.answer!r})",
        *ex.tests,
    ])


def hidden_test(ex: Exercise) -> str:
    """Checks run when grading: the answer's values against the reference solution's."""
    ref = f"run_reference({ex.setup!r}, {ex.solution!r}, {ex.answer!r})"
    if ex.kind == "dataframe":
        fn, call = "check_frame", (f"check_frame({ex.answer}, _expected, ordered={ex.ordered}, "
                                   f"check_index={ex.check_index}, rtol={ex.rtol}, "
                                   f"name={ex.answer!r})")
    elif ex.kind == "series":
        fn, call = "check_series", (f"check_series({ex.answer}, _expected, ordered={ex.ordered}, "
                                    f"check_index={ex.check_index}, rtol={ex.rtol}, "
                                    f"name={ex.answer!r})")
    elif ex.kind == "scalar":
        fn, call = "check_scalar", f"check_scalar({ex.answer}, _expected, rtol={ex.rtol}, " \
                                   f"name={ex.answer!r})"
    elif ex.kind == "query":
        fn, call = "check_query", f"check_query(conn, {ex.answer}, _expected, " \
                                  f"ordered={ex.ordered})"
    else:
        fn, call = "check_figure", f"check_figure({ex.answer}, _expected, name={ex.answer!r})"
    return "\n".join([
        "# Hidden tests check the values of your answer when the notebook is graded.",
        BEGIN_HIDDEN,
        f"from qcoder_checks import {fn}, run_reference",
        "",
        f"_expected = {ref}",
        call,
        END_HIDDEN,
    ])


def prompt_markdown(ex: Exercise, title: str) -> str:
    total = VISIBLE_POINTS + ex.points
    return (f"## Exercise {ex.number}: {title}\n\n*{ex.level}, {total} point"
            f"{'s' if total != 1 else ''}*\n\n{ex.prompt}")


def build_cells(ex: Exercise, form: dict, title: str) -> list[dict]:
    """The five cells of an exercise, as ``{cell_type, source, metadata}`` dicts."""
    g = ex.grade_id
    own = {"exercise": ex.number, "template": ex.key, "level": ex.level, "kind": ex.kind,
           "answer": ex.answer, "origin": ex.origin}

    def cell(kind: str, source: str, role: str, nb: dict) -> dict:
        return {"cell_type": kind, "source": source,
                "metadata": {"nbgrader": nb, "qcoder": {**own, "role": role}}}

    return [
        cell("markdown", prompt_markdown(ex, title), "prompt",
             nbgrader_meta(f"{g}_prompt", locked=True)),
        cell("code", ex.setup, "setup", nbgrader_meta(f"{g}_setup", locked=True)),
        cell("code", answer_cell(ex.solution), "answer",
             nbgrader_meta(f"{g}_answer", solution=True)),
        cell("code", visible_test(ex, form), "visible",
             nbgrader_meta(f"{g}_visible", grade=True, locked=True, points=VISIBLE_POINTS)),
        cell("code", hidden_test(ex), "hidden",
             nbgrader_meta(f"{g}_hidden", grade=True, locked=True, points=ex.points)),
    ]
