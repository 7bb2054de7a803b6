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
import tempfile
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
    InstantiateTests,
    LockCells,
)
from nbgrader.preprocessors.base import NbGraderPreprocessor

from qcoder_ds.grading.errors import AssignmentError
from qcoder_ds.grading.kernel import SandboxedKernel
from qcoder_ds.grading.sandbox import Limits
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


def _has_autotests(nb: NotebookNode) -> bool:
    return any(c.cell_type == "code" and "AUTOTEST" in c.source for c in nb.cells)


def _autotests_dir(source_dir: Path | None) -> Path:
    """Where ``autotests.yml`` is: the assignment's folder, else the course folder above
    ``source/``, else the current folder (nbgrader reads the assignment's, then ./)."""
    places = []
    if source_dir is not None:
        places.append(source_dir)
        if source_dir.parent.name == "source":
            places.append(source_dir.parent.parent)
    places.append(Path.cwd())
    for d in places:
        if (d / "autotests.yml").is_file():
            return d
    raise AssignmentError(
        "AUTOTEST cells need an autotests.yml (nbgrader's test templates) in "
        + ", ".join(str(d) for d in places))


class WalledInstantiateTests(InstantiateTests):
    """nbgrader's InstantiateTests (AUTOTEST / HASHED AUTOTEST expanded into asserts, as
    ``generate_assignment`` does), its kernel started behind our walls like every kernel:
    it runs the source notebook's code to learn each snippet's type and value."""

    def __init__(self, source_dir: Path | None, **kw) -> None:
        super().__init__(**kw)
        self.source_dir = source_dir

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        """Expand the notebook's autotests; a notebook without any is returned as it is."""
        if not _has_autotests(nb):
            return nb, resources
        kernel_name = nb.metadata.get("kernelspec", {}).get("name", "")
        if kernel_name not in self.comment_strs or kernel_name not in self.sanitizers:
            raise ValueError(f"AUTOTEST needs a Python kernel; this notebook's is {kernel_name!r}")
        resources["kernel_name"] = kernel_name
        where = _autotests_dir(self.source_dir)
        self._load_test_template_file({"kernel_name": kernel_name,
                                       "metadata": {"path": str(where)}})
        self.global_tests_loaded = True
        self.sanitizer = self.sanitizers[kernel_name]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "work"
            if self.source_dir is not None:
                shutil.copytree(self.source_dir, work, symlinks=True,
                                ignore=shutil.ignore_patterns(".*", "*.ipynb"))
            work.mkdir(exist_ok=True)
            limits = Limits(nbgrader_execution="")  # generate_assignment sets no variable
            try:
                with SandboxedKernel(work, Path(tmp) / "run", limits) as kernel:
                    self.kc = kernel.kc
                    nb, resources = NbGraderPreprocessor.preprocess(self, nb, resources)
            finally:
                self.kc = self.sanitizer = self.execute_result = None
        return nb, resources


def generate(
    nb: NotebookNode,
    name: str = "notebook",
    header: str | None = None,
    footer: str | None = None,
    source_dir: str | os.PathLike | None = None,
) -> tuple[NotebookNode, NotebookNode]:
    """Return ``(released, instructor)`` for a source notebook; the input is not modified.

    ``instructor`` is the notebook as nbgrader's SaveCells sees it: solutions cleared,
    hidden tests still in place, checksums computed on that text. ``released`` has the
    hidden tests removed and checksums recomputed, as students receive it. ``header`` and
    ``footer`` are notebook paths whose cells are prepended / appended (nbgrader's
    IncludeHeaderFooter).
    """
    nb = copy.deepcopy(nb)
    language = nb.metadata.get("kernelspec", {}).get("language", "python")
    if language != "python":
        raise AssignmentError(f"{name}: its kernel is {language!r}; qcoder grades Python "
                              "notebooks only (nbgrader would fail at autograde)")
    resources: dict = {"name": name}
    if header or footer:
        hf = IncludeHeaderFooter(header=str(header or ""), footer=str(footer or ""))
        try:
            nb = _run(hf, nb, resources)
        except OSError as e:
            raise AssignmentError(f"header/footer notebook cannot be read: {e}") from e
    if _has_autotests(nb):
        nb = _autotest(nb, resources, source_dir)
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


def _autotest(nb: NotebookNode, resources: dict, source_dir) -> NotebookNode:
    pre = WalledInstantiateTests(Path(source_dir) if source_dir is not None else None)
    pre.log = _log
    try:
        return _run(pre, nb, resources)
    except RuntimeError as e:  # the walled kernel could not start
        raise AssignmentError(f"{resources['name']}: {e}") from e


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
        released, instructor = generate(read_notebook(p), p.stem, header=header, footer=footer,
                                        source_dir=src)
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
