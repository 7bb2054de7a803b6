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
from dataclasses import asdict, dataclass
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


# -- one notebook ---------------------------------------------------------------------------


def spawn_context():
    """The spawn context, made safe to use from IPython: its stand-in ``__main__`` has no
    ``__spec__``, which multiprocessing's spawn reads to re-import the parent's main module."""
    main = sys.modules.get("__main__")
    if main is not None and not hasattr(main, "__spec__"):
        main.__spec__ = None  # what a plain script has; nothing to re-import
    return get_context("spawn")


def _guard(kernel: SandboxedKernel, phase: str, names: list[str]) -> list[str]:
    """Run the in-kernel guard; returns the tampering it could not undo (empty if clean)."""
    nonce = uuid.uuid4().hex
    code = _GUARD_SRC + f"\nrun({nonce!r}, {phase!r}, {names!r})\n"
    run = kernel.execute(f"exec({code!r}, {{'__name__': '__qcoder_guard__'}})",
                         timeout=GUARD_TIMEOUT, silent=True, store_history=False)
    if run.status in ("dead", "not-run", "output-limit"):
        return []  # the cell itself will report why it could not run
    if run.status == "timeout":
        return [f"the kernel stopped answering the grader ({phase}-test check timed out)"]
    for line in run.stdout.splitlines():
        if line.startswith(nonce):
            try:
                report = json.loads(line[len(nonce):])
            except ValueError:
                break
            return list(report.get("fatal", []))
    return [f"the grading guard was prevented from running ({phase}, status {run.status})"]


def _names(source: str) -> list[str]:
    import builtins

    return sorted({n for n in _NAME.findall(source) if hasattr(builtins, n)})


def _execute(nb: NotebookNode, work: Path, run_dir: Path, limits: Limits
             ) -> tuple[dict[int, CellRun], dict[int, list[str]], str]:
    runs: dict[int, CellRun] = {}
    tamper: dict[int, list[str]] = {}
    t_end = time.monotonic() + limits.notebook_timeout
    note = ""
    with SandboxedKernel(work, run_dir, limits) as kernel:
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            left = t_end - time.monotonic()
            if left <= 0:
                if not note:
                    note = f"the notebook ran longer than {limits.notebook_timeout:.0f} s"
                    kernel.kill(note)
                runs[i] = CellRun("not-run", reason=note)
                continue
            is_test = cell_kind(cell) == "test"
            if is_test and kernel.alive:
                tamper[i] = _guard(kernel, "pre", _names(cell.source))
            run = kernel.execute(cell.source, timeout=min(limits.cell_timeout, left))
            if is_test and kernel.alive:
                tamper[i] = tamper.get(i, []) + _guard(kernel, "post", [])
            if run.status == "timeout" and left < limits.cell_timeout:
                run.reason = f"the notebook ran longer than {limits.notebook_timeout:.0f} s"
            runs[i] = run
            cell.outputs = run.outputs
            cell.execution_count = run.execution_count
            if run.status in ("dead", "output-limit") or (run.status == "timeout"
                                                          and not kernel.alive):
                note = note or run.reason
    return runs, tamper, note


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
        runs = {i: CellRun("not-run", reason=missing_reason) for i in range(len(nb.cells))}
        tamper: dict[int, list[str]] = {}
    else:
        try:
            runs, tamper, note = _execute(nb, work, run_dir, limits)
        except RuntimeError as e:  # the kernel never started: an infrastructure problem
            res.update(status="error", reason=str(e))
            runs, tamper, note = {}, {}, str(e)
        if note:
            res["reason"] = note
    for i, cell in enumerate(nb.cells):
        if cell_kind(cell) is None:
            continue
        c = score_cell(cell, runs.get(i), tamper.get(i, []))
        c["position"] = i
        res["cells"].append(c)
    res["seconds"] = round(time.monotonic() - t0, 3)
    return res, nb


# -- one submission -------------------------------------------------------------------------


