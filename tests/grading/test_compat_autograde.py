"""nbgrader's own autograde scenarios, run against ``qcoder grade``.

Each test names the scenario of ``nbgrader/tests/apps/test_nbgrader_autograde.py``
(jupyter/nbgrader, 0.9) it reproduces, on the same inputs (rebuilt in
``nbgrader_scenarios.py``), and asserts what nbgrader's test asserts, read back through
nbgrader's own ``Gradebook`` API. Where qcoder differs on purpose the test asserts our
behaviour and says so (``DIFFERS``); docs/grading.md lists why. Scenarios about options qcoder
does not have are listed in ``NOT_APPLICABLE``.

nbgrader grades each scenario as its own assignment; to start fewer kernels, the scenarios
that share nothing are notebooks of one assignment (scores are per notebook, as nbgrader's
asserts read them) and students of one batch.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell
from nbgrader.api import MissingEntry
from nbgrader_scenarios import (
    AUTOTESTS_YML,
    CHANGED,
    MULTI_CHANGED,
    answered,
    autotest,
    cheat,
    infinite_loop,
    ps1,
    squares,
    timeout,
    validating_env,
)

from qcoder_ds.cli import main
from qcoder_ds.grading.gradebook import GradebookStore

pytestmark = pytest.mark.slow

DUE = "2015-02-02 14:58:23.948203 America/Los_Angeles"
NOT_APPLICABLE = {  # scenario: why it has no qcoder counterpart
    "test_student_id_exclude": "no --CourseDirectory.student_id_exclude (use --student)",
    "test_late_submission_penalty_zero": "late penalties are nbgrader plugins",
    "test_late_submission_penalty_plugin": "late penalties are nbgrader plugins",
    "test_filter_notebook": "no --notebook filter",
    "test_force_single_notebook": "no --notebook filter",
    "test_update_newer_single_notebook": "no --notebook filter",
    "test_handle_failure_single_notebook": "no --notebook filter",
    "test_permissions": "no file-permission options",
    "test_custom_permissions": "no file-permission options",
    "test_no_execute": "no --no-execute",
    "test_many_students": "skipped by nbgrader itself (needs postgres)",
    "test_infinite_loop_with_output": "skipped by nbgrader itself",
}


class Course:
    """A course folder driven through the ``qcoder grade`` command line."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def source(self, name: str, nb, files: dict | None = None) -> None:
        d = self.root / "source" / "ps1"
        d.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(d / f"{name}.ipynb"))
        for rel, text in (files or {}).items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)

    def assign(self) -> int:
        rc = main(["grade", "assign", "source/ps1", "-o", "release/ps1"])
        if rc == 0:
            with GradebookStore(self.root / "gradebook.db") as store:
                store.gb.update_or_create_assignment("ps1", duedate=DUE)
        return rc

    def released(self, name: str):
        return nbformat.read(str(self.root / "release" / "ps1" / f"{name}.ipynb"), 4)

    def submit(self, student: str, name: str | None = None, nb=None, timestamp=None,
               files: dict | None = None) -> Path:
        d = self.root / "submitted" / student / "ps1"
        d.mkdir(parents=True, exist_ok=True)
        if name is not None:
            nbformat.write(nb, str(d / f"{name}.ipynb"))
        if timestamp is not None:
            (d / "timestamp.txt").write_text(timestamp)
        for rel, text in (files or {}).items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
        return d

    def autograde(self, *args: str) -> int:
        return main(["grade", "autograde", "submitted", "--assignment", "ps1", "-j", "2",
                     *args])

    def autograded(self, student: str, rel: str = "") -> Path:
        return self.root / "autograded" / student / "ps1" / rel

    def notebook(self, student: str, name: str) -> tuple[float, float, bool]:
        with GradebookStore(self.root / "gradebook.db") as store:
            nb = store.gb.find_submission_notebook(name, "ps1", student)
            return nb.score, nb.max_score, nb.needs_manual_grade

    def submission(self, student: str):
        store = GradebookStore(self.root / "gradebook.db")
        try:
            s = store.gb.find_submission("ps1", student)
            return {"late": s.total_seconds_late, "timestamp": s.timestamp,
                    "penalty": [n.late_submission_penalty for n in s.notebooks]}
        finally:
            store.close()

    def cells(self, student: str) -> list[dict]:
        with GradebookStore(self.root / "gradebook.db") as store:
            return store.cell_results("ps1", student)

    def report(self, student: str) -> dict:
        with GradebookStore(self.root / "gradebook.db") as store:
            return store.submission_reports("ps1")[student]


