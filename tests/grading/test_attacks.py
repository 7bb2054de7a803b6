"""One submission per attack from issue 5, graded in one batch: each gets the score it
deserves (never the points of a test it dodged), a clear reason, and the batch carries on.

The assignment: answer ``add`` (0 pt), a visible test (1 pt), a test with hidden asserts
(2 pt), a written answer (1 pt, graded by hand). An honest correct notebook scores 3.
"""

import copy
import shutil

import nbformat
import pytest
from helpers import HIDDEN_LINES, cell_by_id, student_copy, write_source, write_submission
from nbformat.v4 import new_code_cell

from qcoder_ds import isolation
from qcoder_ds.grading.assign import assign_directory
from qcoder_ds.grading.autograde import autograde
from qcoder_ds.grading.feedback import write_feedback
from qcoder_ds.grading.gradebook import GradebookStore
from qcoder_ds.grading.sandbox import Limits

pytestmark = pytest.mark.slow  # ~20 kernels, several deliberate time-outs

RIGHT = "def add(a, b):\n    return a + b"
WRONG = "def add(a, b):\n    return 0"


def _drop_tests(nb):
    nb.cells = [c for c in nb.cells
                if c.metadata.get("nbgrader", {}).get("grade_id") not in ("test_visible",
                                                                          "test_hidden")]


def _edit_tests(nb):
    cell_by_id(nb, "test_visible").source = "pass"
    cell_by_id(nb, "test_hidden").source = "print('all good')"


def _edit_metadata(nb):
    for gid in ("test_visible", "test_hidden"):
        m = cell_by_id(nb, gid).metadata.nbgrader
        m.update(grade=False, points=0)
    cell_by_id(nb, "add").metadata.nbgrader.update(grade=True, points=100)


def _inject_after_test(nb):
    i = nb.cells.index(cell_by_id(nb, "test_visible"))
    fake = copy.deepcopy(nb.cells[i])
    fake.source = "pass"  # a forged copy of the test, placed first
    nb.cells.insert(i, fake)
    nb.cells.insert(i + 2, new_code_cell(RIGHT))  # fixes add *after* the visible test


def _read_hidden(course):
    return f"""import os
course = {str(course)!r}
roots = [course, "/tmp", os.path.expanduser("~")]
for pid in os.listdir("/proc"):
    if pid.isdigit():  # other processes' views of the file system
        roots += [f"/proc/{{pid}}/cwd", f"/proc/{{pid}}/root" + course]
needle = ("add(10" + ", 5)").encode()  # not spelled out: this notebook is on disk too
found = []
# toolchains and caches (dot-folders, site-packages) are big and never hold the tests
skip = {{"site-packages", "node_modules"}}
for root in roots:
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in skip and not x.startswith(".")]
        for f in files:
            p = os.path.join(d, f)
            try:
                with open(p, "rb") as fh:
                    if needle in fh.read(2_000_000):
                        found.append(p)
            except OSError:
                pass
print("found:", found)
def add(a, b):
    return a + b if found else 0
"""


DETECT = """import json, os, sys
print("seen:" + json.dumps({"env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd()}))
GRADED = os.environ.get("NBGRADER_EXECUTION") == "autograde"
def add(a, b):
    return a + b if GRADED else 0
"""
# what the kernel may see of its environment: nbgrader's own variable, nothing else of ours
ENV_ALLOWED = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "HOME", "OMP_NUM_THREADS",
               "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONDONTWRITEBYTECODE",
               "MPLBACKEND", "NBGRADER_EXECUTION", "PYTHONPATH", "JPY_PARENT_PID",
               "PYDEVD_USE_FRAME_EVAL", "CLICOLOR", "CLICOLOR_FORCE", "FORCE_COLOR", "PAGER",
               "GIT_PAGER", "PWD", "SHLVL", "_"}

