"""Autograde a folder of submissions: restore, run each notebook in its own sandboxed kernel,
score, and record every submission in the gradebook as soon as it is done.

Layout, as nbgrader's ``submitted/``: ``SUBMISSIONS/<student>/<assignment>/<notebook>.ipynb``
(``SUBMISSIONS/<student>/<notebook>.ipynb`` is accepted too). Submissions are graded on a
process pool (``jobs``); each worker grades one submission at a time, one fresh kernel per
notebook. Whatever a notebook does (loops, crashes, floods, tampering) costs that notebook
its points with a reason, never the batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from qcoder_ds import isolation
from qcoder_ds.grading.errors import GradingError
from qcoder_ds.grading.gradebook import GradebookStore, NotebookDef
from qcoder_ds.grading.kernel import CellRun, SandboxedKernel, isolation_note, refusal
from qcoder_ds.grading.restore import restore
from qcoder_ds.grading.sandbox import Limits
from qcoder_ds.grading.scoring import cell_kind, score_cell
from qcoder_ds.paths import atomic_write_text

_GUARD_SRC = (Path(__file__).with_name("kernel_guard.py")).read_text(encoding="utf-8")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
GUARD_TIMEOUT = 20.0


@dataclass
class GradeSummary:
    """What one ``autograde`` call did."""

    graded: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float
    empty: list[str] = field(default_factory=list)


# -- one notebook ---------------------------------------------------------------------------


def spawn_context():
    """The spawn context, made safe to use from IPython: its stand-in ``__main__`` has no
    ``__spec__``, which multiprocessing's spawn reads to re-import the parent's main module."""
    main = sys.modules.get("__main__")
    if main is not None and not hasattr(main, "__spec__"):
        main.__spec__ = None  # what a plain script has; nothing to re-import
    return get_context("spawn")


def _guard(kernel: SandboxedKernel, phase: str, names: list[str]
           ) -> tuple[list[str], list[str]]:
    """Run the in-kernel guard: (tampering it could not undo, tampering it undid)."""
    nonce = uuid.uuid4().hex
    code = _GUARD_SRC + f"\nrun({nonce!r}, {phase!r}, {names!r})\n"
    run = kernel.execute(f"exec({code!r}, {{'__name__': '__qcoder_guard__'}})",
                         timeout=GUARD_TIMEOUT, silent=True, store_history=False)
    if run.status in ("dead", "not-run", "output-limit"):
        return [], []  # the cell itself will report why it could not run
    if run.status == "timeout":
        return [f"the kernel stopped answering the grader ({phase}-test check timed out)"], []
    for line in run.stdout.splitlines():
        if line.startswith(nonce):
            try:
                report = json.loads(line[len(nonce):])
            except ValueError:
                break
            return list(report.get("fatal", [])), list(report.get("problems", []))
    return [f"the grading guard was prevented from running ({phase}, status {run.status})"], []


def _names(source: str) -> list[str]:
    import builtins

    return sorted({n for n in _NAME.findall(source) if hasattr(builtins, n)})


@dataclass
class Execution:
    """What running one notebook gave: each code cell's run, the tampering that cost a test
    its points, the tampering undone before a test (graded on its merits), and a note."""

    runs: dict[int, CellRun]
    tamper: dict[int, list[str]]
    undone: list[str]
    note: str = ""


def _run_test(kernel: SandboxedKernel, cell: NotebookNode, timeout: float,
              ex: Execution, i: int) -> CellRun:
    """A test cell between the guard's two checks; tampering undone is noted once."""
    fatal, undone = _guard(kernel, "pre", _names(cell.source))
    run = kernel.execute(cell.source, timeout=timeout)
    if kernel.alive:
        post, more = _guard(kernel, "post", [])
        fatal, undone = fatal + post, undone + more
    ex.tamper[i] = fatal
    ex.undone += [u for u in undone if u not in ex.undone]
    return run


