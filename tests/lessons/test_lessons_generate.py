"""`qcoder lessons generate`: gated nbgrader assignments, written only when every exercise
works, readable by nbgrader itself."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from qcoder_ds.cli import main
from qcoder_ds.lessons.errors import GateError
from qcoder_ds.lessons.generate import generate

LESSONS = Path(__file__).resolve().parents[2] / "lessons"


@pytest.fixture(scope="module")
def assignment(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    rc = main(["lessons", "generate", "--topic", "groupby", "--level", "beginner", "--n", "5",
               "--seed", "7", "-o", str(out)])
    assert rc == 0
    return out, "groupby_beginner_seed7"


def _cells(nb, role):
    return [c for c in nb.cells if c.metadata.get("qcoder", {}).get("role") == role]


def test_source_and_release_are_written_with_data(assignment):
    out, name = assignment
    src = nbformat.read(out / "source" / name / f"{name}.ipynb", 4)
    rel = nbformat.read(out / "release" / name / f"{name}.ipynb", 4)
    for d in (out / "source" / name, out / "release" / name):
        assert (d / "data" / "sales.csv").stat().st_size > 1000
        assert (d / "qcoder_checks.py").is_file()
    assert len(_cells(src, "answer")) == 5
    for c in _cells(src, "answer"):
        assert c.source.startswith("### BEGIN SOLUTION") and "### END SOLUTION" in c.source
    for c in _cells(rel, "answer"):
        assert c.source == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert all("### BEGIN HIDDEN TESTS" in c.source for c in _cells(src, "hidden"))
    assert not any("run_reference" in c.source for c in rel.cells)  # no solution leaks
    points = [c.metadata.nbgrader["points"] for c in _cells(src, "visible") + _cells(src, "hidden")]
    assert sum(points) == 10  # beginner: 1 visible + 1 hidden point each
    report = json.loads((out / f"{name}.gate.json").read_text())
    assert report["accepted"] == 5 and report["rejected"] == 0
    assert report["wrong_caught"] == report["wrong_solutions"] == 10
    assert not [p for p in out.iterdir() if p.name.startswith(".qcoder-stage")]


def test_notebooks_pass_nbgraders_own_validator(assignment):
    from nbgrader.nbgraderformat.v3 import MetadataValidatorV3

    out, name = assignment
    for kind in ("source", "release"):
        nb = nbformat.read(out / kind / name / f"{name}.ipynb", 4)
        MetadataValidatorV3().validate_nb(nb)
        for c in nb.cells:
            if "nbgrader" in c.metadata:
                assert set(c.metadata.nbgrader) <= {
                    "schema_version", "grade", "solution", "locked", "task", "grade_id",
                    "points", "checksum", "cell_type"}


def test_nbgrader_generate_assignment_accepts_the_source(assignment, tmp_path):
    out, name = assignment
    course = tmp_path / "course"
    shutil.copytree(out / "source", course / "source")
    nbgrader = Path(sys.executable).with_name("nbgrader")
    env = {**os.environ, "PATH": f"{nbgrader.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(nbgrader), "generate_assignment", name, "--force",
                           "--CourseDirectory.root=" + str(course)],
                          cwd=course, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    theirs = nbformat.read(course / "release" / name / f"{name}.ipynb", 4)
    ours = nbformat.read(out / "release" / name / f"{name}.ipynb", 4)
    assert [c.source for c in theirs.cells] == [c.source for c in ours.cells]
    assert [c.metadata.get("nbgrader", {}).get("checksum") for c in theirs.cells] == [
        c.metadata.get("nbgrader", {}).get("checksum") for c in ours.cells]


def test_the_source_notebook_passes_in_a_real_kernel(assignment, tmp_path):
    from nbclient import NotebookClient

    out, name = assignment
    work = tmp_path / name
    shutil.copytree(out / "source" / name, work)
    nb = nbformat.read(work / f"{name}.ipynb", 4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()
    for c in _cells(nb, "visible") + _cells(nb, "hidden"):
        assert not [o for o in c.outputs if o.output_type == "error"
                    or (o.output_type == "stream" and o.name == "stderr")], c.outputs


def test_seeds_change_the_data_and_numbers(tmp_path):
    a = generate("selection", "beginner", 2, 1, tmp_path / "a")
    b = generate("selection", "beginner", 2, 2, tmp_path / "b")
    da = (a.source / "data" / "sales.csv").read_text()
    db = (b.source / "data" / "sales.csv").read_text()
    assert da != db
    pa = [c.source for c in nbformat.read(a.source / f"{a.name}.ipynb", 4).cells]
    pb = [c.source for c in nbformat.read(b.source / f"{b.name}.ipynb", 4).cells]
    assert pa != pb
    again = generate("selection", "beginner", 2, 1, tmp_path / "c")
    assert (again.source / "data" / "sales.csv").read_text() == da


def test_a_template_whose_solution_fails_is_reported_and_nothing_is_written(tmp_path):
    root = tmp_path / "lessons"
    shutil.copytree(LESSONS / "datasets", root / "datasets")
    (root / "pandas").mkdir()
    (root / "pandas" / "broken.toml").write_text('''
subject = "pandas"
topic = "broken"
[[template]]
id = "typo"
level = "beginner"
dataset = "sales"
kind = "series"
prompt = "Total revenue per region."
solution = 'result = sales.groupby("regoin")["revenue"].sum()'
wrong = ['result = sales.groupby("region")["revenue"].mean()']
[[template]]
id = "lenient"
level = "beginner"
dataset = "sales"
kind = "scalar"
prompt = "The number of orders."
solution = 'result = len(sales)'
wrong = ['result = len(sales) + 0']
''')
    out = tmp_path / "out"
    with pytest.raises(GateError) as e:
        generate("broken", None, 2, 0, out, lessons_root=root)
    msg = str(e.value)
    assert "reference solution fails" in msg and "KeyError" in msg and "regoin" in msg
    assert "wrong solution 1 passes every test" in msg
    assert e.value.report["rejected"] == 2
    assert list(out.iterdir()) == []


def test_existing_assignment_is_not_overwritten_without_force(assignment, capsys):
    out, _ = assignment
    rc = main(["lessons", "generate", "--topic", "groupby", "--level", "beginner", "--n", "5",
               "--seed", "7", "-o", str(out)])
    assert rc == 1
    assert "exists; use --force" in capsys.readouterr().err


def test_cli_list_and_check(capsys):
    assert main(["lessons", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {t["level"] for t in listing["window-functions"]} == {
        "beginner", "intermediate", "advanced"}
    assert main(["lessons", "check", "--topic", "reshape", "--seeds", "4"]) == 0
    assert "seed 4: 3/3 templates pass the gate, wrong solutions caught 6/6" in (
        capsys.readouterr().out)
    assert main(["lessons", "generate", "-o", "x"]) == 1
    assert "give --topic" in capsys.readouterr().err
