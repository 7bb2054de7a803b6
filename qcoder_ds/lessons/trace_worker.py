"""Runs code statement by statement and records what each statement did (a separate process).

Started by :mod:`qcoder_ds.lessons.explain` as ``python -m qcoder_ds.lessons.trace_worker
IN OUT``. For every top-level statement it records: the functions the statement itself
called (caught with ``sys.setprofile``, so ``df.groupby`` resolves to the pandas method
really called) with the first paragraph of their own docstrings; and a before/after
snapshot of the data it touched (shape, columns, dtypes, a few values) — like Python Tutor,
for DataFrames. Results go to OUT as JSON; the code may print to stdout.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import json
import pickle
import signal
import sys
import types
from typing import Any

FILENAME = "<explain>"
HEAD = 3


class StepTimeout(BaseException):
    """A statement ran past its limit."""


def _alarm(_s, _f):
    raise StepTimeout()


def doc_summary(obj: Any) -> str:
    """The first paragraph of an object's own docstring, on one line."""
    try:
        doc = inspect.getdoc(obj) or ""
    except Exception:  # noqa: BLE001 - odd objects have odd __doc__
        return ""
    paras = [" ".join(p.split()) for p in doc.strip().split("\n\n") if p.strip()]
    name = getattr(obj, "__name__", "")
    if len(paras) > 1 and name and paras[0].startswith(name + "(") and paras[0].endswith(")"):
        paras = paras[1:]  # C functions start with their signature
    return paras[0][:300] if paras else ""


def _resolve(frame: types.FrameType) -> tuple[str, Any]:
    """The function object (and a readable dotted name) behind a Python call event."""
    code = frame.f_code
    module = frame.f_globals.get("__name__", "")
    qual = getattr(code, "co_qualname", code.co_name)
    if "<locals>" not in qual:
        obj: Any = sys.modules.get(module)
        for part in qual.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return f"{module}.{qual}", obj
    # a decorator's wrapper: the wrapped function sits in its closure
    for value in frame.f_locals.values():
        if callable(value) and getattr(value, "__name__", None) not in (None, "wrapper"):
            if getattr(value, "__doc__", None):
                return f"{getattr(value, '__module__', '')}.{value.__qualname__}", value
    return f"{module}.{qual}", None


def _public_name(dotted: str) -> str:
    """``pandas.core.frame.DataFrame.groupby`` -> ``pandas.DataFrame.groupby``."""
    parts = dotted.split(".")
    if parts[0] in ("pandas", "numpy", "matplotlib") and len(parts) > 2:
        top = parts[0]
        rest = [p for p in parts[1:] if not p.islower() or p == parts[-1]]
        if top == "matplotlib" and "pyplot" in parts:
            return "matplotlib.pyplot." + parts[-1]
        return ".".join([top] + rest)
    return dotted


def describe(value: Any) -> dict | None:
    """A snapshot of a data-like value; None for things we do not trace (modules, classes)."""
    import numpy as np
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        try:
            fp = int(pd.util.hash_pandas_object(value, index=True).sum())
        except Exception:  # noqa: BLE001 - unhashable cells
            fp = hash(value.to_string(max_rows=50))
        return {"type": "DataFrame", "rows": int(value.shape[0]), "cols": int(value.shape[1]),
                "columns": [str(c) for c in value.columns],
                "dtypes": {str(c): str(t) for c, t in value.dtypes.items()},
                "index": [str(n) for n in value.index.names if n is not None],
                "head": _head(value), "fp": fp, "id": id(value)}
    if isinstance(value, pd.Series):
        try:
            fp = int(pd.util.hash_pandas_object(value, index=True).sum())
        except Exception:  # noqa: BLE001
            fp = hash(value.to_string(max_rows=50))
        return {"type": "Series", "rows": int(len(value)), "name": str(value.name),
                "dtype": str(value.dtype),
                "index": [str(n) for n in value.index.names if n is not None],
                "head": [[_plain(k), _plain(v)] for k, v in value.head(HEAD).items()],
                "fp": fp, "id": id(value)}
    if isinstance(value, np.ndarray):
        return {"type": "ndarray", "shape": list(value.shape), "dtype": str(value.dtype),
                "head": [_plain(v) for v in value.ravel()[:HEAD]], "id": id(value),
                "fp": hash(value.tobytes()[:100000])}
    if isinstance(value, (bool, int, float, str, np.generic)) and not isinstance(value, type):
        v = _plain(value)
        return {"type": type(v).__name__, "value": v, "id": id(value), "fp": hash(repr(v))}
    if isinstance(value, (list, tuple, dict, set)):
        return {"type": type(value).__name__, "len": len(value),
                "value": _plain(value) if len(value) <= 10 else None, "id": id(value),
                "fp": hash(repr(value)[:10000])}
    try:
        import matplotlib.figure

        if isinstance(value, matplotlib.figure.Figure):
            return {"type": "Figure", "id": id(value), "fp": 0}
    except ImportError:
        pass
    return None


