"""Line-by-line explanations of Python, grounded in what the code did.

Each top-level statement gets two parts: *what it does*, from the AST and the called
library's own docstring summary (the pandas method really called, found while running);
and *what it did*, from an execution trace in a separate process: shapes, columns, dtypes
and a few values before and after ("filters 240 rows to 61"). Every number in the text
comes from the trace, so a rephrasing can be checked against it (:mod:`rephrase`).
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

from qcoder_ds.lessons.errors import ExplainError
from qcoder_ds.lessons.explain_sql import explain_sql
from qcoder_ds.lessons.explanation import Explanation, Step
from qcoder_ds.lessons.render import render

TIMEOUT_S = 30.0
_AGGREGATING = {"groupby", "pivot_table", "pivot", "resample", "agg", "aggregate", "sum", "mean",
                "count", "size", "value_counts", "describe", "crosstab", "nunique"}
_JOINING = {"merge", "join", "concat"}


# ---------------------------------------------------------------- what (from the AST)


def _u(node: ast.AST, limit: int = 90) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mask(node: ast.AST) -> ast.AST | None:
    """The boolean condition of ``df[cond]`` / ``df.loc[cond, cols]``, if there is one."""
    if isinstance(node, ast.Subscript):
        sl = node.slice
        if isinstance(sl, ast.Tuple) and sl.elts:
            sl = sl.elts[0]
        if isinstance(sl, (ast.Compare, ast.BoolOp)) or (
                isinstance(sl, ast.BinOp) and isinstance(sl.op, (ast.BitAnd, ast.BitOr))) or (
                isinstance(sl, ast.UnaryOp) and isinstance(sl.op, ast.Invert)):
            return sl
    return None


def what_it_does(stmt: ast.stmt) -> str:
    """A plain sentence for a statement, from its syntax alone."""
    if isinstance(stmt, ast.Import):
        return "Imports " + ", ".join(
            f"`{a.name}`" + (f" as `{a.asname}`" if a.asname else "") for a in stmt.names) + "."
    if isinstance(stmt, ast.ImportFrom):
        return f"Imports {', '.join(f'`{a.name}`' for a in stmt.names)} from `{stmt.module}`."
    if isinstance(stmt, ast.FunctionDef):
        return f"Defines the function `{stmt.name}({_u(stmt.args)})`; it runs when called."
    if isinstance(stmt, ast.For):
        return f"Repeats the indented block for each `{_u(stmt.target)}` in `{_u(stmt.iter)}`."
    if isinstance(stmt, ast.If):
        return f"Runs the indented block only if `{_u(stmt.test)}` is true."
    if isinstance(stmt, ast.With):
        return f"Runs the block with `{_u(stmt.items[0].context_expr)}` open."
    if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = " and ".join(f"`{_u(t)}`" for t in targets)
        value = stmt.value
        if value is None:
            return f"Declares {names}."
        mask = None
        for node in ast.walk(value):
            mask = _mask(node)
            if mask is not None:
                break
        verb = "Updates" if isinstance(stmt, ast.AugAssign) else "Computes"
        if mask is not None:
            return f"Keeps the rows where `{_u(mask)}` and stores them in {names}."
        if isinstance(value, ast.Call) or any(isinstance(n, ast.Call) for n in ast.walk(value)):
            return f"{verb} `{_u(value)}` and stores the result in {names}."
        return f"Stores `{_u(value)}` in {names}."
    if isinstance(stmt, ast.Expr):
        if isinstance(stmt.value, ast.Call):
            return f"Calls `{_u(stmt.value.func)}`."
        return f"Evaluates `{_u(stmt.value)}` (a notebook shows its value)."
    if isinstance(stmt, ast.Delete):
        return f"Deletes {', '.join(f'`{_u(t)}`' for t in stmt.targets)}."
    return f"Runs a `{type(stmt).__name__}` statement."


# ---------------------------------------------------------------- what it did (the trace)


def _shape(d: dict) -> str:
    if d["type"] == "DataFrame":
        return f"{d['rows']} rows × {d['cols']} columns"
    if d["type"] == "Series":
        return f"{d['rows']} values"
    if d["type"] == "ndarray":
        return "shape " + "×".join(str(s) for s in d["shape"])
    return ""


def _values(d: dict) -> str:
    if d["type"] == "Series" and d["head"]:
        return "first values: " + ", ".join(f"{k} → {v}" for k, v in d["head"])
    if d["type"] == "DataFrame" and d["head"]:
        row = d["head"][0]
        shown = list(row.items())[:4]
        return "first row: " + ", ".join(f"{k}={v}" for k, v in shown)
    return ""


def _source_frame(step: dict, name: str) -> tuple[str, dict] | None:
    """The table the statement read from (the first data-like name it loads)."""
    for k in step["loads"]:
        d = step["before"].get(k)
        if d and d["type"] in ("DataFrame", "Series") and (k != name or name in step["loads"]):
            return k, d
    return None


def what_it_did(step: dict) -> tuple[str, dict]:
    """Sentences and the facts they state, from one traced statement."""
    sentences: list[str] = []
    facts: dict[str, Any] = {}
    called = {c["name"] for c in step["calls"]}
    if step["error"]:
        return f"Raised {step['error']}", {"error": step["error"]}
    for alias, mod in step.get("modules", {}).items():
        sentences.append(f"`{alias}` now refers to the module `{mod}`.")
    for name in step["stores"]:
        d = step["after"].get(name)
        if d is None:
            continue
        old = step["before"].get(name)
        if d["type"] in ("DataFrame", "Series"):
            facts[name] = {k: d[k] for k in ("type", "rows") if k in d}
            if d["type"] == "DataFrame":
                facts[name].update(cols=d["cols"], columns=d["columns"])
            src = _source_frame(step, name)
            text = f"`{name}` is a {d['type']} of {_shape(d)}"
            if src is not None:
                sname, s = src
                n0, n1 = s["rows"], d["rows"]
                facts[name]["from"] = {"name": sname, "rows": n0}
                if called & _JOINING:
                    text = f"joined `{sname}` ({n0} rows) into {n1} rows: " + text
                elif called & _AGGREGATING and n1 < n0:
                    text = f"aggregated {n0} rows of `{sname}` into {n1}: " + text
                elif n1 < n0:
                    text = f"filtered {n0} rows of `{sname}` to {n1}: " + text
                elif n1 == n0 and d["type"] == s["type"] == "DataFrame":
                    added = [c for c in d["columns"] if c not in s["columns"]]
                    dropped = [c for c in s["columns"] if c not in d["columns"]]
                    if added:
                        text += f"; added column(s) {', '.join(f'`{c}`' for c in added)}"
                        facts[name]["added"] = added
                    if dropped:
                        text += f"; left out column(s) {', '.join(f'`{c}`' for c in dropped)}"
                        facts[name]["dropped"] = dropped
            if d["type"] == "DataFrame":
                text += f" (columns: {', '.join(d['columns'][:8])}"
                text += ", ..." if len(d["columns"]) > 8 else ""
                text += ")"
            if old and old.get("type") == "DataFrame" and d["type"] == "DataFrame":
                changed = {c: (old["dtypes"][c], t) for c, t in d["dtypes"].items()
                           if c in old["dtypes"] and old["dtypes"][c] != t}
                for c, (a, b) in changed.items():
                    text += f"; `{c}` changed type from {a} to {b}"
                if changed:
                    facts[name]["dtype_changes"] = changed
            vals = _values(d)
            sentences.append(text[0].upper() + text[1:] + (f"; {vals}." if vals else "."))
        elif d["type"] == "ndarray":
            facts[name] = {"shape": d["shape"]}
            sentences.append(f"`{name}` is an array of {_shape(d)} ({d['dtype']}).")
        elif "value" in d and d["value"] is not None and d["type"] not in ("list", "dict",
                                                                          "tuple", "set"):
            facts[name] = {"value": d["value"]}
            sentences.append(f"`{name}` = {d['value']!r}.")
        elif d["type"] in ("list", "tuple", "dict", "set"):
            facts[name] = {"len": d["len"]}
            sentences.append(f"`{name}` is a {d['type']} of {d['len']} item(s).")
        elif d["type"] == "Figure":
            sentences.append(f"`{name}` is a new figure.")
    for name in step["loads"]:  # data changed in place (e.g. inplace=True, df[c] = ...)
        b, a = step["before"].get(name), step["after"].get(name)
        if b and a and name not in step["stores"] and b["id"] == a["id"] and b["fp"] != a["fp"]:
            text = f"Changed `{name}` in place: now {_shape(a)}"
            if a["type"] == "DataFrame":
                added = [c for c in a["columns"] if c not in b["columns"]]
                if added:
                    text += f"; added column(s) {', '.join(f'`{c}`' for c in added)}"
                facts[name] = {"type": a["type"], "rows": a["rows"], "cols": a["cols"],
                               "columns": a["columns"], "in_place": True}
            sentences.append(text + ".")
    for num, axes in step.get("figures", {}).items():
        for i, ax in enumerate(axes, start=1):
            marks = [f"{ax[k]} {k if ax[k] != 1 else k[:-1]}" for k in ("lines", "bars", "points")
                     if ax[k]]
            labels = [f"{k} {ax[k]!r}" for k in ("title", "xlabel", "ylabel") if ax[k]]
            where = f"plot {i} of figure {num}" if len(axes) > 1 else f"figure {num}"
            desc = ", ".join(marks) if marks else "no marks yet"
            sentences.append(f"On {where}: {desc}" + (f"; {', '.join(labels)}" if labels
                                                       else "") + ".")
            facts.setdefault("figures", {})[f"{num}.{i}"] = ax
    if step["stdout"]:
        out = step["stdout"].strip().splitlines()
        sentences.append("Printed: " + " / ".join(out[:3]) + (" ..." if len(out) > 3 else ""))
        facts["stdout"] = step["stdout"]
    return " ".join(sentences) if sentences else "Changed no data.", facts


def _calls_markdown(calls: list[dict]) -> list[dict]:
    return [c for c in calls if c["doc"] and not c["qualname"].startswith("builtins.")
            or c["qualname"].split(".")[-1] in ("print", "len", "sorted", "sum", "round")]


# ---------------------------------------------------------------- running


def _pack_namespace(namespace: dict | None) -> tuple[dict, dict, list[str]]:
    """Values that can travel to the worker (pickled copies), modules by name, and skips."""
    values, modules, skipped = {}, {}, []
    for k, v in (namespace or {}).items():
        if k.startswith("_") or callable(v) and not isinstance(v, types.ModuleType):
            continue
        if isinstance(v, types.ModuleType):
            modules[k] = v.__name__
            continue
        try:
            pickle.dumps(v)
        except Exception:  # noqa: BLE001 - connections, open files, widgets
            skipped.append(k)
            continue
        values[k] = v
    return values, modules, skipped


def run_trace(code: str, namespace: dict | None = None, cwd: Path | None = None,
              timeout: float = TIMEOUT_S) -> list[dict]:
    """Trace ``code`` in a separate process (on copies of ``namespace``'s data)."""
    values, modules, _ = _pack_namespace(namespace)
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
    env.update(MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    with tempfile.TemporaryDirectory(prefix="qcoder-explain-") as tmp:
        job, out = Path(tmp) / "job.pkl", Path(tmp) / "out.json"
        with open(job, "wb") as f:
            pickle.dump({"code": code, "values": values, "modules": modules,
                         "timeout": timeout}, f)
        n = max(1, len(ast.parse(code).body))
        try:
            proc = subprocess.run([sys.executable, "-m", "qcoder_ds.lessons.trace_worker",
                                   str(job), str(out)], cwd=cwd or os.getcwd(), env=env,
                                  capture_output=True, text=True, timeout=30 + timeout * n)
        except subprocess.TimeoutExpired as e:
            raise ExplainError(f"running the code took longer than {30 + timeout * n:.0f} s") from e
        if proc.returncode != 0 or not out.exists():
            tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
            raise ExplainError(f"the code could not be traced: {tail}")
        return json.loads(out.read_text(encoding="utf-8"))["steps"]


def parse_python(code: str) -> ast.Module:
    """``ast.parse`` with an error that points at the line."""
    try:
        return ast.parse(code)
    except SyntaxError as e:
        raise ExplainError(f"the code does not parse: {e.msg} (line {e.lineno}, column "
                           f"{e.offset}): {(e.text or '').strip()}") from e


def explain_python(code: str, namespace: dict | None = None, cwd: Path | None = None,
                   run: bool = True, timeout: float = TIMEOUT_S) -> Explanation:
    """Explain ``code`` statement by statement; ``run=False`` explains from the AST only."""
    tree = parse_python(code)
    traced = run_trace(code, namespace, cwd, timeout) if run else []
    steps = []
    for i, stmt in enumerate(tree.body):
        seg = ast.get_source_segment(code, stmt) or _u(stmt)
        t = traced[i] if i < len(traced) else None
        if t is None:
            did, facts, calls, err = ("Not run (an earlier statement failed)." if run and traced
                                      else ""), {}, [], ""
        else:
            did, facts = what_it_did(t)
            calls, err = _calls_markdown(t["calls"]), t["error"]
        steps.append(Step(line=stmt.lineno, end_line=stmt.end_lineno or stmt.lineno, code=seg,
                          what=what_it_does(stmt), did=did, calls=calls, facts=facts,
                          error=err))
    return Explanation(language="python", source=code, steps=steps)


def explanation_for(code: str, namespace: dict | None = None, language: str | None = None,
                    connection: Any = None, dialect: str = "sqlite", cwd: Path | None = None
                    ) -> Explanation:
    """Python or SQL, whichever ``code`` is, explained on what ``namespace`` holds.

    ``language`` defaults to SQL when the text parses as SQL but not as Python. SQL runs on
    ``connection`` or on the first sqlite3 / DuckDB connection found in ``namespace``.
    Python runs on copies of ``namespace``'s data, never on the user's objects.
    """
    if language is None:
        try:
            ast.parse(code)
            language = "python"
        except SyntaxError:
            language = "sql"
    if language != "sql":
        return explain_python(code, namespace=namespace, cwd=cwd)
    if connection is None:
        connection = next((v for v in (namespace or {}).values()
                           if type(v).__name__ in ("Connection", "DuckDBPyConnection")), None)
    if connection is None:
        raise ExplainError("no database connection to run the SQL on")
    return explain_sql(code, connection, dialect=dialect)


def explain(code: str, namespace: dict | None = None, fmt: str = "markdown",
            **where: Any) -> str:
    """The text ``%qcoder explain`` (and the chat) shows: :func:`explanation_for`, rendered
    as markdown, html or ipynb. ``where`` takes its language, connection, dialect and cwd."""
    return render(explanation_for(code, namespace, **where), fmt)
