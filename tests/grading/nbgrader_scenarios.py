"""The notebooks of nbgrader's own autograde tests (``nbgrader/tests/apps/files/`` in
jupyter/nbgrader), rebuilt in code from what each holds, for ``test_compat_autograde.py``.

Each source notebook is the cells nbgrader's file has (sources and nbgrader metadata); each
submission is our own release of it with the student's answers, as nbgrader's
``submitted-*.ipynb`` files are its release with answers.
"""

from __future__ import annotations

import copy

import nbformat
from helpers import _meta as meta  # one nbgrader cell-metadata builder
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
SHOWTRACEBACK = ("import IPython.core.interactiveshell\n"
                 "IPython.core.interactiveshell.InteractiveShell.showtraceback = {}")


def notebook(cells: list, kernel: str = "python3", language: str = "python"):
    return new_notebook(cells=cells, metadata={"kernelspec": {
        "display_name": "Python 3", "language": language, "name": kernel}})


def ps1() -> nbformat.NotebookNode:
    """nbgrader's ``submitted-unchanged.ipynb``: an answer, two tests (1 pt each), a written
    answer (2 pt), a graded code answer (3 pt), two read-only cells."""
    return notebook([
        new_code_cell(STUB, metadata=meta("set_a", solution=True)),
        new_code_cell('print("Success!")', metadata=meta("foo", grade=True, points=1.0)),
        new_code_cell("assert a == 1", metadata=meta("bar", grade=True, points=1.0)),
        new_markdown_cell("YOUR ANSWER HERE",
                          metadata=meta("baz", grade=True, solution=True, points=2.0)),
        new_code_cell(STUB, metadata=meta("quux", grade=True, solution=True, points=3.0)),
        new_code_cell("print(\"Don't change this cell!\")", metadata=meta("ro1", locked=True)),
        new_markdown_cell("This cell shouldn't be changed.", metadata=meta("ro2", locked=True)),
    ], kernel="python")


CHANGED = {"set_a": "# YOUR CODE HERE\na = 1", "baz": "An answer!",
           "quux": "# YOUR CODE HERE\nb = 2"}  # nbgrader's submitted-changed.ipynb


def cheat(variant: str) -> dict:
    """``submitted-cheat-attempt(-alternative).ipynb``: changed, with set_a patching
    ``InteractiveShell.showtraceback`` instead of defining ``a``."""
    return {**CHANGED, "set_a": "# YOUR CODE HERE\n" + SHOWTRACEBACK.format(variant)}


def squares() -> nbformat.NotebookNode:
    """``test-hidden-tests.ipynb``: answers that pass the visible tests and fail hidden ones."""
    sq = ('def squares(n):\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n    if n < 1:\n'
          '        raise ValueError("n must be greater than or equal to 1")\n'
          "    return {1: [1], 2: [1, 4], 10: [1, 4, 9, 16, 25, 36, 49, 64, 81, 100]}.get(n)")
    ss = ("def sum_of_squares(n):\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n"
          "    squares(10)\n    return {1: 1, 2: 5, 10: 385}.get(n)")
    hidden = ("### BEGIN HIDDEN TESTS\n{}\n### END HIDDEN TESTS")
    return notebook([
        new_code_cell(sq, metadata=meta("squares", solution=True)),
        new_code_cell("assert squares(1) == [1]\nassert squares(2) == [1, 4]\n" + hidden.format(
            "assert squares(10) == [1, 4, 9, 16, 25, 36, 49, 64, 81, 100]\n"
            "assert squares(11) == [1, 4, 9, 16, 25, 36, 49, 64, 81, 100, 121]"),
            metadata=meta("correct_squares", grade=True, points=1)),
        new_code_cell("for n in (0, -4):\n    try:\n        squares(n)\n    except ValueError:\n"
                      "        pass\n    else:\n        raise AssertionError('did not raise')",
                      metadata=meta("squares_invalid_input", grade=True, points=1)),
        new_code_cell(ss, metadata=meta("sum_of_squares", solution=True)),
        new_code_cell("assert sum_of_squares(1) == 1\nassert sum_of_squares(2) == 5\n"
                      + hidden.format("assert sum_of_squares(10) == 385\n"
                                      "assert sum_of_squares(11) == 506"),
                      metadata=meta("correct_sum_of_squares", grade=True, points=0.5)),
        new_code_cell("orig_squares = squares\ndel squares\ntry:\n    sum_of_squares(1)\n"
                      "except NameError:\n    pass\nelse:\n    raise AssertionError('no')\n"
                      "finally:\n    squares = orig_squares",
                      metadata=meta("sum_of_squares_uses_squares", grade=True, points=0.5)),
    ], kernel="python")


