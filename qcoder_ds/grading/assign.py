"""Release an assignment exactly as ``nbgrader generate_assignment`` does.

We run nbgrader's own preprocessors, in nbgrader's order, so that cleared cells and
checksums are byte-for-byte what nbgrader produces; what nbgrader keeps in its gradebook
(the "source cells" that autograde restores, hidden tests included) we return as the
*instructor notebook*, which the autograder uses to restore and re-insert tests.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbgrader import utils as nbutils
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearMarkScheme,
    ClearOutput,
    ClearSolutions,
    ComputeChecksums,
    IncludeHeaderFooter,
    LockCells,
)

from qcoder_ds.grading.errors import AssignmentError
from qcoder_ds.paths import atomic_write_text

__all__ = ["compute_checksum", "generate", "instructor_notebook", "release_notebook"]

_log = logging.getLogger("qcoder_ds.grading")


def compute_checksum(cell: NotebookNode) -> str:
    """nbgrader's md5 over source, type, grade/solution/locked flags, grade_id and points."""
    return nbutils.compute_checksum(cell)


def _run(pre, nb: NotebookNode, resources: dict) -> NotebookNode:
    try:
        nb, _ = pre.preprocess(nb, resources)
    except Exception as e:  # nbgrader signals bad metadata / delimiters with Runtime-,
        # Value- and jsonschema ValidationErrors: all mean "this source notebook is wrong"
        msg = str(e).split("\n")[0]
        inner = e.__context__ or e.__cause__
        if inner is not None and str(inner):
            msg += f" ({str(inner).splitlines()[0]})"
        raise AssignmentError(f"{resources.get('name', 'notebook')}: {msg}") from e
    return nb


def _check_supported(nb: NotebookNode, name: str) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "AUTOTEST" in cell.source and nbutils.is_grade(cell):
            raise AssignmentError(
                f"{name}: AUTOTEST cells need nbgrader's InstantiateTests (a kernel and "
                "autotests.yml); run `nbgrader generate_assignment` for this notebook"
            )


def generate(
    nb: NotebookNode,
    name: str = "notebook",
    header: str | None = None,
    footer: str | None = None,
) -> tuple[NotebookNode, NotebookNode]:
    """Return ``(released, instructor)`` for a source notebook; the input is not modified.

    ``instructor`` is the notebook as nbgrader's SaveCells sees it: solutions cleared,
    hidden tests still in place, checksums computed on that text. ``released`` has the
    hidden tests removed and checksums recomputed, as students receive it. ``header`` and
    ``footer`` are notebook paths whose cells are prepended / appended (nbgrader's
    IncludeHeaderFooter).
    """
    nb = copy.deepcopy(nb)
    _check_supported(nb, name)
    resources: dict = {"name": name}
    if header or footer:
        hf = IncludeHeaderFooter(header=str(header or ""), footer=str(footer or ""))
        try:
            nb = _run(hf, nb, resources)
        except OSError as e:
            raise AssignmentError(f"header/footer notebook cannot be read: {e}") from e
    for pre in (LockCells(), ClearSolutions(), ClearOutput(), CheckCellMetadata(),
                ComputeChecksums()):
        pre.log = _log
        nb = _run(pre, nb, resources)
    instructor = copy.deepcopy(nb)
    for pre in (ClearHiddenTests(), ClearMarkScheme(), ComputeChecksums(), CheckCellMetadata()):
        pre.log = _log
        nb = _run(pre, nb, resources)
    _check_ids(instructor, name)
    return nb, instructor


def _check_ids(nb: NotebookNode, name: str) -> None:
    seen: set[str] = set()
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        gid = meta.get("grade_id")
        if gid is None or not (meta.get("grade") or meta.get("solution") or meta.get("locked")
                               or meta.get("task")):
            continue
        if gid in seen:
            raise AssignmentError(f"{name}: grade_id {gid!r} is used by more than one cell")
        seen.add(gid)


def release_notebook(nb: NotebookNode) -> NotebookNode:
    """The student version: solutions and hidden tests cleared, cells locked, checksums set."""
    return generate(nb)[0]


def instructor_notebook(nb: NotebookNode) -> NotebookNode:
    """The copy autograde restores from: solutions cleared, hidden tests kept, checksummed."""
    return generate(nb)[1]


def read_notebook(path) -> NotebookNode:
    """Read any nbformat 4 notebook, with a clear error for a file that is not one."""
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as e:  # nbformat raises JSON, validation and key errors alike
        raise AssignmentError(f"{path}: not a readable Jupyter notebook ({e})") from e


def assign_directory(
    source_dir: str | os.PathLike,
    release_dir: str | os.PathLike,
    gradebook: str | os.PathLike | None = None,
    name: str | None = None,
    header: str | None = None,
    footer: str | None = None,
) -> list[Path]:
    """``nbgrader generate_assignment`` for one folder: release every notebook (other files
    copied as they are) and, with ``gradebook``, record the assignment for autograding.

    Every notebook is checked before anything is written, so a bad one leaves no half
    release behind; each file is written to a temporary name and renamed when complete.
    """
    from qcoder_ds.grading.gradebook import GradebookStore, NotebookDef

    src, dst = Path(source_dir), Path(release_dir)
    if not src.is_dir():
        raise AssignmentError(f"{src}: no such source folder")
    name = name or src.name
    notebooks = sorted(p for p in src.glob("*.ipynb") if not p.name.startswith("."))
    if not notebooks:
        raise AssignmentError(f"{src}: no notebooks to release")
    defs = []
    for p in notebooks:
        released, instructor = generate(read_notebook(p), p.stem, header=header, footer=footer)
        defs.append(NotebookDef(p.stem, instructor, released))
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or p.suffix == ".ipynb":
            continue
        if p.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        elif p.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst / rel)
            written.append(dst / rel)
    for d in defs:
        out = dst / f"{d.name}.ipynb"
        atomic_write_text(out, nbformat.writes(d.released) + "\n")  # as nbformat.write ends it
        written.append(out)
    if gradebook is not None:
        with GradebookStore(gradebook) as store:
            store.save_assignment(name, defs, str(src.resolve()))
    return written
