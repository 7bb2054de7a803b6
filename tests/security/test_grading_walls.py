"""Student notebooks cannot escape the grader's kernel through libc: one submission per route
in ``escapes.ROUTES``, graded in one batch; from the grader's side nothing outside changed
or leaked, every notebook is still scored (or 0 with a reason), and the batch carries on."""

import nbformat
import pytest
from escapes import ROUTES, Target
from helpers import HIDDEN_LINES, student_copy, write_source, write_submission

from qcoder_ds import isolation
from qcoder_ds.grading.assign import assign_directory
from qcoder_ds.grading.autograde import autograde
from qcoder_ds.grading.errors import GradingError
from qcoder_ds.grading.gradebook import GradebookStore
from qcoder_ds.grading.sandbox import Limits

pytestmark = pytest.mark.slow  # one kernel per route

RIGHT = "def add(a, b):\n    return a + b"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    if not isolation.available():
        pytest.skip(f"no walls here: {isolation.unavailable_reason()}")
    course = tmp_path_factory.mktemp("course")
    gb = course / "gradebook.db"
    source = write_source(course)
    assign_directory(source, course / "release" / "adder", gb)
    released = nbformat.read(str(course / "release" / "adder" / "problem.ipynb"), 4)
    subs = course / "submitted"
    targets = {}
    for route in ROUTES:
        t = Target(tmp_path_factory.mktemp(route), secrets=[str(gb), str(source / "problem.ipynb")])
        t.token = HIDDEN_LINES[0]  # the hidden test, as the gradebook and the source hold it
        targets[route] = t
        write_submission(subs, route, student_copy(released, t.code(route) + "\n" + RIGHT))
    write_submission(subs, "honest", student_copy(released, RIGHT))
    try:
        summary = autograde(subs, "adder", gb, jobs=2,
                            limits=Limits(cell_timeout=60, notebook_timeout=120))
        with GradebookStore(gb) as store:
            cells = store.cell_results("adder")
            reports = store.submission_reports("adder")
        damage = {}
        for route, t in targets.items():
            nb = nbformat.read(str(subs.parent / "autograded" / route / "adder" /
                                   "problem.ipynb"), 4)
            printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
            damage[route] = (t.damage(printed), printed)
        yield {"summary": summary, "cells": cells, "reports": reports, "damage": damage}
    finally:
        for t in targets.values():
            t.restore()


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_route_is_walled_in(batch, route):
    harm, printed = batch["damage"][route]
    assert harm == [], printed
    assert "walled in with bubblewrap" in batch["reports"][route]["isolation"]


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_route_is_still_graded(batch, route):
    assert not batch["summary"].failed
    tests = [c for c in batch["cells"] if c["student"] == route and c["kind"] == "test"]
    assert len(tests) == 2
    total = sum(c["score"] for c in tests)
    assert total == 3 or all(c["score"] == 0 and c["reason"] for c in tests), tests


def test_routes_that_leave_the_kernel_alive_keep_their_points(batch):
    score = {}
    for c in batch["cells"]:
        if c["kind"] == "test":
            score[c["student"]] = score.get(c["student"], 0) + c["score"]
    assert score["honest"] == 3
    # these only call libc and carry on: the walls refuse the call, the answer still counts
    for route in ("ctypes_system", "libc_open_write", "read_secrets", "named_pipe"):
        assert score[route] == 3, route


def test_no_walls_no_grading_unless_the_instructor_says_so(tmp_path, monkeypatch):
    course = tmp_path / "course"
    gb = course / "gradebook.db"
    assign_directory(write_source(course), course / "release" / "adder", gb)
    released = nbformat.read(str(course / "release" / "adder" / "problem.ipynb"), 4)
    write_submission(course / "submitted", "s1", student_copy(released, RIGHT))
    monkeypatch.setattr(isolation, "unavailable_reason", lambda: "no user namespaces (test)")
    with pytest.raises(GradingError, match="--reduced-isolation.*|no user namespaces"):
        autograde(course / "submitted", "adder", gb)
    with GradebookStore(gb) as store:
        assert store.submission_reports("adder") == {}  # nothing ran, nothing recorded
    summary = autograde(course / "submitted", "adder", gb,
                        limits=Limits(reduced_isolation=True))
    assert summary.graded == ["s1"]
    with GradebookStore(gb) as store:
        report = store.submission_reports("adder")["s1"]
    assert report["isolation"].startswith("REDUCED ISOLATION (no user namespaces (test))")
