"""The `qcoder grade` commands end to end, and grading that resumes after a crash."""

import json

import nbformat
import pytest
from helpers import student_copy, write_source, write_submission

from qcoder_ds.cli import main
from qcoder_ds.grading.autograde import autograde
from qcoder_ds.grading.gradebook import GradebookStore
from qcoder_ds.grading.sandbox import Limits

RIGHT = "def add(a, b):\n    return a + b"
WRONG = "def add(a, b):\n    return a - b"


@pytest.fixture()
def course(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = write_source(tmp_path)
    assert main(["grade", "assign", str(src), "-o", "release/adder"]) == 0
    released = nbformat.read("release/adder/problem.ipynb", 4)
    for student, answer in (("ann", RIGHT), ("bob", WRONG), ("cid", RIGHT)):
        write_submission(tmp_path / "submitted", student, student_copy(released, answer))
    return tmp_path


class Crash(Exception):
    pass


def test_grading_resumes_after_a_crash(course):
    seen = []

    def crash_after_first(result):
        seen.append(result["student"])
        raise Crash("power cut")

    with pytest.raises(Crash):
        autograde(course / "submitted", "adder", course / "gradebook.db", jobs=1,
                  on_result=crash_after_first)
    with GradebookStore(course / "gradebook.db") as store:
        assert store.done_students("adder") == {"ann"}  # committed before the crash
    s = autograde(course / "submitted", "adder", course / "gradebook.db", jobs=1,
                  limits=Limits(cell_timeout=30))
    assert s.skipped == ["ann"] and sorted(s.graded) == ["bob", "cid"]
    with GradebookStore(course / "gradebook.db") as store:
        totals = {}
        for c in store.cell_results("adder"):
            if c["kind"] == "test":
                totals[c["student"]] = totals.get(c["student"], 0) + c["score"]
    assert totals == {"ann": 3.0, "bob": 0.0, "cid": 3.0}


def test_cli_autograde_feedback_export(course, capsys):
    assert main(["grade", "autograde", "submitted", "--assignment", "adder", "-j", "2",
                 "--student", "ann", "--student", "bob"]) == 0
    out = capsys.readouterr().out
    assert "ann: 3 points" in out and "bob: 0 points" in out and "graded 2" in out
    assert main(["grade", "feedback", "--assignment", "adder"]) == 0
    md = (course / "feedback" / "bob" / "adder" / "problem.md").read_text()
    assert "| test_visible | 0 / 1 | failed: the test raised AssertionError |" in md
    assert "assert add(10, 5) == 15" not in md
    capsys.readouterr()
    assert main(["grade", "export", "--format", "json", "-o", "grades.json"]) == 0
    rows = {r["student_id"]: r for r in json.loads((course / "grades.json").read_text())}
    assert rows["ann"]["score"] == 3.0 and rows["bob"]["score"] == 0.0
    assert {c["grade_id"] for c in rows["ann"]["cells"]} >= {"test_visible", "test_hidden"}
    assert main(["grade", "export"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("assignment,duedate,timestamp,student_id")


def test_cli_errors_are_clear(course, capsys):
    assert main(["grade", "autograde", "submitted", "--assignment", "nope"]) == 1
    err = capsys.readouterr().err
    assert "assignment 'nope' is not in" in err and "known: adder" in err
    assert main(["grade", "export", "--gradebook", "missing.db"]) == 1
    assert "no gradebook here" in capsys.readouterr().err
    assert main(["grade", "assign", "no/such/dir", "-o", "x"]) == 1
    assert "no such source folder" in capsys.readouterr().err


def test_cli_says_what_the_instructor_should_know(course, capsys):
    """Problems with a submission's files are on the command line, not only in the JSON
    report (issue 16): a stray notebook, a timestamp.txt that is not a date."""
    d = course / "submitted" / "ann" / "adder"
    (d / "scratch.ipynb").write_text("{}")
    (d / "timestamp.txt").write_text("next tuesday-ish")
    assert main(["grade", "autograde", "submitted", "--assignment", "adder", "-j", "1",
                 "--student", "ann"]) == 0
    out = capsys.readouterr().out
    assert "note: scratch.ipynb is not part of the assignment; ignored" in out
    assert "note: timestamp.txt holds 'next tuesday-ish', which is not a date" in out


def test_cli_warns_on_an_empty_submissions_folder(course, capsys):
    (course / "nobody").mkdir()
    assert main(["grade", "autograde", "nobody", "--assignment", "adder"]) == 0
    assert "warning: no submissions of adder under nobody" in capsys.readouterr().err


def test_resubmission_is_regraded_and_the_rest_resumed(course):
    """Resuming keys on what was graded, not on the student's name (issue 16)."""
    gb = course / "gradebook.db"
    autograde(course / "submitted", "adder", gb, jobs=1, students=["ann", "bob"])
    released = nbformat.read("release/adder/problem.ipynb", 4)
    write_submission(course / "submitted", "bob", student_copy(released, RIGHT))
    s = autograde(course / "submitted", "adder", gb, jobs=1, students=["ann", "bob"])
    assert s.graded == ["bob"] and s.skipped == ["ann"]
    with GradebookStore(gb) as store:
        bob = sum(c["score"] for c in store.cell_results("adder", "bob") if c["kind"] == "test")
    assert bob == 3.0