def validating_env() -> nbformat.NotebookNode:
    """``validating-environment-variable.ipynb``: a test that fails while nbgrader runs it."""
    return notebook([
        new_code_cell("import os"),
        new_code_cell("if os.getenv('NBGRADER_EXECUTION'):\n    assert False",
                      metadata=meta("env", grade=True, locked=True, points=1)),
    ])


def timeout() -> nbformat.NotebookNode:
    """``timeout.ipynb``: the answer sleeps 5 s inside the test."""
    return notebook([
        new_code_cell("import time\ndef foo():\n    time.sleep(5)\n    return True",
                      metadata=meta("squares", solution=True)),
        new_code_cell("assert foo()", metadata=meta("correct_squares", grade=True, points=1)),
    ])


def infinite_loop() -> nbformat.NotebookNode:
    """``infinite-loop.ipynb``: one ordinary cell that never ends."""
    return notebook([new_code_cell("while True:\n    pass")], kernel="python")


ABC = 'a = 5\nb = "hello"\nc = [1, 2, "test"]'
AUTOTEST_SOLUTION = "### BEGIN SOLUTION\n{}\n### END SOLUTION"
MULTI = (ABC + '\nd = {"a" : "f", 3 : [1.2, 3]}\ne = (5, -3.3, "d")\nf = False\n'
         "def fun(x):\n    if x < 0:\n        raise ValueError\n    else:\n        return x")
MULTI_CHANGED = MULTI.replace('d = {"a" : "f", 3 : [1.2, 3]}', "d = {1 : 6, 3: 5}").replace(
    'e = (5, -3.3, "d")', "e = [5, -3.3, 'd']").replace("f = False", "f = True")
SPACINGS = ("### {0} a                        \n#{0} a\n# {0} a\n## {0} a\n#        {0} a\n"
            "# # # # {0} a")


def autotest(kind: str) -> nbformat.NotebookNode:
    """``autotest-simple|hashed|multi|hidden.ipynb``: AUTOTEST directives for ``a, b, c``."""
    soln = new_code_cell(AUTOTEST_SOLUTION.format(MULTI if kind == "multi" else ABC),
                         metadata=meta("soln", solution=True))
    tests = {
        "simple": ["### AUTOTEST a\n### AUTOTEST b\n### AUTOTEST c"],
        "hashed": ["### HASHED AUTOTEST a\n### HASHED AUTOTEST b\n### HASHED AUTOTEST c\n\n"
                   + SPACINGS.format("HASHED AUTOTEST")],
        "hidden": ["### BEGIN HIDDEN TESTS\n### AUTOTEST a\n### AUTOTEST b\n### AUTOTEST c\n"
                   "### END HIDDEN TESTS\n\n### AUTOTEST type(a)\n### AUTOTEST type(b)\n"
                   "### AUTOTEST type(c)"],
        "multi": ["### AUTOTEST a\n### AUTOTEST b\n### AUTOTEST c",
                  '### AUTOTEST type(a); str(a); a == "5";\n### AUTOTEST [ch for ch in b]; '
                  'len(c);\n### AUTOTEST a;\n\nprint("hello!")\n\n' + SPACINGS.format("AUTOTEST"),
                  "### AUTOTEST a; b; c; d; e; f;",
                  "def test_func_throws(func, ErrorType):\n    try:\n        func()\n"
                  "    except ErrorType:\n        return True\n    else:\n"
                  "        print('Did not raise right type of error!')\n        return False\n\n"
                  "### AUTOTEST fun(3)\n### AUTOTEST test_func_throws(lambda : fun(-4), "
                  "ValueError)\n### AUTOTEST test_func_throws(lambda : fun(0), ValueError)"],
    }[kind]
    return notebook([soln] + [new_code_cell(t, metadata=meta(f"t{i}", grade=True, points=1))
                              for i, t in enumerate(tests)])


