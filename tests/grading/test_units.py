"""Fast checks without kernels: restoring cells, scoring rules, feedback redaction, guard
rewriting, sandbox options."""

import copy

import pytest
from helpers import HIDDEN_LINES, cell_by_id, source_notebook, student_copy
from nbformat.v4 import new_code_cell, new_output

from qcoder_ds.grading.assign import generate
from qcoder_ds.grading.feedback import Scrubber, failing_line, hidden_region, render_notebook
from qcoder_ds.grading.kernel import CellRun
from qcoder_ds.grading.restore import restore
from qcoder_ds.grading.sandbox import Limits, launcher_argv
from qcoder_ds.grading.scoring import score_cell


@pytest.fixture(scope="module")
def pair():
    released, instructor = generate(source_notebook(), "problem")
    return released, instructor


def _ids(nb):
    return [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]


def test_restore_keeps_answers_and_puts_tests_back(pair):
    released, instructor = pair
    sub = student_copy(released, "def add(a, b):\n    return a - b")
    sub.cells = [c for c in sub.cells if _ids_of(c) != "test_hidden"]
    cell_by_id(sub, "test_visible").source = "pass"
    r = restore(sub, instructor, released)
    assert _ids(r.nb) == ["intro", "add", "test_visible", "test_hidden", "explain"]
    assert cell_by_id(r.nb, "add").source == "def add(a, b):\n    return a - b"
    assert cell_by_id(r.nb, "test_hidden").source == cell_by_id(instructor, "test_hidden").source
    assert all(line in cell_by_id(r.nb, "test_hidden").source for line in HIDDEN_LINES)
    assert cell_by_id(r.nb, "test_visible").source == cell_by_id(released, "test_visible").source
    assert r.events == [
        "test cell 'test_visible' was edited; the instructor's copy was used",
        "test cell 'test_hidden' was deleted; the instructor's copy was put back",
    ]


def _ids_of(c):
    return c.metadata.get("nbgrader", {}).get("grade_id")


def test_restore_keeps_student_cells_in_place_and_strips_forged_ids(pair):
    released, instructor = pair
    sub = student_copy(released, "def add(a, b):\n    return a + b")
    helper = new_code_cell("def helper():\n    return 1")
    forged = new_code_cell("pass", metadata={"nbgrader": {
        "grade": True, "grade_id": "bonus", "points": 50, "locked": False, "solution": False,
        "schema_version": 3}})
    dup = copy.deepcopy(cell_by_id(sub, "test_visible"))
    i = sub.cells.index(cell_by_id(sub, "add"))
    sub.cells[i + 1:i + 1] = [helper, forged]
    sub.cells.append(dup)
    r = restore(sub, instructor, released)
    srcs = [c.source for c in r.nb.cells]
    assert srcs[2] == "def helper():\n    return 1" and srcs[3] == "pass"
    assert "nbgrader" not in r.nb.cells[3].metadata  # the forged grade cell earns nothing
    assert _ids(r.nb).count("test_visible") == 1
    assert any("claims grade id 'bonus'" in e for e in r.events)
    assert any("duplicate of grade id 'test_visible'" in e for e in r.events)
    assert len({c["id"] for c in r.nb.cells}) == len(r.nb.cells)


def _cell(pair, gid):
    return copy.deepcopy(cell_by_id(pair[1], gid))


def test_scoring_follows_nbgrader(pair):
    test = _cell(pair, "test_hidden")
    ok = CellRun("ok", outputs=[])
    assert score_cell(test, ok, [])["score"] == 2.0
    partial = CellRun("ok", outputs=[new_output("execute_result", data={"text/plain": "0.5"},
                                                execution_count=1)])
    assert score_cell(test, partial, [])["score"] == 0.5
    stderr = CellRun("ok", outputs=[new_output("stream", name="stderr", text="warn\n")])
    assert score_cell(test, stderr, [])["score"] == 0
    err = CellRun("error", outputs=[new_output("error", ename="AssertionError", evalue="",
                                               traceback=[])])
    assert score_cell(test, err, [])["reason"] == "the test raised AssertionError"
    # the kernel said "error" but nothing was displayed: an overridden showtraceback
    hidden = score_cell(test, CellRun("error", outputs=[]), [])
    assert hidden["score"] == 0 and "no traceback was shown" in hidden["reason"]
    tampered = score_cell(test, ok, ["builtins.len was replaced by notebook code"])
    assert tampered["score"] == 0 and tampered["status"] == "tampered"
    assert score_cell(test, CellRun("timeout", reason="too slow"), [])["score"] == 0
    notrun = score_cell(test, CellRun("not-run", reason="the kernel exited"), [])
    assert notrun["score"] == 0 and "the kernel exited" in notrun["reason"]


def test_written_answer_scoring(pair):
    cell = _cell(pair, "explain")
    r = score_cell(cell, None, [])
    assert r["score"] == 0 and r["comment"] == "No response."
    cell.source = "I added them."
    r = score_cell(cell, None, [])
    assert r["score"] is None and r["status"] == "manual"


def test_hidden_region_and_failing_line():
    src = cell_by_id(generate(source_notebook())[1], "test_hidden").source
    region = hidden_region(src)
    assert region.lines == {3, 4, 5, 6}
    assert region.text == HIDDEN_LINES
    tb = ["\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[3]\x1b[39m\x1b[32m, line 4\x1b[39m"]
    assert failing_line(tb) == 4
    assert Scrubber(region.text)("x assert add(10, 5) == 15 y") == "x [hidden test] y"


VISIBLE_FAIL = ["Traceback", "Cell In[7], line 2", "----> 2 assert add(0, 0) == 0",
                "Cell In[3], line 4, in add", "----> 4 raise ValueError('no')",
                "ValueError: no"]
