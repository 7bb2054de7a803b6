"""Cross-check with real nbgrader: on an assignment made by ``qcoder lessons``, nbgrader's
``generate_assignment`` + ``autograde`` and ours give the same release and the same score
for every graded cell of every (honest) submission."""

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader import utils as nbutils

from qcoder_ds.grading.assign import assign_directory
from qcoder_ds.grading.autograde import autograde
from qcoder_ds.grading.gradebook import GradebookStore
from qcoder_ds.grading.sandbox import Limits

pytestmark = pytest.mark.slow  # generates an assignment and runs nbgrader itself

_SOL = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")


def _make_assignment(course: Path) -> str:
    """An assignment from qcoder lessons; the small built-in one if lessons is absent."""
    try:
        from qcoder_ds.lessons.generate import generate
    except ImportError:
        from helpers import write_source

        return write_source(course).name
    a = generate("selection", None, 2, 7, course)
    shutil.rmtree(a.release)  # nbgrader makes its own
    return a.name


def _answers(source_nb) -> dict[str, str]:
    """Each answer cell's solution text, as a student who solved it would write it."""
    out = {}
    for c in source_nb.cells:
        if nbutils.is_solution(c) and c.cell_type == "code":
            out[c.metadata.nbgrader["grade_id"]] = "\n".join(
                line for line in c.source.split("\n") if not _SOL.match(line))
    return out


def _nbgrader(course: Path, *args: str) -> None:
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                 os.environ.get("PATH", "")]))
    exe = Path(sys.executable).with_name("nbgrader")
    r = subprocess.run([str(exe), *args, "--force", f"--CourseDirectory.root={course}",
                        f"--CourseDirectory.db_url=sqlite:///{course}/nbgrader.db"],
                       cwd=course, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def crosscheck(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    name = _make_assignment(course)
    _nbgrader(course, "generate_assignment", name)
    release = course / "release" / name
    [nb_path] = sorted(release.glob("*.ipynb"))
    released = nbformat.read(str(nb_path), 4)
    source = nbformat.read(str(course / "source" / name / nb_path.name), 4)
    answers = _answers(source)
    first = sorted(answers)[0]
    students = {
        "solved": answers,
        "stub": {},
        "half": {first: answers[first]},
        "wrong": {gid: "result = None\nquery = 'SELECT 1'" for gid in answers},
    }
    for student, given in students.items():
        d = course / "submitted" / student / name
        shutil.copytree(release, d)
        nb = copy.deepcopy(released)
        for c in nb.cells:
            gid = c.metadata.get("nbgrader", {}).get("grade_id")
            if gid in given:
                c.source = given[gid]
        nbformat.write(nb, str(d / nb_path.name))
    _nbgrader(course, "autograde", name)
    from nbgrader.api import Gradebook

    theirs: dict = {}
    with Gradebook(f"sqlite:///{course}/nbgrader.db") as gb:
        for sub in gb.assignment_submissions(name):
            for nbsub in sub.notebooks:
                for g in nbsub.grades:
                    theirs[(sub.student.id, g.cell.name)] = g.auto_score
    ours_course = tmp_path_factory.mktemp("ours")
    gb_path = ours_course / "gradebook.db"
    assign_directory(course / "source" / name, ours_course / "release" / name, gb_path)
    summary = autograde(course / "submitted", name, gb_path, out_dir=ours_course / "autograded",
                        jobs=2, limits=Limits(cell_timeout=120, notebook_timeout=600))
    with GradebookStore(gb_path) as store:
        ours = {(c["student"], c["grade_id"]): c["score"] for c in store.cell_results(name)
                if c["kind"] in ("test", "manual", "task")}
    return {"name": name, "course": course, "ours_course": ours_course, "theirs": theirs,
            "ours": ours, "summary": summary, "students": students, "nb": nb_path.name}


def test_same_release_as_nbgrader(crosscheck):
    c = crosscheck
    theirs = nbformat.read(str(c["course"] / "release" / c["name"] / c["nb"]), 4)
    ours = nbformat.read(str(c["ours_course"] / "release" / c["name"] / c["nb"]), 4)
    assert [x.source for x in ours.cells] == [x.source for x in theirs.cells]
    assert [x.metadata for x in ours.cells] == [x.metadata for x in theirs.cells]


def test_same_scores_as_nbgrader_for_every_cell(crosscheck):
    c = crosscheck
    assert not c["summary"].failed
    assert set(c["ours"]) == set(c["theirs"])
    assert len(c["ours"]) >= 4 * len(c["students"]) - 4
    assert c["ours"] == c["theirs"]
    solved = sum(v or 0 for (s, _), v in c["ours"].items() if s == "solved")
    stub = sum(v or 0 for (s, _), v in c["ours"].items() if s == "stub")
    assert solved > 0 and stub == 0  # the check is not vacuous