def answered(released: nbformat.NotebookNode, answers: dict | None,
             kernel: str | None = None) -> nbformat.NotebookNode:
    """The released notebook with ``answers`` (grade id -> source) typed in."""
    nb = copy.deepcopy(released)
    for c in nb.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if answers and gid in answers:
            c.source = answers[gid]
    if kernel is not None:
        nb.metadata.kernelspec = {"display_name": kernel, "language": kernel, "name": kernel}
    return nb


# nbgrader's autotests.yml, python3 part: the templates these notebooks dispatch to
AUTOTESTS_YML = """\
python3:
    setup: "from hashlib import sha1"
    hash: 'sha1({{snippet}}.encode("utf-8")+b"{{salt}}").hexdigest()'
    dispatch: "type({{snippet}})"
    normalize: "str({{snippet}})"
    check: 'assert {{snippet}} == "{{value}}", "{{message}}"'
    success: "print('Success!')"
    templates:
        default:
            - {test: "type({{snippet}})", fail: "type of {{snippet}} is not correct"}
            - {test: "{{snippet}}", fail: "value of {{snippet}} is not correct"}
        int:
            - {test: "type({{snippet}})", fail: "type of {{snippet}} is not int"}
            - {test: "{{snippet}}", fail: "value of {{snippet}} is not correct"}
        list:
            - {test: "type({{snippet}})", fail: "type of {{snippet}} is not list"}
            - {test: "len({{snippet}})", fail: "length of {{snippet}} is not correct"}
            - {test: "sorted(map(str, {{snippet}}))", fail: "values of {{snippet}} are wrong"}
            - {test: "{{snippet}}", fail: "order of elements of {{snippet}} is not correct"}
        tuple:
            - {test: "type({{snippet}})", fail: "type of {{snippet}} is not tuple"}
            - {test: "len({{snippet}})", fail: "length of {{snippet}} is not correct"}
            - {test: "sorted(map(str, {{snippet}}))", fail: "values of {{snippet}} are wrong"}
            - {test: "{{snippet}}", fail: "order of elements of {{snippet}} is not correct"}
        str:
            - {test: "type({{snippet}})", fail: "type of {{snippet}} is not str"}
            - {test: "len({{snippet}})", fail: "length of {{snippet}} is not correct"}
            - {test: "{{snippet}}.lower()", fail: "value of {{snippet}} is not correct"}
            - {test: "{{snippet}}", fail: "incorrect case of letters in {{snippet}}"}
        dict:
            - {test: "type({{snippet}})", fail: "type of {{snippet}} is not dict"}
            - {test: "len(list({{snippet}}.keys()))", fail: "number of keys is not correct"}
            - {test: "sorted(map(str, {{snippet}}.keys()))", fail: "keys are not correct"}
            - {test: "sorted(map(str, {{snippet}}.values()))", fail: "values are not correct"}
            - {test: "{{snippet}}", fail: "incorrect correspondence in {{snippet}}"}
        bool:
            - {test: "type({{snippet}})", fail: "type of {{snippet}} is not bool"}
            - {test: "{{snippet}}", fail: "boolean value of {{snippet}} is not correct"}
        type:
            - {test: "{{snippet}}", fail: "type of {{snippet}} is not correct"}
"""