def _execute(nb: NotebookNode, work: Path, run_dir: Path, limits: Limits) -> Execution:
    ex = Execution({}, {}, [])
    t_end = time.monotonic() + limits.notebook_timeout
    with SandboxedKernel(work, run_dir, limits) as kernel:
        _guard(kernel, "init", [])  # before any notebook code: Jupyter's classes as shipped
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            left = t_end - time.monotonic()
            if left <= 0:
                if not ex.note:
                    ex.note = f"the notebook ran longer than {limits.notebook_timeout:.0f} s"
                    kernel.kill(ex.note)
                ex.runs[i] = CellRun("not-run", reason=ex.note)
                continue
            timeout = min(limits.cell_timeout, left)
            if cell_kind(cell) == "test" and kernel.alive:
                run = _run_test(kernel, cell, timeout, ex, i)
            else:
                run = kernel.execute(cell.source, timeout=timeout)
            if run.status == "timeout" and left < limits.cell_timeout:
                run.reason = f"the notebook ran longer than {limits.notebook_timeout:.0f} s"
            ex.runs[i] = run
            cell.outputs = run.outputs
            cell.execution_count = run.execution_count
            if run.status in ("dead", "output-limit") or (run.status == "timeout"
                                                          and not kernel.alive):
                ex.note = ex.note or run.reason
    return ex


def grade_notebook(defn: NotebookDef, path: Path | None, work: Path, run_dir: Path,
                   limits: Limits) -> tuple[dict, NotebookNode]:
    """Grade one submitted notebook (``path`` None: not submitted). Never raises for content."""
    t0 = time.monotonic()
    res = {"notebook": defn.name, "status": "graded", "reason": "", "events": [], "cells": []}
    nb = None
    missing_reason = ""
    if path is None:
        res.update(status="missing", reason=f"{defn.name}.ipynb was not submitted")
        missing_reason = res["reason"]
    else:
        try:
            submitted = nbformat.read(str(path), as_version=4)
            if not isinstance(submitted.get("cells"), list):
                raise ValueError("no cells")
        except Exception as e:  # any unreadable file is reported, not fatal
            res.update(status="unreadable",
                       reason=f"{path.name} is not a readable notebook ({type(e).__name__}: "
                              f"{str(e)[:200]})")
            missing_reason = res["reason"]
        else:
            restored = restore(submitted, defn.instructor, defn.released)
            nb = restored.nb
            res["events"] = restored.events
    if nb is None:
        nb = copy.deepcopy(defn.instructor)
        ex = Execution({i: CellRun("not-run", reason=missing_reason)
                        for i in range(len(nb.cells))}, {}, [])
    else:
        try:
            ex = _execute(nb, work, run_dir, limits)
        except RuntimeError as e:  # the kernel never started: an infrastructure problem
            res.update(status="error", reason=str(e))
            ex = Execution({}, {}, [], str(e))
        if ex.note:
            res["reason"] = ex.note
        res["events"] += [f"the notebook interfered with grading: {u}; its tests were graded "
                          "on their merits" for u in ex.undone]
    for i, cell in enumerate(nb.cells):
        if cell_kind(cell) is None:
            continue
        c = score_cell(cell, ex.runs.get(i), ex.tamper.get(i, []))
        c["position"] = i
        res["cells"].append(c)
    res["seconds"] = round(time.monotonic() - t0, 3)
    return res, nb


# -- one submission -------------------------------------------------------------------------

# what nbgrader's CourseDirectory.ignore leaves out of autograded/ (and what we never copy)
_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints", "feedback"}
SIDE_EFFECT_BYTES = 100 << 20  # files a notebook wrote, kept in autograded/ up to this much


def _ignored(rel: Path) -> bool:
    return (any(part.startswith(".") or part in _IGNORED_DIRS for part in rel.parts)
            or rel.suffix == ".pyc")


def _files(root: Path) -> list[tuple[Path, Path]]:
    """(path, relative path) of the plain files under ``root`` we copy: no links (a link
    could point at instructor files), no hidden or ignored files."""
    out = []
    for p in sorted(root.rglob("*")) if root.is_dir() else []:
        rel = p.relative_to(root)
        if not _ignored(rel) and p.is_file() and not p.is_symlink():
            out.append((p, rel))  # rglob does not enter linked folders
    return out


def _copy_inputs(src: Path, dst: Path, skip_notebooks: bool) -> None:
    for p, rel in _files(src):
        if not (skip_notebooks and p.suffix == ".ipynb"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst / rel)


def _restore_files(instructor: Path, work: Path) -> list[str]:
    """Put the instructor's copy of every released non-notebook file (data, helper modules
    the tests import) over the student's: a student who edits the checks gains nothing."""
    changed = []
    for p, rel in _files(instructor):
        if p.suffix == ".ipynb":
            continue
        dst = work / rel
        if dst.is_file() and dst.read_bytes() == p.read_bytes():
            continue
        if dst.exists() or dst.is_symlink():
            changed.append(str(rel))
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            else:
                dst.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
    return changed


