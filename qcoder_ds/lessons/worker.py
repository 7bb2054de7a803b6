"""The gate's worker process: runs exercises' cells as a notebook kernel would.

Started by :mod:`qcoder_ds.lessons.gate` as ``python -m qcoder_ds.lessons.worker JOB OUT``
in the assignment's staging folder (so ``data/`` and ``qcoder_checks.py`` resolve as they
will for the learner). Cells run in order in one namespace; a cell's last expression is
evaluated like IPython does (a test cell that ends in a value would be read as a score by
nbgrader, so it fails here); warnings count as stderr, which nbgrader scores as 0; each
cell has a time limit. Results go to the OUT file as JSON, not stdout, which the
exercise code may write to.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import signal
import sys
import traceback
import warnings
from typing import Any


class CellTimeout(BaseException):
    """Raised in a cell that runs past its limit (BaseException: `except Exception` misses it)."""


def _alarm(_signum, _frame):
    raise CellTimeout()


def run_cell(source: str, ns: dict, timeout: float) -> dict:
    """Execute one cell; return ``{ok, error, stderr, value}`` (value: repr of a last expr)."""
    import matplotlib.pyplot as plt

    out, err = io.StringIO(), io.StringIO()
    result: dict[str, Any] = {"ok": True, "error": "", "stderr": "", "value": None}
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return {"ok": False, "error": f"SyntaxError: {e}", "stderr": "", "value": None}
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            exec(compile(tree, "<cell>", "exec"), ns)  # noqa: S102 - the point of a gate
            if last is not None:
                value = eval(compile(last, "<cell>", "eval"), ns)  # noqa: S307
                if value is not None:
                    result["value"] = repr(value)[:200]
        for w in caught:
            err.write(f"{w.category.__name__}: {w.message}\n")
    except CellTimeout:
        result.update(ok=False, error=f"TimeoutError: the cell ran longer than {timeout:g} s")
    except BaseException as e:  # noqa: BLE001 - any failure of learner code is an outcome
        tb = traceback.extract_tb(e.__traceback__)
        line = next((f.lineno for f in reversed(tb) if f.filename == "<cell>"), None)
        where = f" (line {line})" if line else ""
        result.update(ok=False, error=f"{type(e).__name__}{where}: {e}"[:500])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        plt.close("all")  # the inline backend shows and closes figures after each cell
    result["stderr"] = err.getvalue()[:500]
    return result


def score(test: dict) -> bool:
    """Would nbgrader give this test cell full points? No error, no stderr, no value."""
    return test["ok"] and not test["stderr"] and test["value"] is None


def run_variant(exercises: list[dict], answers: list[str], timeout: float) -> list[dict]:
    """Run the exercises in order in one namespace, each with the given answer cell."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    outcomes = []
    for ex, answer in zip(exercises, answers, strict=True):
        setup = run_cell(ex["cells"]["setup"], ns, timeout)
        ans = run_cell(answer, ns, timeout)
        vis = run_cell(ex["cells"]["visible"], ns, timeout)
        hid = run_cell(ex["cells"]["hidden"], ns, timeout)
        outcomes.append({
            "setup": setup["ok"], "setup_error": setup["error"],
            "answer": ans["ok"], "answer_error": ans["error"],
            "visible": score(vis), "visible_error": vis["error"] or vis["stderr"] or (
                f"the cell ends in a value ({vis['value']})" if vis["value"] else ""),
            "hidden": score(hid), "hidden_error": hid["error"] or hid["stderr"] or (
                f"the cell ends in a value ({hid['value']})" if hid["value"] else ""),
        })
    return outcomes


def run_all(exercises: list[dict], timeout: float, wrong: bool = True) -> dict:
    """The variants the gate needs: the solution and the stub, each as one notebook run,
    and (``wrong``) each wrong solution alone after a fresh set-up."""
    results: dict[str, Any] = {
        "solution": run_variant(exercises, [e["cells"]["answer"] for e in exercises], timeout),
        "stub": run_variant(exercises, [e["cells"]["stub"] for e in exercises], timeout),
        "wrong": [],
    }
    if wrong:
        for ex in exercises:
            results["wrong"].append(
                [run_variant([ex], [w], timeout)[0] for w in ex["cells"]["wrong"]])
    return results


def probe(ex: dict, timeout: float) -> dict:
    """Run the set-up and reference solution once: the facts a visible test may state."""
    from qcoder_checks import describe_answer, query_rows

    ns: dict[str, Any] = {"__name__": "__main__"}
    setup = run_cell(ex["setup"], ns, timeout)
    if not setup["ok"]:
        return {"ok": False, "error": f"the data set-up fails: {setup['error']}"}
    import matplotlib.pyplot as plt

    ref = run_cell(ex["solution"], ns, timeout)
    if not ref["ok"]:
        return {"ok": False, "error": f"the reference solution fails: {ref['error']}"}
    if ex["answer"] not in ns:
        return {"ok": False, "error": f"the reference solution does not define {ex['answer']!r}"}
    value = ns[ex["answer"]]
    try:
        if ex["kind"] == "query":
            value = query_rows(ns["conn"], value)
        form = describe_answer(value)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"the reference answer cannot be read: {e}"}
    finally:
        plt.close("all")
    if ex["kind"] == "auto":  # a model's draft: the reference's answer decides the checks
        kinds = {"DataFrame": "dataframe", "Series": "series", "rows": "query",
                 "Figure": "figure", "number": "scalar", "bool": "scalar", "str": "scalar"}
        if form["type"] not in kinds:
            return {"ok": False, "error": f"the answer is a {form['type']}, which no check "
                                          "covers (use a DataFrame, Series, number or figure)"}
        return {"ok": True, "form": form, "kind": kinds[form["type"]]}
    want = {"dataframe": "DataFrame", "series": "Series", "query": "rows", "figure": "Figure",
            "scalar": ("number", "bool", "str")}[ex["kind"]]
    if form["type"] not in (want if isinstance(want, tuple) else (want,)):
        return {"ok": False, "error": f"the reference answer is a {form['type']}, "
                                      f"but the exercise kind is {ex['kind']}"}
    return {"ok": True, "form": form}


def build(exercises: list[dict], titles: list[str], timeout: float) -> dict:
    """Probe each reference, build its cells, then run every variant."""
    from qcoder_ds.lessons.cells import answer_cell, build_cells, stub_of
    from qcoder_ds.lessons.exercise import Exercise

    built, errors = [], {}
    for d, title in zip(exercises, titles, strict=True):
        p = probe(d, timeout)
        if not p["ok"]:
            errors[d["number"]] = p["error"]
            continue
        ex = Exercise.from_dict(d)
        ex.kind = p.get("kind", ex.kind)
        cells = build_cells(ex, p["form"], title)
        src = {c["metadata"]["qcoder"]["role"]: c["source"] for c in cells}
        built.append({"number": ex.number, "notebook_cells": cells, "cells": {
            "setup": src["setup"], "answer": src["answer"], "stub": stub_of(src["answer"]),
            "visible": src["visible"], "hidden": src["hidden"],
            "wrong": [answer_cell(w) for w in ex.wrong]}})
    return {"errors": errors, "built": built,
            "runs": run_all(built, timeout) if built else None}


def main(argv: list[str]) -> int:
    job_path, out_path = argv[1], argv[2]
    import matplotlib

    matplotlib.use("Agg")
    sys.path.insert(0, ".")
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    if job["mode"] == "build":
        result = build(job["exercises"], job["titles"], job["timeout"])
    else:
        result = {"runs": run_all(job["exercises"], job["timeout"], wrong=False)}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
