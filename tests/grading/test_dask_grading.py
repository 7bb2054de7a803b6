"""Grading on a real Dask ``distributed.LocalCluster`` (2 worker processes, real sandbox):
the same scores as the local grader cell for cell, a worker killed mid-batch costs nothing
but a regrade elsewhere, and a rerun after the scheduler stops grades only what is missing.

Slow (worker processes and sandboxed kernels on two shared cores); CI runs them.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import nbformat
import pytest
from helpers import student_copy, write_source, write_submission

from qcoder_ds.cli import main
from qcoder_ds.grading import dask_batch
from qcoder_ds.grading.autograde import autograde, grade_submission, spawn_context
from qcoder_ds.grading.dask_batch import DaskGradingError
from qcoder_ds.grading.gradebook import GradebookStore

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow

RIGHT = "def add(a, b):\n    return a + b"
WRONG = "def add(a, b):\n    return a - b"
HALF = "def add(a, b):\n    return a + b if a >= 0 else 0"  # the hidden test's -7 fails
CRASH = "def add(a, b):\n    raise ValueError('oops')"
SLOW = "import time\ntime.sleep(6)\ndef add(a, b):\n    return a + b"

#: what each student should score on the tests (visible 1 point, hidden 2)
EXPECTED = {"ann": 3.0, "bob": 0.0, "cid": 1.0, "dan": 3.0, "eve": 3.0}


def _course(root, answers: dict[str, str]):
    src = write_source(root)
    assert main(["grade", "assign", str(src), "-o", str(root / "release/adder"),
                 "--gradebook", str(root / "gradebook.db")]) == 0
    released = nbformat.read(str(root / "release/adder/problem.ipynb"), 4)
    for student, answer in answers.items():
        write_submission(root / "submitted", student, student_copy(released, answer))
    return root


def _cells(gradebook) -> list[tuple]:
    with GradebookStore(gradebook) as store:
        rows = store.cell_results("adder")
    return sorted((c["student"], c["notebook"], c["grade_id"], c["kind"], c["score"],
                   c["max_score"], c["status"], c["reason"]) for c in rows)


def _totals(gradebook) -> dict[str, float]:
    out: dict[str, float] = {}
    for student, _nb, _gid, kind, score, *_ in _cells(gradebook):
        if kind == "test":
            out[student] = out.get(student, 0.0) + (score or 0.0)
    return out


def _submission_rows(gradebook) -> dict[str, int]:
    """How many nbgrader submission rows each student has (one, whatever happened)."""
    from sqlalchemy import create_engine, text

    eng = create_engine(f"sqlite:///{gradebook}")
    with eng.connect() as c:
        rows = c.execute(text(
            "SELECT student.id, COUNT(*) FROM submitted_assignment JOIN student "
            "ON submitted_assignment.student_id = student.id GROUP BY student.id")).all()
    eng.dispose()
    return dict(rows)


def _local_cluster(workers: int = 2):
    """A real LocalCluster of worker processes. Its nannies spawn them, which fails where an
    IPython shell (another test module's) has replaced ``__main__``; spawn_context() makes
    that safe, as it does for the local pool."""
    spawn_context()
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    dashboard_address=":0")


@pytest.fixture(scope="module")
def cluster():
    with _local_cluster() as c:
        yield c


def test_same_scores_as_the_local_grader_cell_for_cell(tmp_path, cluster):
    answers = {"ann": RIGHT, "bob": WRONG, "cid": HALF, "dan": CRASH}
    local = _course(tmp_path / "local", answers)
    remote = _course(tmp_path / "dask", answers)
    s_local = autograde(local / "submitted", "adder", local / "gradebook.db", jobs=2)
    seen: list[str] = []
    s_dask = autograde(remote / "submitted", "adder", remote / "gradebook.db",
                       dask=cluster.scheduler_address,
                       on_result=lambda r: seen.append(r["student"]))
    assert sorted(s_local.graded) == sorted(s_dask.graded) == sorted(answers)
    assert not s_dask.failed and sorted(seen) == sorted(answers)
    assert _cells(remote / "gradebook.db") == _cells(local / "gradebook.db")
    assert _totals(remote / "gradebook.db") == {"ann": 3.0, "bob": 0.0, "cid": 1.0,
                                                "dan": 0.0}
    # the autograded notebooks were written where the local grader writes them
    assert (remote / "autograded/ann/adder/problem.ipynb").is_file()


def test_a_worker_killed_mid_batch_costs_only_a_regrade_elsewhere(tmp_path, cluster):
    answers = {"ann": RIGHT, "bob": WRONG, "dan": SLOW}
    course = _course(tmp_path, answers)
    seen: list[str] = []
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = autograde(course / "submitted", "adder",
                                           course / "gradebook.db",
                                           dask=cluster.scheduler_address,
                                           on_result=lambda r: seen.append(r["student"]))
        except BaseException as e:  # shown by the assertion below
            outcome["error"] = e

    grading = threading.Thread(target=run)
    grading.start()
    killed = None
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as watcher:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and killed is None:
            for address, keys in watcher.processing().items():
                if any("qcoder-grade-dan-" in str(k) for k in keys):
                    time.sleep(1.5)  # dan's kernel is running its six-second cell now
                    pid = watcher.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    killed = address
                    break
            time.sleep(0.1)
    grading.join(timeout=240)
    assert killed is not None, "dan's submission never reached a worker"
    assert not grading.is_alive() and "error" not in outcome, outcome.get("error")
    s = outcome["summary"]
    assert sorted(s.graded) == sorted(answers) and not s.failed
    assert sorted(seen) == sorted(answers)  # each recorded once
    assert _totals(course / "gradebook.db") == {"ann": 3.0, "bob": 0.0, "dan": 3.0}
    assert set(_submission_rows(course / "gradebook.db").values()) == {1}


def test_a_rerun_after_the_scheduler_stops_grades_only_what_is_missing(tmp_path,
                                                                       monkeypatch):
    answers = {"ann": RIGHT, "bob": WRONG, "cid": HALF, "dan": SLOW, "eve": RIGHT}
    course = _course(tmp_path, answers)
    monkeypatch.setattr(dask_batch, "CONNECT_TIMEOUT_S", 5.0)
    first: list[str] = []
    doomed = _local_cluster()
    stopper: list[threading.Thread] = []

    def stop_after_first(result: dict) -> None:
        first.append(result["student"])
        if not stopper:  # the scheduler goes away while the batch is still running
            stopper.append(threading.Thread(target=doomed.close, kwargs={"timeout": 20}))
            stopper[0].start()

    try:
        with pytest.raises(DaskGradingError, match="rerun the same command"):
            autograde(course / "submitted", "adder", course / "gradebook.db",
                      dask=doomed.scheduler_address, on_result=stop_after_first)
    finally:
        for t in stopper:
            t.join(timeout=60)
        doomed.close(timeout=20)
    assert 1 <= len(first) < len(answers)
    with GradebookStore(course / "gradebook.db") as store:
        assert store.done_students("adder") == set(first)  # each committed as it arrived

    with _local_cluster() as again:
        s = autograde(course / "submitted", "adder", course / "gradebook.db",
                      dask=again.scheduler_address)
    assert sorted(s.skipped) == sorted(first)
    assert sorted(s.graded) == sorted(set(answers) - set(first)) and not s.failed
    assert _totals(course / "gradebook.db") == EXPECTED


def test_no_scheduler_and_no_usable_worker_are_clear_errors(tmp_path, cluster):
    course = _course(tmp_path, {"ann": RIGHT})
    with pytest.raises(DaskGradingError, match="cannot reach the Dask scheduler"):
        dask_batch.run_tasks_on_dask([{"student": "ann"}], "tcp://127.0.0.1:9",
                                     grade_submission, lambda *a: None, connect_timeout=2)
    task = {"student": "ann", "sub_dir": str(tmp_path / "nowhere"), "out_dir":
            str(course / "autograded/ann/adder"), "instructor_dir": None}
    with pytest.raises(DaskGradingError, match="cannot see .*nowhere"):
        dask_batch.run_tasks_on_dask([task], cluster.scheduler_address, grade_submission,
                                     lambda *a: None)


def test_the_command_line_grades_on_the_scheduler_it_is_given(tmp_path, cluster, monkeypatch,
                                                               capsys):
    course = _course(tmp_path, {"ann": RIGHT, "bob": WRONG})
    monkeypatch.chdir(course)
    assert main(["grade", "autograde", "submitted", "--assignment", "adder",
                 "--student", "ann", "--dask", cluster.scheduler_address]) == 0
    monkeypatch.setenv("QCODER_DASK_SCHEDULER", cluster.scheduler_address)
    assert main(["grade", "autograde", "submitted", "--assignment", "adder"]) == 0
    out = capsys.readouterr().out
    assert "ann: 3 points" in out and "bob: 0 points" in out
    assert "graded 1, already graded 1" in out  # the second run went on where the first ended
    monkeypatch.setenv("QCODER_DASK_SCHEDULER", "tcp://127.0.0.1:9")
    monkeypatch.setattr(dask_batch, "CONNECT_TIMEOUT_S", 2.0)
    assert main(["grade", "autograde", "submitted", "--assignment", "adder", "--force"]) == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