HIDDEN_FAIL = ["Traceback", "Cell In[7], line 4", "----> 4 assert add(10, 5) == 15",
               "Cell In[3], line 2, in add", "AssertionError"]


@pytest.mark.parametrize("tb,line,shown", [
    # the visible assert called the student's add, which raised on its own line 4: the test
    # cell's line is 2, outside the hidden region (issue 16: it was reported as hidden)
    (VISIBLE_FAIL, 2, "ValueError: no"),
    (HIDDEN_FAIL, 4, "A hidden test failed (AssertionError)."),
])
def test_feedback_tells_visible_failures_from_hidden_ones(pair, tb, line, shown):
    released, instructor = pair
    assert failing_line(tb) == line
    ename = tb[-1].split(":")[0]
    nb = copy.deepcopy(instructor)
    cell_by_id(nb, "test_hidden").outputs = [new_output("error", ename=ename, evalue="no",
                                                        traceback=tb)]
    results = [{"grade_id": "test_hidden", "kind": "test", "score": 0.0, "max_score": 2.0,
                "status": "failed", "reason": f"the test raised {ename}",
                "error": {"ename": ename, "evalue": "no", "traceback": tb}}]
    page = render_notebook("s1", "adder", "problem", results, nb, released, instructor, None)
    assert shown in page.markdown


def test_feedback_notes_submission_problems(pair):
    released, instructor = pair
    report = {"problems": ["scratch.ipynb is not part of the assignment; ignored"],
              "notebooks": []}
    page = render_notebook("s1", "adder", "problem", [], None, released, instructor, report)
    assert "- scratch.ipynb is not part of the assignment; ignored" in page.markdown


def test_feedback_redacts_hidden_tests_everywhere(pair):
    released, instructor = pair
    nb = copy.deepcopy(instructor)
    test = cell_by_id(nb, "test_hidden")
    tb = ["Traceback", "Cell In[3], line 4", "----> 4 assert add(10, 5) == 15",
          "AssertionError: expected 15"]
    test.outputs = [new_output("error", ename="AssertionError", evalue="expected 15",
                               traceback=tb)]
    leak = new_code_cell("print(In)")
    leak.outputs = [new_output("stream", name="stdout", text="assert add(-7, 2) == -5\n")]
    nb.cells.append(leak)
    results = [{"grade_id": "test_hidden", "kind": "test", "score": 0.0, "max_score": 2.0,
                "status": "failed", "reason": "the test raised AssertionError",
                "error": {"ename": "AssertionError", "evalue": "expected 15", "traceback": tb}}]
    page = render_notebook("s1", "adder", "problem", results, nb, released, instructor, None)
    for text in (page.markdown, page.html):
        assert "A hidden test failed (AssertionError)." in text
        for line in HIDDEN_LINES:
            assert line not in text
        assert "expected 15" not in text
    assert "assert add(0, 0) == 0" in page.markdown


def test_launcher_argv_carries_limits(tmp_path):
    argv = launcher_argv(Limits(memory_mb=512), tmp_path, ["k", "-f", "c"], walled=True)
    assert argv[1:3] == ["-m", "qcoder_ds.grading.sandbox"]
    assert argv[argv.index("--memory-mb") + 1] == "512"
    assert "--reduced-isolation" not in argv
    assert argv[-4:] == ["--", "k", "-f", "c"]
    assert "--reduced-isolation" in launcher_argv(Limits(), tmp_path, ["k"], walled=False)


def test_guard_rewrites_comparisons_in_tests():
    import ast

    ns: dict = {}
    src = open(__import__("qcoder_ds.grading.kernel_guard", fromlist=["x"]).__file__).read()
    exec(compile(src, "kernel_guard", "exec"), ns)
    tree = ns["_TestTransformer"]().visit(ast.parse(
        "assert f(1) == [1]\nassert x is None\nnp.testing.assert_allclose(y, 2)"))
    code = ast.unparse(tree)
    assert "assert __qcoder_check__(__qcoder_check__(f(1)) == __qcoder_check__([1]))" in code
    assert "assert __qcoder_check__(x is None)" in code  # identity needs no check
    assert "assert_allclose(__qcoder_check__(y), 2)" in code

    class Rigged:
        def __eq__(self, other):
            return True

    check = ns["_make_checker"]()
    assert check([1, 2.0, "a", {"k": (1,)}]) == [1, 2.0, "a", {"k": (1,)}]
    Rigged.__module__ = "__main__"
    with pytest.raises(AssertionError, match="comparison or arithmetic methods"):
        check([1, Rigged()])


def test_guard_flags_only_notebook_defined_builtin_shadows():
    import os

    ns: dict = {}
    src = open(__import__("qcoder_ds.grading.kernel_guard", fromlist=["x"]).__file__).read()
    exec(compile(src, "kernel_guard", "exec"), ns)

    class FakeShell:
        user_ns = {"open": os.path.join, "sum": lambda xs: 42, "len": 3, "max": max}

    assert ns["_shadowed"](FakeShell(), ["open", "sum", "len", "max", "abs"]) == ["sum"]


def test_process_pool_works_from_ipython(monkeypatch):
    """IPython replaces __main__ with a module object that has no __spec__; spawn needs one."""
    import sys

    from qcoder_ds.grading.autograde import spawn_context

    class DummyMod:  # what IPython's InteractiveShell installs as __main__
        pass

    monkeypatch.setitem(sys.modules, "__main__", DummyMod())
    ctx = spawn_context()
    p = ctx.Process(target=print, args=("",))
    p.start()
    p.join(60)
    assert p.exitcode == 0