FILES = {"data.csv": "some,data\n", "helper.py": "print('hello!')\n",
         "subdir/data.csv": "some,data\n", "subdir/helper.py": "print('hello!')\n",
         "foo.txt": "foo", "data/bar.txt": "bar"}
SQUARES_ANSWERS = {  # test-hidden-tests.ipynb as released with nbgrader's empty code stub
    "squares": "def squares(n):\n    # YOUR CODE HERE\n    if n < 1:\n        raise ValueError"
               "('n < 1')\n    return {1: [1], 2: [1, 4], 10: [1, 4, 9, 16, 25, 36, 49, 64, 81,"
               " 100]}.get(n)",
    "sum_of_squares": "def sum_of_squares(n):\n    # YOUR CODE HERE\n    squares(10)\n"
                      "    return {1: 1, 2: 5, 10: 385}.get(n)",
}
SLEEPER = timeout().cells[0].source  # nbgrader submits timeout.ipynb itself
WRITER = "a = 1\nwith open('side-effect.txt', 'w') as fh:\n    fh.write('a side effect')"
# student: (notebook, answers, timestamp, files, kernel)
BATCH = {
    "foo": ("p1", None, None, None, None),
    "bar": ("p1", CHANGED, None, None, None),
    "spam": ("p1", cheat("lambda *args, **kwargs : None"), None, None, None),
    "eggs": ("p1", cheat("None"), None, None, None),
    "late": ("p1", None, "2015-02-02 15:58:23.948203 America/Los_Angeles", None, None),
    "early": ("p1", CHANGED, "2015-02-01 14:58:23.948203 America/Los_Angeles", None, None),
    "blank_ts": ("p1", None, "", None, None),
    "bad_ts": ("p1", CHANGED, "But I want to be a timestamp string :(", None, None),
    "files": ("p1", None, "2015-02-02 15:58:23.948203 America/Los_Angeles",
              {"data.csv": "some,other,data\n", "helper.py": "print('this is different!')\n",
               "subdir/data.csv": "some,other,data\n",
               "subdir/helper.py": "print('this is different!')\n", "blah.pyc": "asdf"}, None),
    "writer": ("p1", {**CHANGED, "set_a": WRITER}, None, None, None),
    "extra": ("p1", CHANGED, None, None, None),
    "blarg": ("p1", None, None, None, "blarg"),
    "hidden": ("squares", SQUARES_ANSWERS, None, None, None),
    "env": ("env", None, None, None, None),
    "slow": ("timeout", {"squares": SLEEPER}, None, None, None),
    "stranger": ("p2", None, None, None, None),
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbgrader-scenarios")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    c = Course(root)
    c.source("p1", ps1(), FILES)
    c.source("p2", ps1())
    c.source("squares", squares())
    c.source("env", validating_env())
    c.source("timeout", timeout())
    c.source("loop", infinite_loop())
    assert c.assign() == 0
    for student, (name, answers, ts, files, kernel) in BATCH.items():
        nb = answered(c.released(name), answers, kernel)
        if student == "stranger":  # test.ipynb's cells, unknown to this assignment
            nb.cells.append(new_code_cell("assert True", metadata={"nbgrader": {
                "grade": True, "grade_id": "correct_squares", "points": 1.0, "locked": False,
                "solution": False, "schema_version": 3}}))
        c.submit(student, name, nb, ts, files)
    c.submit("extra", "p1 copy", c.released("p1"))
    c.submit("empty")  # an empty folder
    rc = c.autograde("--cell-timeout", "30")
    yield c, rc
    mp.undo()


def test_help(capsys):
    """test_help: the help displays without error."""
    with pytest.raises(SystemExit) as e:
        main(["grade", "autograde", "--help"])
    assert e.value.code == 0 and "--force" in capsys.readouterr().out


SCORES = [  # scenario, student, notebook, (score, max score, needs manual grade)
    ("test_grade", "foo", "p1", (1, 7, False)),
    ("test_grade", "bar", "p1", (2, 7, True)),
    ("test_showtraceback_exploit", "spam", "p1", (1, 7, True)),
    ("test_showtraceback_exploit", "eggs", "p1", (1, 7, True)),
    ("test_missing_student", "extra", "p1", (2, 7, True)),
    ("test_late_submission_penalty_none", "late", "p1", (1, 7, False)),
    ("test_late_submission_penalty_none", "early", "p1", (2, 7, True)),
    ("test_grade_missing_notebook", "bar", "p2", (0, 7, False)),
    ("test_hidden_tests_single_notebook", "hidden", "squares", (1.5, 3, False)),
    ("test_grade_with_validating_envvar", "env", "env", (0, 1, False)),
    ("test_autograde_timeout (default time limit)", "slow", "timeout", (1, 1, False)),
    ("test_incorrect_submitted_kernelspec", "blarg", "p1", (1, 7, False)),
    # DIFFERS: nbgrader stops on the unknown kernel; the instructor's kernel is used
    ("test_missing_source_kernelspec", "blarg", "p1", (1, 7, False)),
    # DIFFERS: nbgrader fails a notebook holding grade cells it does not know; we grade
    # them as ordinary cells and report it
    ("test_handle_failure", "stranger", "p2", (1, 7, False)),
]


@pytest.mark.parametrize("scenario,student,name,expected", SCORES,
                         ids=[f"{s}-{st}-{n}" for s, st, n, _ in SCORES])
def test_scores_as_nbgrader(batch, scenario, student, name, expected):
    c, rc = batch
    assert rc == 0
    assert c.notebook(student, name) == pytest.approx(expected), [
        (x["grade_id"], x["reason"]) for x in c.cells(student) if x["notebook"] == name]


def test_grade_comments_and_files(batch):
    """test_grade: unchanged answers get nbgrader's "No response." comment, changed ones
    none; autograded/ holds the notebook and no timestamp.txt where none was submitted."""
    c, _ = batch
    with GradebookStore(c.root / "gradebook.db") as store:
        for student, expected in (("foo", "No response."), ("bar", None)):
            for gid in ("set_a", "baz", "quux"):
                assert store.gb.find_comment(gid, "p1", "ps1", student).comment == expected
    for student in ("foo", "bar", "spam", "eggs"):
        assert c.autograded(student, "p1.ipynb").is_file()
        assert not c.autograded(student, "timestamp.txt").exists()


def test_showtraceback_exploit_is_reported_once(batch):
    """test_showtraceback_exploit: both variants of the cheat are undone and reported."""
    c, _ = batch
    for student in ("spam", "eggs"):
        events = next(n for n in c.report(student)["notebooks"] if n["notebook"] == "p1")[
            "events"]
        cheats = [e for e in events if "InteractiveShell.showtraceback" in e]
        assert len(cheats) == 1 and "undone" in cheats[0], (student, events)


@pytest.mark.parametrize("student,late,ts_file", [
    ("late", True, "2015-02-02 15:58:23.948203 America/Los_Angeles"),
    ("early", False, "2015-02-01 14:58:23.948203 America/Los_Angeles"),
    ("blank_ts", False, ""),
])
def test_grade_timestamp(batch, student, late, ts_file):
    """test_grade_timestamp, test_grade_empty_timestamp, test_late_submission_penalty_none:
    the timestamp is read, lateness computed against the due date, no penalty applied."""
    c, _ = batch
    sub = c.submission(student)
    assert (sub["late"] > 0) == late and sub["penalty"] == [None] * 6
    assert c.autograded(student, "timestamp.txt").read_text() == ts_file


def test_invalid_timestamp_is_graded_with_a_note(batch, capsys):
    """test_grade_empty_timestamp, invalid part. DIFFERS: nbgrader fails the student; we grade
    and say the file is not a date (command line, report, feedback)."""
    c, _ = batch
    assert c.notebook("bad_ts", "p1") == (2, 7, True)
    assert c.submission("bad_ts")["timestamp"] is None
    assert any("timestamp.txt holds" in p for p in c.report("bad_ts")["problems"])
    assert main(["grade", "feedback", "--assignment", "ps1", "--student", "bad_ts"]) == 0
    assert "not a date" in (c.root / "feedback" / "bad_ts" / "ps1" / "p1.md").read_text()


@pytest.mark.parametrize("rel,expected", [
    ("data.csv", "some,data\n"),
    ("subdir/data.csv", "some,data\n"),
    # DIFFERS: nbgrader's Autograde.exclude_overwriting keeps the student's helper.py; we
    # always run the instructor's copy (a student who edits what the tests import gains
    # nothing)
    ("helper.py", "print('hello!')\n"),
    ("subdir/helper.py", "print('hello!')\n"),
    ("timestamp.txt", "2015-02-02 15:58:23.948203 America/Los_Angeles"),
])
def test_grade_overwrite_files(batch, rel, expected):
    """test_grade_overwrite_files(_subdirs): autograded/ holds the files as graded."""
    c, _ = batch
    assert c.autograded("files", rel).read_text() == expected
    assert not c.autograded("files", "blah.pyc").exists()


def test_side_effects(batch):
    """test_side_effects: a file the notebook wrote is in autograded/, not in submitted/."""
    c, _ = batch
    assert c.autograded("writer", "side-effect.txt").read_text() == "a side effect"
    assert not (c.root / "submitted" / "writer" / "ps1" / "side-effect.txt").exists()


def test_skip_extra_notebooks(batch):
    """test_skip_extra_notebooks: "p1 copy.ipynb" is not graded nor copied, and said."""
    c, _ = batch
    assert c.autograded("extra", "p1.ipynb").is_file()
    assert not c.autograded("extra", "p1 copy.ipynb").exists()
    assert "p1 copy.ipynb is not part of the assignment; ignored" in c.report("extra")[
        "problems"]


def test_missing_files(batch):
    """test_missing_files: an empty folder is skipped, not recorded."""
    c, _ = batch
    assert not (c.root / "autograded" / "empty").exists()
    with GradebookStore(c.root / "gradebook.db") as store, pytest.raises(MissingEntry):
        store.gb.find_submission("ps1", "empty")


def test_grade_missing_notebook(batch):
    """test_grade_missing_notebook: no autograded copy of a notebook not submitted."""
    c, _ = batch
    assert not c.autograded("bar", "p2.ipynb").exists()


def test_timeout_and_infinite_loop(batch):
    """test_autograde_timeout (2 s limit) and test_infinite_loop (1 s): the test times out and
    scores 0; a notebook that never ends is still written to autograded/."""
    c, _ = batch
    c.submit("slow2", "timeout", answered(c.released("timeout"), {"squares": SLEEPER}))
    c.submit("loop", "loop", c.released("loop"))
    assert c.autograde("--student", "slow2", "--student", "loop", "--cell-timeout", "2") == 0
    assert c.notebook("slow2", "timeout") == (0, 1, False)
    assert c.autograded("loop", "loop.ipynb").is_file()


def test_missing_assignment(batch, capsys):
    """test_missing_assignment: grading an assignment not in the gradebook fails."""
    assert main(["grade", "autograde", "submitted", "--assignment", "ps2"]) == 1
    assert "'ps2' is not in" in capsys.readouterr().err


def test_incorrect_source_kernelspec(tmp_path, monkeypatch, capsys):
    """test_incorrect_source_kernelspec. DIFFERS: nbgrader fails at autograde; we refuse the
    source notebook at assign, before any student is graded."""
    from nbgrader_scenarios import notebook

    monkeypatch.chdir(tmp_path)
    c = Course(tmp_path)
    c.source("p1", notebook([], kernel="blah", language="blah"))
    assert c.assign() == 1
    assert "Python notebooks only" in capsys.readouterr().err


@pytest.fixture()
def small(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = Course(tmp_path)
    c.source("p1", ps1(), {"foo.txt": "foo", "data/bar.txt": "bar"})
    assert c.assign() == 0
    return c


@pytest.mark.parametrize("flag", ["--force", "-f"])
def test_force(small, flag):
    """test_force, test_force_f: supplemental files copied (not *.pyc); a rerun skips what
    is graded; --force regrades and leaves no file of the previous grading."""
    c = small
    c.submit("foo", "p1", c.released("p1"), files={"foo.txt": "foo", "data/bar.txt": "bar",
                                                   "blah.pyc": "asdf"})
    assert c.autograde() == 0
    assert c.autograded("foo", "foo.txt").is_file() and c.autograded("foo", "data/bar.txt")
    assert not c.autograded("foo", "blah.pyc").exists()
    c.autograded("foo", "foo.txt").unlink()
    assert c.autograde() == 0
    assert not c.autograded("foo", "foo.txt").exists()  # skipped: nothing changed
    assert c.autograde(flag) == 0
    assert c.autograded("foo", "foo.txt").is_file()
    (c.root / "source" / "ps1" / "foo.txt").unlink()
    (c.root / "submitted" / "foo" / "ps1" / "foo.txt").unlink()
    assert c.autograde(flag) == 0
    assert not c.autograded("foo", "foo.txt").exists()
    assert c.autograded("foo", "p1.ipynb").is_file() and c.autograded("foo", "data/bar.txt")


def test_update_newer(small):
    """test_update_newer: a resubmission (new notebook, newer timestamp) is regraded without
    --force; autograded/ holds the new notebook and timestamp."""
    c = small
    c.submit("foo", "p1", c.released("p1"), "2015-02-02 15:58:23.948203 America/Los_Angeles")
    assert c.autograde() == 0
    assert c.notebook("foo", "p1") == (1, 7, False)
    before = c.autograded("foo", "p1.ipynb").read_text()
    c.submit("foo", "p1", answered(c.released("p1"), CHANGED),
             "2015-02-02 16:58:23.948203 America/Los_Angeles")
    assert c.autograde() == 0
    assert c.notebook("foo", "p1") == (2, 7, True)
    assert c.autograded("foo", "timestamp.txt").read_text() == \
        "2015-02-02 16:58:23.948203 America/Los_Angeles"
    assert c.autograded("foo", "p1.ipynb").read_text() != before


def test_missing_files_then_submitted(small, capsys):
    """test_missing_files, continued: the notebook that arrives later is graded."""
    c = small
    c.submit("bar")
    assert c.autograde() == 0
    assert "no notebook yet 1 (bar)" in capsys.readouterr().out
    c.submit("bar", "p1", answered(c.released("p1"), CHANGED))
    assert c.autograde() == 0
    assert c.notebook("bar", "p1") == (2, 7, True)


AUTOTEST_SCORES = [  # scenario, student, notebook, (score, max score)
    ("test_grade_autotest", "foo", "simple", (0, 1)),
    ("test_grade_autotest", "bar", "simple", (1, 1)),
    ("test_grade_hashed_autotest", "foo", "hashed", (0, 1)),
    ("test_grade_hashed_autotest", "bar", "hashed", (1, 1)),
    ("test_grade_complex_autotest", "foo", "multi", (0, 4)),
    ("test_grade_complex_autotest", "bar", "multi", (3, 4)),
    ("test_hidden_tests_autotest", "foo", "hidden", (0, 1)),
    ("test_hidden_tests_autotest", "bar", "hidden", (0, 1)),
    ("test_hidden_tests_autotest", "baz", "hidden", (1, 1)),
]
AUTOTEST_ANSWERS = {
    "bar": {"simple": "a = 5\nb = 'hello'\nc = [1, 2, 'test']",
            "hashed": "a = 5\nb = 'hello'\nc = [1, 2, 'test']",
            "multi": MULTI_CHANGED, "hidden": "a = 7\nb = 'notright'\nc = [3, 4, 'hi']"},
    "baz": {"hidden": "a = 5\nb = 'hello'\nc = [1, 2, 'test']"},
}


@pytest.fixture(scope="module")
def autotests(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbgrader-autotest")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    c = Course(root)
    (root / "autotests.yml").write_text(AUTOTESTS_YML)  # at the course root, as nbgrader's
    for kind in ("simple", "hashed", "multi", "hidden"):
        c.source(kind, autotest(kind))
    assert c.assign() == 0
    for kind in ("simple", "hashed", "multi", "hidden"):
        c.submit("foo", kind, c.released(kind))
        for student, answers in AUTOTEST_ANSWERS.items():
            if kind in answers:
                c.submit(student, kind, answered(c.released(kind), {"soln": answers[kind]}))
    rc = c.autograde()
    yield c, rc
    mp.undo()


@pytest.mark.parametrize("scenario,student,name,expected", AUTOTEST_SCORES,
                         ids=[f"{s}-{st}-{n}" for s, st, n, _ in AUTOTEST_SCORES])
def test_autotest_scores_as_nbgrader(autotests, scenario, student, name, expected):
    c, rc = autotests
    assert rc == 0
    score, max_score, manual = c.notebook(student, name)
    assert (score, max_score) == expected and manual is False


def test_autotest_hidden_tests(autotests):
    """test_hidden_tests_autotest: the hidden autotests are not released, and are back in
    every autograded notebook; hashed autotests do not show the answers."""
    c, _ = autotests
    assert "BEGIN HIDDEN TESTS" not in (c.root / "release/ps1/hidden.ipynb").read_text()
    for student in ("foo", "bar", "baz"):
        assert "BEGIN HIDDEN TESTS" in c.autograded(student, "hidden.ipynb").read_text()
    hashed = c.released("hashed").cells[1].source
    assert "sha1(" in hashed and '"hello"' not in hashed