def _plain(v: Any) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if v != v else round(v, 4)
    if isinstance(v, (pd.Timestamp, pd.Timedelta, pd.Period)):
        return str(v)
    if isinstance(v, (list, tuple, set)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    return str(v)


def _head(df: Any) -> list[dict]:
    return [{str(k): _plain(v) for k, v in row.items()}
            for row in df.head(HEAD).to_dict(orient="records")]


def _figures() -> dict:
    import matplotlib.pyplot as plt

    from qcoder_ds.lessons.checks import figure_summary

    out = {}
    for num in plt.get_fignums():
        s = figure_summary(plt.figure(num))
        out[num] = [{k: ax[k] for k in ("lines", "bars", "points", "title", "xlabel",
                                        "ylabel")} for ax in s["axes"]]
    return out


def _names(node: ast.AST) -> tuple[list[str], list[str]]:
    loads, stores = [], []
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (stores if isinstance(n.ctx, ast.Store) else loads).append(n.id)
    dedup = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
    return dedup(loads), dedup(stores)


def run_statement(stmt: ast.stmt, ns: dict, timeout: float) -> dict:
    """Execute one statement; record its calls, output, error and the data it touched."""
    loads, stores = _names(stmt)
    watched = list(dict.fromkeys(stores + loads))
    before = {k: describe(ns[k]) for k in watched if k in ns}
    before = {k: v for k, v in before.items() if v is not None}
    names_before = set(ns)
    figs_before = _figures() if "matplotlib.pyplot" in sys.modules else {}
    calls: list[dict] = []
    seen: set[str] = set()

    def prof(frame, event, arg):
        if event == "call":
            back = frame.f_back
            if back is not None and back.f_code.co_filename == FILENAME:
                dotted, obj = _resolve(frame)
                name = frame.f_code.co_name
                if name == "__init__" and "self" in frame.f_locals:  # a class being built
                    cls = type(frame.f_locals["self"])
                    name, obj = cls.__name__, cls
                    dotted = f"{cls.__module__}.{cls.__qualname__}"
                if name.startswith(("<", "_")) or dotted in seen:
                    return
                seen.add(dotted)
                calls.append({"name": name, "qualname": _public_name(dotted),
                              "doc": doc_summary(obj) if obj is not None else ""})
        elif event == "c_call" and frame.f_code.co_filename == FILENAME:
            name = getattr(arg, "__qualname__", getattr(arg, "__name__", "?"))
            mod = getattr(arg, "__module__", None) or "builtins"
            dotted = f"{mod}.{name}"
            if dotted not in seen and not str(name).startswith("_"):
                seen.add(dotted)
                calls.append({"name": getattr(arg, "__name__", name),
                              "qualname": _public_name(dotted), "doc": doc_summary(arg)})

    out = io.StringIO()
    error = ""
    code = compile(ast.Module([stmt], type_ignores=[]), FILENAME, "exec")
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            sys.setprofile(prof)
            try:
                exec(code, ns)  # noqa: S102 - explaining code means running it (sandboxed)
            finally:
                sys.setprofile(None)
    except StepTimeout:
        error = f"TimeoutError: the statement ran longer than {timeout:g} s"
    except BaseException as e:  # noqa: BLE001 - the learner's error is part of the story
        error = f"{type(e).__name__}: {e}"[:400]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    new_names = [k for k in ns if k not in names_before and not k.startswith("_")]
    after = {}
    for k in list(dict.fromkeys(stores + new_names + loads)):
        if k in ns:
            d = describe(ns[k])
            if d is not None:
                after[k] = d
    figs_after = _figures() if "matplotlib.pyplot" in sys.modules else {}
    figures = {str(k): v for k, v in figs_after.items() if figs_before.get(k) != v}
    modules = {k: ns[k].__name__ for k in new_names if isinstance(ns[k], types.ModuleType)}
    return {"line": stmt.lineno, "end_line": stmt.end_lineno, "calls": calls,
            "stdout": out.getvalue()[:1000], "error": error, "before": before,
            "after": after, "stores": stores, "loads": loads, "figures": figures,
            "modules": modules}


def trace(code: str, ns: dict, timeout: float) -> list[dict]:
    tree = ast.parse(code)
    steps = []
    for stmt in tree.body:
        step = run_statement(stmt, ns, timeout)
        steps.append(step)
        if step["error"]:
            break
    return steps


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    with open(argv[1], "rb") as f:
        job = pickle.load(f)
    ns: dict[str, Any] = {"__name__": "__main__"}
    for alias, modname in job.get("modules", {}).items():
        ns[alias] = importlib.import_module(modname)
    ns.update(job.get("values", {}))
    steps = trace(job["code"], ns, job["timeout"])
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump({"steps": steps}, f, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
