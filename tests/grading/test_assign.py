"""Release: identical to nbgrader's own release of its example, hidden tests kept aside."""

import copy

import nbformat
import pytest
from helpers import HIDDEN_LINES, source_notebook
from nbgrader import utils as nbutils

from qcoder_ds.grading.assign import (
    assign_directory,
    compute_checksum,
    generate,
    instructor_notebook,
    read_notebook,
    release_notebook,
)
from qcoder_ds.grading.errors import AssignmentError


def _strip_ids(nb):
    nb = copy.deepcopy(nb)
    for c in nb.cells:
        c.pop("id", None)
    return nb


@pytest.mark.parametrize("name", ["problem1", "problem2"])
def test_release_equals_nbgraders_release(shared_dir, tmp_path, name):
    ug = shared_dir / "compat" / "nbgrader" / "user_guide"
    ref = nbformat.read(str(ug / "release" / "ps1" / f"{name}.ipynb"), as_version=4)
    # nbgrader's docs course prepends a header notebook (not shipped): rebuild it from the
    # release's first three cells, which carry no nbgrader metadata.
    assert all("nbgrader" not in c.metadata for c in ref.cells[:3])
    header = nbformat.v4.new_notebook(cells=copy.deepcopy(ref.cells[:3]))
    nbformat.write(header, str(tmp_path / "header.ipynb"))
    src = nbformat.read(str(ug / "source" / "ps1" / f"{name}.ipynb"), as_version=4)
    released, _ = generate(src, name, header=str(tmp_path / "header.ipynb"))
    assert _strip_ids(released) == _strip_ids(ref)
    for ours, theirs in zip(released.cells, ref.cells, strict=True):
        if "nbgrader" in theirs.metadata and "checksum" in theirs.metadata.nbgrader:
            assert ours.metadata.nbgrader["checksum"] == theirs.metadata.nbgrader["checksum"]


def test_checksum_is_nbgraders(shared_dir):
    ug = shared_dir / "compat" / "nbgrader" / "user_guide"
    nb = nbformat.read(str(ug / "release" / "ps1" / "problem1.ipynb"), as_version=4)
    checked = 0
    for c in nb.cells:
        if "checksum" in c.metadata.get("nbgrader", {}):
            assert compute_checksum(c) == c.metadata.nbgrader["checksum"]
            checked += 1
    assert checked == 10


def test_release_clears_solutions_and_hidden_tests_and_locks():
    src = source_notebook()
    rel = release_notebook(src)
    ins = instructor_notebook(src)
    text = "\n".join(c.source for c in rel.cells)
    assert "return a + b" not in text and "raise NotImplementedError()" in text
    assert not any(line in text for line in HIDDEN_LINES)
    assert "assert add(0, 0) == 0" in text  # the visible part of the hidden-test cell stays
    ins_text = "\n".join(c.source for c in ins.cells)
    assert all(line in ins_text for line in HIDDEN_LINES)
    assert "return a + b" not in ins_text  # the instructor copy holds tests, not solutions
    tests = [c for c in rel.cells if nbutils.is_grade(c) and not nbutils.is_solution(c)]
    assert all(c.metadata["editable"] is False and c.metadata["deletable"] is False
               for c in tests)
    for r, i in zip(rel.cells, ins.cells, strict=True):
        if "checksum" in r.metadata.get("nbgrader", {}):
            assert r.metadata.nbgrader["checksum"] == nbutils.compute_checksum(r)
            assert i.metadata.nbgrader["checksum"] == nbutils.compute_checksum(i)
    assert src.cells[1].source.count("BEGIN SOLUTION") == 1  # input untouched


def test_bad_sources_are_refused_clearly(tmp_path):
    nb = source_notebook()
    nb.cells[1].source = "### BEGIN SOLUTION\nx = 1\n"  # no END SOLUTION
    with pytest.raises(AssignmentError, match="end solution"):
        release_notebook(nb)
    nb = source_notebook()
    nb.cells[2].metadata.nbgrader["grade_id"] = "add"  # duplicate id
    with pytest.raises(AssignmentError, match="add"):
        release_notebook(nb)
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(AssignmentError, match="not a readable Jupyter notebook"):
        read_notebook(bad)


def test_assign_directory_writes_nothing_for_a_bad_notebook(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(source_notebook(), str(src / "a.ipynb"))
    (src / "b.ipynb").write_text("garbage")
    (src / "data.csv").write_text("x\n1\n")
    with pytest.raises(AssignmentError, match="b.ipynb"):
        assign_directory(src, tmp_path / "rel", tmp_path / "gb.db")
    assert not (tmp_path / "rel").exists()
    (src / "b.ipynb").unlink()
    written = assign_directory(src, tmp_path / "rel", tmp_path / "gb.db")
    assert sorted(p.name for p in written) == ["a.ipynb", "data.csv"]
    assert (tmp_path / "rel" / "data.csv").read_text() == "x\n1\n"