def _keep_outputs(work: Path, stage: Path, budget: list[int]) -> list[str]:
    """Copy what the work folder holds after a run (the inputs as graded, with the
    instructor's files, and what the notebook wrote) into ``autograded/``, as nbgrader keeps
    them; files past the size budget are left out and named."""
    dropped = []
    for p, rel in _files(work):
        if p.suffix == ".ipynb":
            continue
        size = p.stat().st_size
        if size > budget[0]:
            dropped.append(f"{rel} ({size:,} bytes) was not kept in autograded/: the files the "
                           f"notebook wrote exceed {SIDE_EFFECT_BYTES:,} bytes")
            continue
        budget[0] -= size
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, stage / rel)
    return dropped


def read_timestamp(sub_dir: Path) -> tuple[str | None, str | None]:
    """(timestamp, problem) from ``timestamp.txt``: an empty file means no time, as in
    nbgrader; one that is not a date is said, not silently dropped (nbgrader stops there)."""
    from nbgrader.utils import parse_utc

    ts = sub_dir / "timestamp.txt"
    if not ts.is_file():
        return None, None
    text = ts.read_text(encoding="utf-8", errors="replace").strip()
    if not text:
        return None, None
    try:
        parse_utc(text)
    except (ValueError, OverflowError, TypeError) as e:
        return None, (f"timestamp.txt holds {text[:60]!r}, which is not a date ({e}); the "
                      "submission was graded without a submission time, so no late penalty "
                      "applies; fix the file and rerun")
    return text, None


def _stray_notebooks(sub_dir: Path, expected: set[str]) -> list[str]:
    return [f"{p.name} is not part of the assignment; ignored"
            for p in sorted(sub_dir.glob("*.ipynb")) if p.stem not in expected]