def _copy_inputs(src: Path, dst: Path, skip_notebooks: bool) -> None:
    for p in src.rglob("*"):
        rel = p.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or p.is_symlink():
            continue  # no hidden files or links: a link could point at instructor files
        if p.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        elif p.is_file() and not (skip_notebooks and p.suffix == ".ipynb"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst / rel)


def _restore_files(instructor: Path, work: Path) -> list[str]:
    """Put the instructor's copy of every released non-notebook file (data, helper modules
    the tests import) over the student's: a student who edits the checks gains nothing."""
    changed = []
    if not instructor.is_dir():
        return changed
    for p in sorted(instructor.rglob("*")):
        rel = p.relative_to(instructor)
        if any(part.startswith(".") for part in rel.parts) or p.suffix == ".ipynb" \
                or not p.is_file() or p.is_symlink():
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


def grade_submission(task: dict) -> dict:
    """Worker entry: grade every notebook of one student's submission (picklable in/out)."""
    t0 = time.monotonic()
    student, sub_dir = task["student"], Path(task["sub_dir"])
    limits = Limits(**task["limits"])
    defs = [NotebookDef(n, nbformat.reads(i, as_version=4), nbformat.reads(r, as_version=4))
            for n, i, r in task["defs"]]
    out_dir = Path(task["out_dir"]) if task.get("out_dir") else None
    result = {"student": student, "notebooks": [], "problems": [], "timestamp": None,
              "isolation": isolation_note()}
    ts = sub_dir / "timestamp.txt"
    if ts.is_file():
        result["timestamp"] = ts.read_text(encoding="utf-8", errors="replace").strip() or None
    expected = {d.name for d in defs}
    for p in sorted(sub_dir.iterdir()) if sub_dir.is_dir() else []:
        if p.suffix == ".ipynb" and p.stem not in expected:
            result["problems"].append(f"{p.name} is not part of the assignment; ignored")
    root = Path(tempfile.mkdtemp())
    try:
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
            if out_dir is not None and res["status"] == "graded":
                atomic_write_text(out_dir / f"{d.name}.ipynb", nbformat.writes(nb))
        if out_dir is not None:
            _copy_inputs(sub_dir, out_dir, skip_notebooks=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result


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


def autograde(submissions: str | os.PathLike, assignment: str, gradebook: str | os.PathLike,
              out_dir: str | os.PathLike | None = None, jobs: int = 1,
              limits: Limits | None = None, force: bool = False,
              students: list[str] | None = None,
              on_result: Callable[[dict], None] | None = None) -> GradeSummary:
    """Grade every (not yet graded) submission; each is committed as soon as it finishes."""
    t0 = time.monotonic()
    submissions = Path(submissions).resolve()
    limits = limits or Limits()
    store = GradebookStore(gradebook)
    try:
        defs = store.assignment_defs(assignment)
        pairs = find_submissions(submissions, assignment)
        if students:
            pairs = [p for p in pairs if p[0] in set(students)]
        done = set() if force else store.done_students(assignment)
        todo = [p for p in pairs if p[0] not in done]
        skipped = [s for s, _ in pairs if s in done]
        out_root = Path(out_dir).resolve() if out_dir else submissions.parent / "autograded"
        if not isolation.available() and not limits.reduced_isolation:
            raise GradingError(refusal())
        lim = asdict(limits)
        def_rows = [(d.name, nbformat.writes(d.instructor), nbformat.writes(d.released))
                    for d in defs]
        tasks = [{"student": s, "sub_dir": str(d), "assignment": assignment, "defs": def_rows,
                  "limits": lim, "out_dir": str(out_root / s / assignment),
                  "instructor_dir": store.source_dir(assignment)} for s, d in todo]
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

        if jobs <= 1 or len(tasks) <= 1:
            for t in tasks:
                try:
                    r = grade_submission(t)
                except Exception as e:  # infrastructure failure: report, carry on
                    record(t, None, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
                    continue
                record(t, r, None)
        else:
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
        return GradeSummary(graded, skipped, failed, round(time.monotonic() - t0, 3))
    finally:
        store.close()