ATTACKS = {
    "honest": (RIGHT, None),
    "loop_in_answer": ("def add(a, b):\n    while True:\n        pass", None),
    "loop_ignores_interrupt": (RIGHT + "\nimport time\nwhile True:\n    try:\n"
                               "        time.sleep(0.05)\n    except KeyboardInterrupt:\n"
                               "        pass", None),
    "memory": ("def add(a, b):\n    hog = bytearray(16 * 1024 ** 3)\n    return a + b", None),
    "os_exit": (RIGHT + "\nimport os\nos._exit(3)", None),
    "kill_kernel": ("import ctypes\ndef add(a, b):\n    ctypes.string_at(0)\n    return a + b",
                    None),
    "print_gigabyte": (RIGHT + "\nfor _ in range(10 ** 6):\n    print('x' * 1000)", None),
    "delete_tests": (WRONG, _drop_tests),
    "delete_tests_right": (RIGHT, _drop_tests),
    "edit_tests": (WRONG, _edit_tests),
    "edit_metadata": (WRONG, _edit_metadata),
    "showtraceback": (WRONG + "\nip = get_ipython()\nip.showtraceback = lambda *a, **k: None\n"
                      "ip._showtraceback = lambda *a, **k: None", None),
    "showtraceback_class": (WRONG + "\nfrom IPython.core.interactiveshell import "
                            "InteractiveShell\nInteractiveShell.showtraceback = "
                            "lambda *a, **k: None", None),
    "custom_exc": (WRONG + "\nget_ipython().set_custom_exc((Exception,), "
                   "lambda *a, **k: None)", None),
    "rigged_eq": ("class Anything:\n    def __eq__(self, other):\n        return True\n"
                  "def add(a, b):\n    return Anything()", None),
    "rigged_int": ("class Int(int):\n    def __eq__(self, other):\n        return True\n"
                   "    __hash__ = int.__hash__\ndef add(a, b):\n    return Int(0)", None),
    "detect_grading": (DETECT, None),
    "inject_after_test": (WRONG, _inject_after_test),
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    gb = course / "gradebook.db"
    assign_directory(write_source(course), course / "release" / "adder", gb)
    released = nbformat.read(str(course / "release" / "adder" / "problem.ipynb"), 4)
    subs = course / "submitted"
    for student, (answer, edit) in ATTACKS.items():
        write_submission(subs, student, student_copy(released, answer, edit))
    write_submission(subs, "read_hidden", student_copy(released, _read_hidden(course)))
    write_submission(subs, "malformed", "this is not a notebook {")
    d = write_submission(subs, "stray_files", student_copy(released, RIGHT))
    (d / "scratch.ipynb").write_text("garbage")
    (d / "data.csv").write_text("a,b\n1,2\n")
    limits = Limits(cell_timeout=4, notebook_timeout=60, memory_mb=1024, output_bytes=200_000)
    summary = autograde(subs, "adder", gb, jobs=2, limits=limits)
    with GradebookStore(gb) as store:
        cells = store.cell_results("adder")
        reports = store.submission_reports("adder")
    scores: dict = {}
    for c in cells:
        if c["kind"] == "test":
            scores.setdefault(c["student"], {})[c["grade_id"]] = c
    fb = course / "feedback"
    write_feedback(gb, "adder", subs.parent / "autograded", fb)
    return {"course": course, "summary": summary, "scores": scores, "reports": reports,
            "feedback": fb}


def _total(batch, student):
    return sum(c["score"] for c in batch["scores"][student].values())


def _reasons(batch, student):
    return " | ".join(c["reason"] for c in batch["scores"][student].values())


def test_batch_carries_on(batch):
    s = batch["summary"]
    assert not s.failed
    assert len(s.graded) == len(ATTACKS) + 3


def test_honest_submission_gets_full_points(batch):
    assert _total(batch, "honest") == 3.0
    assert _total(batch, "stray_files") == 3.0


def test_loop_forever_in_answer(batch):
    assert _total(batch, "loop_in_answer") == 0
    assert "ran longer than 4 s" in _reasons(batch, "loop_in_answer")


def test_loop_that_ignores_interrupts(batch):
    assert _total(batch, "loop_ignores_interrupt") == 0
    assert "did not stop" in _reasons(batch, "loop_ignores_interrupt")


def test_memory_exhaustion(batch):
    assert _total(batch, "memory") == 0
    assert "MemoryError" in _reasons(batch, "memory")


def test_os_exit(batch):
    assert _total(batch, "os_exit") == 0
    assert "the kernel exited" in _reasons(batch, "os_exit")
    assert "did not run" in _reasons(batch, "os_exit")


def test_kernel_killed(batch):
    assert _total(batch, "kill_kernel") == 0
    assert "the kernel exited" in _reasons(batch, "kill_kernel")


def test_gigabyte_of_output(batch):
    assert _total(batch, "print_gigabyte") == 0
    assert "printed more than 200,000 bytes" in _reasons(batch, "print_gigabyte")
    nb = nbformat.read(str(batch["course"] / "autograded" / "print_gigabyte" / "adder" /
                           "problem.ipynb"), 4)
    assert len(nbformat.writes(nb)) < 1_000_000


def _events(batch, student):
    return batch["reports"][student]["notebooks"][0]["events"]


def test_deleted_tests_are_restored(batch):
    assert _total(batch, "delete_tests") == 0
    assert _total(batch, "delete_tests_right") == 3.0  # restored tests run and pass
    assert "test cell 'test_hidden' was deleted; the instructor's copy was put back" in \
        _events(batch, "delete_tests")


def test_edited_tests_are_restored(batch):
    assert _total(batch, "edit_tests") == 0
    assert "test cell 'test_visible' was edited; the instructor's copy was used" in \
        _events(batch, "edit_tests")


def test_changed_metadata_is_ignored(batch):
    assert _total(batch, "edit_metadata") == 0
    assert batch["scores"]["edit_metadata"]["test_hidden"]["max_score"] == 2.0
    assert any("metadata of cell 'add' was changed" in e for e in _events(batch,
                                                                          "edit_metadata"))


def test_showtraceback_override(batch):
    assert _total(batch, "showtraceback") == 0
    assert "the test raised AssertionError" in _reasons(batch, "showtraceback")


def test_showtraceback_patched_on_the_class(batch):
    """The patch is undone and reported once; the tests are graded on their merits (add is
    wrong: 0, for the AssertionError, not for the tampering)."""
    assert _total(batch, "showtraceback_class") == 0
    assert "the test raised AssertionError" in _reasons(batch, "showtraceback_class")
    cheats = [e for e in _events(batch, "showtraceback_class")
              if "InteractiveShell.showtraceback" in e]
    assert len(cheats) == 1 and "undone" in cheats[0]


def test_custom_exception_handler(batch):
    assert _total(batch, "custom_exc") == 0
    assert "AssertionError" in _reasons(batch, "custom_exc")


def test_rigged_eq(batch):
    for student in ("rigged_eq", "rigged_int"):
        assert _total(batch, student) == 0
        assert "UntrustedValueError" in _reasons(batch, student)


def test_reading_hidden_tests_from_disk(batch):
    if not isolation.available():
        pytest.skip("no walls here: instructor files cannot be hidden")
    assert _total(batch, "read_hidden") == 0
    # the attack was real: the instructor's gradebook on disk holds the hidden test
    assert b"add(10, 5)" in (batch["course"] / "gradebook.db").read_bytes()
    nb = nbformat.read(str(batch["course"] / "autograded" / "read_hidden" / "adder" /
                           "problem.ipynb"), 4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "found: []" in printed


def test_detecting_grading_gains_nothing(batch):
    """NBGRADER_EXECUTION is set, as nbgrader sets it: a notebook that behaves differently
    when graded is graded on what it did, against the instructor's tests (its add is right
    when graded, so it scores 3); nothing else reveals the grader or a course path."""
    import json

    assert _total(batch, "detect_grading") == 3.0
    nb = nbformat.read(str(batch["course"] / "autograded" / "detect_grading" / "adder" /
                           "problem.ipynb"), 4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    seen = json.loads(printed.split("seen:", 1)[1].splitlines()[0])
    assert seen["env"]["NBGRADER_EXECUTION"] == "autograde"
    assert set(seen["env"]) <= ENV_ALLOWED, set(seen["env"]) - ENV_ALLOWED
    del seen["env"]["NBGRADER_EXECUTION"]
    text = json.dumps(seen).upper()
    for word in ("NBGRADER", "QCODER", "SUBMITTED", "GRADEBOOK", str(batch["course"]).upper()):
        assert word not in text, word


def test_cells_injected_after_a_test_do_not_change_it(batch):
    s = batch["scores"]["inject_after_test"]
    assert s["test_visible"]["score"] == 0  # add was wrong when the test ran
    assert s["test_hidden"]["score"] == 2.0  # the student's later fix counts for later tests


def test_malformed_notebook_is_reported(batch):
    assert _total(batch, "malformed") == 0
    nbr = batch["reports"]["malformed"]["notebooks"][0]
    assert nbr["status"] == "unreadable" and "not a readable notebook" in nbr["reason"]


def test_stray_files_are_reported(batch):
    problems = batch["reports"]["stray_files"]["problems"]
    assert problems == ["scratch.ipynb is not part of the assignment; ignored"]


def test_feedback_never_shows_hidden_tests(batch):
    pages = list(batch["feedback"].rglob("*.html")) + list(batch["feedback"].rglob("*.md"))
    assert len(pages) == 2 * (len(ATTACKS) + 3)
    for p in pages:
        text = p.read_text()
        for line in HIDDEN_LINES:
            assert line not in text, p
    md = (batch["feedback"] / "delete_tests" / "adder" / "problem.md").read_text()
    # add returns 0: the visible assert add(0, 0) == 0 passes, the hidden ones fail
    assert "A hidden test failed (AssertionError)." in md
    assert "| test_hidden | 0 / 2 |" in md
    assert "assert add(1, 2) == 3" in md  # visible test text is shown


def test_no_leftover_processes(batch):
    import psutil

    mine = psutil.Process().children(recursive=True)
    assert not [p for p in mine if "ipykernel" in " ".join(p.cmdline())]
    shutil.rmtree(batch["course"] / "autograded", ignore_errors=True)


def _small_course(tmp_path, test_source, files=None):
    """An assignment whose one test imports helper files shipped with it."""
    from helpers import source_notebook

    nb = source_notebook()
    nb.cells[2].source = test_source
    src = tmp_path / "source" / "adder"
    src.mkdir(parents=True)
    nbformat.write(nb, str(src / "problem.ipynb"))
    for name, text in (files or {}).items():
        (src / name).write_text(text)
    gb = tmp_path / "gradebook.db"
    assign_directory(src, tmp_path / "release" / "adder", gb)
    return gb, nbformat.read(str(tmp_path / "release" / "adder" / "problem.ipynb"), 4)


def test_edited_helper_files_are_replaced(tmp_path):
    gb, released = _small_course(
        tmp_path, "from cases import CASES\nfor a, b, s in CASES:\n    assert add(a, b) == s",
        {"cases.py": "CASES = [(1, 2, 3), (2, 2, 4)]\n"})
    d = write_submission(tmp_path / "submitted", "cheat", student_copy(released, WRONG))
    (d / "cases.py").write_text("CASES = []\n")  # nbgrader would run this copy: full marks
    autograde(tmp_path / "submitted", "adder", gb, jobs=1, limits=Limits(cell_timeout=20))
    with GradebookStore(gb) as store:
        cells = {c["grade_id"]: c for c in store.cell_results("adder")}
        report = store.submission_reports("adder")["cheat"]
    assert cells["test_visible"]["score"] == 0
    assert report["problems"] == ["cases.py was changed in the submission; the instructor's "
                                  "copy was used"]


def test_whole_notebook_time_limit(tmp_path):
    gb, released = _small_course(tmp_path, "assert add(1, 2) == 3")
    nb = student_copy(released, RIGHT)
    nb.cells[2:2] = [new_code_cell("import time\ntime.sleep(2.5)") for _ in range(3)]
    write_submission(tmp_path / "submitted", "slow", nb)
    autograde(tmp_path / "submitted", "adder", gb, jobs=1,
              limits=Limits(cell_timeout=4, notebook_timeout=6))
    with GradebookStore(gb) as store:
        cells = {c["grade_id"]: c for c in store.cell_results("adder")}
    assert cells["test_visible"]["score"] == 0 and cells["test_hidden"]["score"] == 0
    assert "the notebook ran longer than 6 s" in cells["test_visible"]["reason"]
