"""Autograde nbgrader's own example submissions: every cell scores what nbgrader gave it."""

import re
import shutil

import nbformat
import pytest
from nbgrader import utils as nbutils

from qcoder_ds.grading.assign import assign_directory
from qcoder_ds.grading.autograde import autograde
from qcoder_ds.grading.export import export_grades
from qcoder_ds.grading.feedback import write_feedback
from qcoder_ds.grading.gradebook import GradebookStore
from qcoder_ds.grading.sandbox import Limits


@pytest.fixture(scope="module")
def graded(shared_dir, tmp_path_factory):
    ug = shared_dir / "compat" / "nbgrader" / "user_guide"
    course = tmp_path_factory.mktemp("course")
    gb = course / "gradebook.db"
    assign_directory(ug / "source" / "ps1", course / "release" / "ps1", gb)
    shutil.copytree(ug / "submitted", course / "submitted")
    summary = autograde(course / "submitted", "ps1", gb, jobs=2,
                        limits=Limits(cell_timeout=60, notebook_timeout=300))
    with GradebookStore(gb) as store:
        cells = store.cell_results("ps1")
        reports = store.submission_reports("ps1")
    return ug, course, summary, cells, reports


def test_every_cell_scores_as_nbgrader(graded):
    ug, course, summary, cells, _ = graded
    assert sorted(summary.graded) == ["bitdiddle", "hacker"] and not summary.failed
    compared = 0
    for student in ("bitdiddle", "hacker"):
        for name in ("problem1", "problem2"):
            theirs = nbformat.read(str(ug / "autograded" / student / "ps1" / f"{name}.ipynb"), 4)
            expected = {c.metadata.nbgrader["grade_id"]: nbutils.determine_grade(c)[0]
                        for c in theirs.cells if nbutils.is_grade(c)}
            ours = {c["grade_id"]: c["score"] for c in cells
                    if c["student"] == student and c["notebook"] == name
                    and c["kind"] in ("test", "manual")}
            assert ours == expected, (student, name)
            compared += len(expected)
    assert compared == 16


@pytest.mark.parametrize("student,notebook,total", [
    ("hacker", "problem1", 3.0), ("bitdiddle", "problem1", 1.5),
    ("hacker", "problem2", 0.0), ("bitdiddle", "problem2", 0.0)])
def test_totals_match_nbgraders_feedback_pages(graded, tmp_path, student, notebook, total):
    ug, course, _, cells, _ = graded
    page = (ug / "feedback" / student / "ps1" / f"{notebook}.html").read_text()
    theirs = float(re.search(rf"{notebook} \(Score: ([0-9.]+) / ([0-9.]+)\)", page).group(1))
    ours = sum(c["score"] or 0.0 for c in cells if c["student"] == student
               and c["notebook"] == notebook and c["kind"] in ("test", "manual", "task"))
    assert theirs == total and ours == pytest.approx(total)
    per_cell = [float(x) for x in re.findall(r"Score: ([0-9.]+) / [0-9.]+", page)]
    out = tmp_path / "fb"
    write_feedback(course / "gradebook.db", "ps1", course / "autograded", out, [student])
    md = (out / student / "ps1" / f"{notebook}.md").read_text()
    assert f"Score: **{total:g} / " in md
    # nbgrader's page lists each graded cell's score twice (summary, then inline)
    ours_cells = [c["score"] or 0.0 for c in cells if c["student"] == student
                  and c["notebook"] == notebook and c["kind"] in ("test", "manual", "task")]
    n = len(ours_cells)
    assert per_cell[1:1 + n] == pytest.approx(ours_cells)


def test_edits_to_tests_are_reported_and_undone(graded):
    _, course, _, _, reports = graded
    events = reports["bitdiddle"]["notebooks"][0]["events"]
    assert "test cell 'correct_squares' was edited; the instructor's copy was used" in events
    assert reports["hacker"]["notebooks"][0]["events"] == []
    executed = nbformat.read(str(course / "autograded" / "bitdiddle" / "ps1" / "problem1.ipynb"),
                             4)
    test = next(c for c in executed.cells
                if c.metadata.get("nbgrader", {}).get("grade_id") == "correct_squares")
    assert test.source.startswith('"""Check that squares returns')
    assert any(o.output_type == "error" and o.ename == "AssertionError" for o in test.outputs)


def test_export_has_nbgraders_columns(graded):
    _, course, _, _, _ = graded
    text = export_grades(course / "gradebook.db", "csv")
    lines = text.strip().splitlines()
    assert lines[0] == ("assignment,duedate,timestamp,student_id,last_name,first_name,email,"
                        "raw_score,late_submission_penalty,score,max_score")
    rows = {line.split(",")[3]: line.split(",") for line in lines[1:]}
    assert float(rows["hacker"][9]) == 3.0 and float(rows["bitdiddle"][9]) == 1.5
    assert float(rows["hacker"][10]) == 13.0