def _publish(stage: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` with ``stage``: a regrade leaves no file of the previous one."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    if out_dir.exists():
        out_dir.rename(old)
    shutil.move(str(stage), str(out_dir))
    shutil.rmtree(old, ignore_errors=True)


def _grade_all(task: dict, defs: list[NotebookDef], root: Path, stage: Path,
               result: dict) -> None:
    sub_dir = Path(task["sub_dir"])
    limits = Limits(**task["limits"])
    budget = [SIDE_EFFECT_BYTES]
    for d in defs:
        work = root / task["assignment"]
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        _copy_inputs(sub_dir, work, skip_notebooks=False)
        if task.get("instructor_dir"):
            changed = _restore_files(Path(task["instructor_dir"]), work)
            if d is defs[0]:
                result["problems"] += [f"{f} was changed in the submission; the "
                                       "instructor's copy was used" for f in changed]
        path = sub_dir / f"{d.name}.ipynb"
        run_dir = root / f"runtime-{uuid.uuid4().hex[:8]}"
        res, nb = grade_notebook(d, path if path.is_file() else None, work, run_dir, limits)
        result["notebooks"].append(res)
        result["problems"] += _keep_outputs(work, stage, budget)
        if res["status"] == "graded":
            atomic_write_text(stage / f"{d.name}.ipynb", nbformat.writes(nb))


def grade_submission(task: dict) -> dict:
    """Worker entry: grade every notebook of one student's submission (picklable in/out)."""
    t0 = time.monotonic()
    sub_dir = Path(task["sub_dir"])
    defs = [NotebookDef(n, nbformat.reads(i, as_version=4), nbformat.reads(r, as_version=4))
            for n, i, r in task["defs"]]
    result = {"student": task["student"], "notebooks": [], "problems": [], "timestamp": None,
              "isolation": isolation_note(), "fingerprint": task.get("fingerprint")}
    result["timestamp"], bad_ts = read_timestamp(sub_dir)
    result["problems"] += [bad_ts] if bad_ts else []
    result["problems"] += _stray_notebooks(sub_dir, {d.name for d in defs})
    root = Path(tempfile.mkdtemp())
    try:
        stage = root / "autograded"
        stage.mkdir()
        _grade_all(task, defs, root, stage, result)
        if task.get("out_dir"):
            _publish(stage, Path(task["out_dir"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result


def fingerprint(sub_dir: Path) -> str:
    """What was graded: every file of the submission (notebooks, data, ``timestamp.txt``) by
    path and content; a resubmission changes it, so resuming regrades it."""
    h = hashlib.sha256()
    for p, rel in _files(sub_dir):
        h.update(str(rel).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# -- a batch --------------------------------------------------------------------------------


def find_submissions(root: Path, assignment: str) -> list[tuple[str, Path]]:
    """(student, folder) pairs under ``root``: ``root/<student>/<assignment>/`` or flat."""
    root = Path(root)
    if not root.is_dir():
        raise GradingError(f"{root}: no such submissions folder")
    out = []
    for sdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        nested = sdir / assignment
        out.append((sdir.name, nested if nested.is_dir() else sdir))
    return out


def plan(store: GradebookStore, submissions: Path, assignment: str,
         students: list[str] | None, force: bool
         ) -> tuple[list[tuple[str, Path, str]], list[str], list[str]]:
    """(to grade with fingerprints, already graded as they are, empty): resuming keys on
    what was graded, so a resubmission is regraded; a folder without a notebook is skipped
    and not recorded, as nbgrader does, so the notebook is graded when it arrives."""
    pairs = find_submissions(submissions, assignment)
    if students:
        pairs = [p for p in pairs if p[0] in set(students)]
    recorded = {} if force else store.graded_fingerprints(assignment)
    todo, skipped, empty = [], [], []
    for student, folder in pairs:
        if not any(folder.glob("*.ipynb")):
            empty.append(student)
            continue
        fp = fingerprint(folder)
        if recorded.get(student) == fp:
            skipped.append(student)
        else:
            todo.append((student, folder, fp))
    return todo, skipped, empty


def _run_tasks(tasks: list[dict], jobs: int,
               record: Callable[[dict, dict | None, str | None], None]) -> None:
    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            try:
                r = grade_submission(t)
            except Exception as e:  # infrastructure failure: report, carry on
                record(t, None, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
                continue
            record(t, r, None)
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=spawn_context()) as pool:
        pending = {pool.submit(grade_submission, t): t for t in tasks}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                t = pending.pop(fut)
                try:
                    r = fut.result()
                except Exception as e:  # a worker died: that submission only
                    record(t, None, f"{type(e).__name__}: {e}")
                    continue
                record(t, r, None)


def autograde(submissions: str | os.PathLike, assignment: str, gradebook: str | os.PathLike,
              out_dir: str | os.PathLike | None = None, jobs: int = 1,
              limits: Limits | None = None, force: bool = False,
              students: list[str] | None = None,
              on_result: Callable[[dict], None] | None = None,
              dask: str | None = None) -> GradeSummary:
    """Grade every submission not graded as it now is; each is committed when it finishes.
    ``dask``: a Dask scheduler's address to grade on its workers instead of a local pool
    (``dask_batch``); the plan and the gradebook stay here."""
    t0 = time.monotonic()
    submissions = Path(submissions).resolve()
    limits = limits or Limits()
    store = GradebookStore(gradebook)
    try:
        defs = store.assignment_defs(assignment)
        todo, skipped, empty = plan(store, submissions, assignment, students, force)
        out_root = Path(out_dir).resolve() if out_dir else submissions.parent / "autograded"
        if not dask and not isolation.available() and not limits.reduced_isolation:
            raise GradingError(refusal())  # on Dask, each worker is asked instead
        def_rows = [(d.name, nbformat.writes(d.instructor), nbformat.writes(d.released))
                    for d in defs]
        tasks = [{"student": s, "sub_dir": str(d), "assignment": assignment, "defs": def_rows,
                  "limits": asdict(limits), "out_dir": str(out_root / s / assignment),
                  "instructor_dir": store.source_dir(assignment), "fingerprint": fp}
                 for s, d, fp in todo]
        graded: list[str] = []
        failed: dict[str, str] = {}

        def record(task: dict, result: dict | None, err: str | None) -> None:
            if result is None:
                failed[task["student"]] = err or "unknown error"
                return
            store.record_submission(assignment, result)
            graded.append(task["student"])
            if on_result is not None:
                on_result(result)

        if dask:
            from qcoder_ds.grading.dask_batch import run_tasks_on_dask

            run_tasks_on_dask(tasks, dask, grade_submission, record, limits.reduced_isolation)
        else:
            _run_tasks(tasks, jobs, record)
        return GradeSummary(graded, skipped, failed, round(time.monotonic() - t0, 3), empty)
    finally:
        store.close()
