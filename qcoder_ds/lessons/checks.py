"""Answer checks used inside generated notebooks' test cells.

This file is copied verbatim into every generated assignment as ``qcoder_checks.py``, so
the test cells run in a plain Jupyter kernel (the student's, or nbgrader's when grading)
without qcoder-ds installed. It may import only the standard library, numpy, pandas and
matplotlib. Every check raises AssertionError with a message a learner can act on, and
returns None, so a test cell never ends in a value that nbgrader would read as a score.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "check_form",
    "check_frame",
    "check_series",
    "check_scalar",
    "check_query",
    "check_figure",
    "describe_answer",
    "figure_summary",
    "run_reference",
    "query_rows",
]


# ---------------------------------------------------------------- references


_REFERENCES: dict = {}


def run_reference(setup: str, solution: str, answer: str) -> Any:
    """Run the reference solution on freshly loaded data, in its own namespace.

    Hidden tests compare against this, so a learner's changes to the shared DataFrames
    (e.g. an in-place ``fillna``) cannot change the expected answer. The result is kept
    for the life of the kernel (the data files do not change), and handed out as a copy.
    """
    import copy

    key = (setup, solution, answer)
    if key not in _REFERENCES:
        _REFERENCES[key] = _run_reference(setup, solution, answer)
    return copy.deepcopy(_REFERENCES[key])


def _run_reference(setup: str, solution: str, answer: str) -> Any:
    import matplotlib.pyplot as plt

    ns: dict[str, Any] = {"__name__": "__reference__"}
    exec(compile(setup, "<reference setup>", "exec"), ns)  # noqa: S102 - teacher's code
    exec(compile(solution, "<reference solution>", "exec"), ns)  # noqa: S102
    if answer not in ns:
        raise RuntimeError(f"the reference solution did not define {answer!r}")
    value = ns[answer]
    if answer == "query" and "conn" in ns:
        value = query_rows(ns["conn"], value)
    if isinstance(value, plt.Figure):
        summary = figure_summary(value)
        plt.close(value)
        return summary
    return value


# ---------------------------------------------------------------- form (visible tests)


def describe_answer(value: Any) -> dict:
    """The facts a visible test may reveal: type and shape, never values."""
    import matplotlib.pyplot as plt

    if isinstance(value, pd.DataFrame):
        return {"type": "DataFrame", "rows": int(len(value)),
                "columns": [str(c) for c in value.columns]}
    if isinstance(value, pd.Series):
        return {"type": "Series", "rows": int(len(value))}
    if isinstance(value, plt.Figure):
        s = figure_summary(value)
        return {"type": "Figure", "axes": [
            {k: ax[k] for k in ("lines", "bars", "points")}
            for ax in s["axes"]]}
    if isinstance(value, dict) and value.get("type") == "rows":
        return {"type": "rows", "rows": len(value["rows"]), "columns": len(value["columns"])}
    if isinstance(value, (bool, np.bool_)):
        return {"type": "bool"}
    if isinstance(value, (int, float, np.integer, np.floating)):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "str"}
    return {"type": type(value).__name__}


def check_form(value: Any, form: dict, name: str = "result") -> None:
    """Visible test: the answer has the right kind and shape (not yet the right values)."""
    import matplotlib.pyplot as plt

    kind = form["type"]
    if kind == "DataFrame":
        assert isinstance(value, pd.DataFrame), f"{name} should be a DataFrame, not {_t(value)}"
        assert len(value) == form["rows"], (
            f"{name} should have {form['rows']} rows; it has {len(value)}")
        want, got = set(form["columns"]), {str(c) for c in value.columns}
        assert got == want, f"{name} should have the columns {sorted(want)}; it has {sorted(got)}"
    elif kind == "Series":
        assert isinstance(value, pd.Series), f"{name} should be a Series, not {_t(value)}"
        assert len(value) == form["rows"], (
            f"{name} should have {form['rows']} values; it has {len(value)}")
    elif kind == "Figure":
        assert isinstance(value, plt.Figure), (
            f"{name} should be a matplotlib Figure, not {_t(value)}")
        axes = _data_axes(value)
        assert len(axes) == len(form["axes"]), (
            f"{name} should have {len(form['axes'])} plot(s); it has {len(axes)}")
        got = figure_summary(value)["axes"]
        for i, (g, e) in enumerate(zip(got, form["axes"], strict=False), start=1):
            where = f"plot {i}" if len(got) > 1 else "the plot"
            for kind, word in (("lines", "line(s)"), ("bars", "bar(s)"), ("points", "point(s)")):
                assert g[kind] == e[kind], f"{where} should have {e[kind]} {word}; it has {g[kind]}"
    elif kind == "rows":
        rows = value
        assert isinstance(rows, dict) and rows.get("type") == "rows", "query should be SQL text"
        assert len(rows["columns"]) == form["columns"], (
            f"the query should return {form['columns']} column(s); "
            f"it returns {len(rows['columns'])}")
        assert len(rows["rows"]) == form["rows"], (
            f"the query should return {form['rows']} row(s); it returns {len(rows['rows'])}")
    elif kind == "number":
        assert isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_)), f"{name} should be a number, not {_t(value)}"
    elif kind == "bool":
        assert isinstance(value, (bool, np.bool_)), f"{name} should be True or False"
    elif kind == "str":
        assert isinstance(value, str), f"{name} should be a string, not {_t(value)}"


def _t(value: Any) -> str:
    return type(value).__name__


# ---------------------------------------------------------------- values (hidden tests)


def _canonical(df: pd.DataFrame, keep_index: bool) -> pd.DataFrame:
    df = df.copy()
    df.columns = [str(c) for c in df.columns]
    if keep_index:
        names = [n if n is not None else f"level_{i}" for i, n in enumerate(df.index.names)]
        df.index = df.index.set_names(names)
        clash = [n for n in names if n in df.columns]
        if clash:
            df = df.rename(columns={c: f"{c} (column)" for c in clash})
        df = df.reset_index()
    else:
        df = df.reset_index(drop=True)
    return df[sorted(df.columns)]


def _sorted_rows(df: pd.DataFrame) -> pd.DataFrame:
    if len(df) == 0 or len(df.columns) == 0:
        return df.reset_index(drop=True)
    key = df.copy()
    for c in key.columns:  # sort mixed/NaN columns by a stable text form
        if key[c].dtype == object or str(key[c].dtype) == "category":
            key[c] = key[c].astype(str)
    order = key.sort_values(list(key.columns), kind="mergesort", na_position="last").index
    return df.loc[order].reset_index(drop=True)


def check_frame(actual: Any, expected: pd.DataFrame, ordered: bool = False,
                check_index: bool = True, rtol: float = 1e-6, name: str = "result") -> None:
    """Hidden test: same rows and values as the reference; row order only if ``ordered``.

    Columns are matched by name (their order is not graded); dtypes are not graded
    (an int column holding floats' values is right). With ``check_index`` the index is
    compared as if it were columns, so a groupby key may sit in the index or not only
    when the template says so.
    """
    assert isinstance(actual, pd.DataFrame), f"{name} should be a DataFrame, not {_t(actual)}"
    a, e = _canonical(actual, check_index), _canonical(expected, check_index)
    assert set(a.columns) == set(e.columns), (
        f"{name} should have the columns {sorted(e.columns)}; it has {sorted(a.columns)}")
    assert len(a) == len(e), f"{name} should have {len(e)} rows; it has {len(a)}"
    if not ordered:
        a, e = _sorted_rows(a), _sorted_rows(e)
    try:
        pd.testing.assert_frame_equal(a, e, check_dtype=False, check_exact=False, rtol=rtol,
                                      check_categorical=False, check_index_type=False,
                                      check_column_type=False)
    except AssertionError as err:
        raise AssertionError(f"{name} has the right shape but not the right values: "
                             f"{str(err).splitlines()[0]}") from None


def check_series(actual: Any, expected: pd.Series, ordered: bool = False,
                 check_index: bool = True, rtol: float = 1e-6, name: str = "result") -> None:
    """Hidden test for a Series: values (and index, e.g. group keys) as the reference's."""
    assert isinstance(actual, pd.Series), f"{name} should be a Series, not {_t(actual)}"
    a = actual.rename("value").to_frame()
    e = expected.rename("value").to_frame()
    if a.index.nlevels == e.index.nlevels:  # index names are not graded, its values are
        a.index.names = e.index.names
    check_frame(a, e, ordered=ordered, check_index=check_index, rtol=rtol, name=name)


def check_scalar(actual: Any, expected: Any, rtol: float = 1e-6, name: str = "result") -> None:
    """Hidden test for one number, string or bool."""
    if isinstance(expected, (bool, np.bool_)):
        assert bool(actual) == bool(expected) and isinstance(actual, (bool, np.bool_)), (
            f"{name} is not right")
        return
    if isinstance(expected, (int, float, np.integer, np.floating)):
        assert isinstance(actual, (int, float, np.integer, np.floating)), (
            f"{name} should be a number, not {_t(actual)}")
        assert math.isclose(float(actual), float(expected), rel_tol=rtol, abs_tol=1e-9), (
            f"{name} is not right")
        return
    assert actual == expected, f"{name} is not right"


def query_rows(conn: sqlite3.Connection, query: Any) -> dict:
    """Run a learner's SQL and return its columns and rows (rows as tuples)."""
    assert isinstance(query, str), f"query should be SQL text in a string, not {_t(query)}"
    try:
        cur = conn.execute(query)
    except sqlite3.Error as e:
        raise AssertionError(f"the query does not run: {e}") from None
    columns = [d[0] for d in cur.description or []]
    return {"type": "rows", "columns": columns, "rows": [tuple(r) for r in cur.fetchall()]}


def _norm_cell(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 6) + 0.0
    return v


def check_query(conn: sqlite3.Connection, query: Any, expected: dict,
                ordered: bool = False) -> None:
    """Hidden test for SQL: the result as a multiset of rows (a list when ``ordered``).

    Column names are not graded (aliases vary); the number of columns and, per row, the
    values in column order are. Floats are compared to 6 decimals.
    """
    got = query_rows(conn, query)
    assert len(got["columns"]) == len(expected["columns"]), (
        f"the query should return {len(expected['columns'])} column(s); "
        f"it returns {len(got['columns'])}")
    a = [tuple(_norm_cell(v) for v in r) for r in got["rows"]]
    e = [tuple(_norm_cell(v) for v in r) for r in expected["rows"]]
    assert len(a) == len(e), f"the query should return {len(e)} row(s); it returns {len(a)}"
    if ordered:
        assert a == e, "the query returns the right rows but not in the order asked for" if (
            Counter(a) == Counter(e)) else "the query does not return the right rows"
    else:
        assert Counter(a) == Counter(e), "the query does not return the right rows"


# ---------------------------------------------------------------- figures


def _data_axes(fig: Any) -> list:
    # colorbars and empty helper axes are not "plots"
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _round(xs: Any) -> list:
    out = []
    for x in np.asarray(xs, dtype=float).ravel().tolist():
        out.append(None if math.isnan(x) else round(x, 6) + 0.0)
    return out


def figure_summary(fig: Any) -> dict:
    """What a figure shows, read from the matplotlib objects (not pixels).

    Per axes: title and axis labels, line data, bar heights and positions (bar charts and
    histograms), and scatter points.
    """
    from matplotlib.collections import PathCollection
    from matplotlib.patches import Rectangle

    axes = []
    for ax in _data_axes(fig):
        # get_xydata() is in axis units: dates and categories become numbers
        lines = [{"x": _round(ln.get_xydata()[:, 0]), "y": _round(ln.get_xydata()[:, 1])}
                 for ln in ax.get_lines()]
        bars = []
        for container in ax.containers:
            flat = getattr(container, "orientation", "vertical") == "horizontal"
            for p in container.patches if hasattr(container, "patches") else []:
                if isinstance(p, Rectangle):
                    bars.append(_bar(p, flat))
        if not bars:  # bars drawn without a container
            bars = [_bar(p, False) for p in ax.patches if isinstance(p, Rectangle)]
        points, sets = [], 0
        for coll in ax.collections:
            if isinstance(coll, PathCollection):
                sets += 1
                points.extend(tuple(_round(o)) for o in coll.get_offsets())
        legend = ax.get_legend()
        horizontal = any(getattr(c, "orientation", "") == "horizontal" for c in ax.containers)
        tick_labels = _category_labels(ax.yaxis if horizontal else ax.xaxis)
        axes.append({
            "title": ax.get_title().strip(),
            "xlabel": ax.get_xlabel().strip(),
            "ylabel": ax.get_ylabel().strip(),
            "x_is_time": _is_time_axis(ax.xaxis),
            "lines": len(lines),
            "line_data": sorted(lines, key=lambda d: repr(d["y"])),
            "scatter_sets": sets,
            "legend": sorted(t.get_text() for t in legend.get_texts()) if legend else [],
            "bars": len(bars),
            "bar_heights": sorted(b[1] for b in bars),
            "bar_data": sorted(bars),
            "points": len(points),
            "point_data": sorted(points, key=lambda p: tuple(-1e300 if v is None else v
                                                              for v in p)),
            "xticklabels": tick_labels,
        })
    return {"type": "figure", "suptitle": (fig._suptitle.get_text().strip()
                                           if getattr(fig, "_suptitle", None) else ""),
            "axes": axes}


def _category_labels(axis: Any) -> list:
    """Tick labels of a categorical axis (bar names); [] for a numeric one."""
    from matplotlib.category import StrCategoryFormatter
    from matplotlib.ticker import FixedFormatter

    if isinstance(axis.get_major_formatter(), (StrCategoryFormatter, FixedFormatter)):
        return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
    return []


def _is_time_axis(axis: Any) -> bool:
    """Dates are numbered differently by matplotlib and by pandas' plotting; compare y only."""
    fmt = type(axis.get_major_formatter())
    return "dates" in fmt.__module__ or "pandas" in fmt.__module__


def _bar(p, horizontal: bool) -> tuple:
    """(position, value, thickness) of one bar; a horizontal bar's value is its width."""
    if horizontal:
        return (_round([p.get_y() + p.get_height() / 2])[0], _round([p.get_width()])[0],
                _round([p.get_height()])[0])
    return (_round([p.get_x() + p.get_width() / 2])[0], _round([p.get_height()])[0],
            _round([p.get_width()])[0])


def _same_numbers(a: list, b: list, rtol: float = 1e-6) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=False):
        if isinstance(x, (list, tuple)):
            if not _same_numbers(list(x), list(y), rtol):
                return False
        elif x is None or y is None:
            if x is not y:
                return False
        elif not math.isclose(x, y, rel_tol=rtol, abs_tol=1e-9):
            return False
    return True


def check_figure(fig: Any, expected: dict, labels: bool = True, bar_positions: bool = False,
                 name: str = "fig") -> None:
    """Hidden test for a chart: same kind and number of marks, same data, same labels.

    Bars are compared by their heights (as a multiset unless ``bar_positions``), lines by
    their x/y data, scatter points as a set of (x, y); titles and axis labels ignoring
    case and surrounding spaces.
    """
    import matplotlib.pyplot as plt

    assert isinstance(fig, plt.Figure), f"{name} should be a matplotlib Figure, not {_t(fig)}"
    got = figure_summary(fig)
    ga, ea = got["axes"], expected["axes"]
    assert len(ga) == len(ea), f"{name} should have {len(ea)} plot(s); it has {len(ga)}"
    for i, (g, e) in enumerate(zip(ga, ea, strict=False), start=1):
        where = f"plot {i}" if len(ea) > 1 else "the plot"
        for kind, word in (("lines", "line(s)"), ("bars", "bar(s)"), ("points", "point(s)"),
                           ("scatter_sets", "scatter series")):
            assert g[kind] == e[kind], f"{where} should have {e[kind]} {word}; it has {g[kind]}"
        if e["legend"]:
            assert [t.lower() for t in g["legend"]] == [t.lower() for t in e["legend"]], (
                f"{where} should have a legend with {e['legend']}; it has {g['legend'] or 'none'}")
        for j, (gl, el) in enumerate(zip(g["line_data"], e["line_data"], strict=False), start=1):
            same_x = (e["x_is_time"] and g["x_is_time"] and len(gl["x"]) == len(el["x"])) or (
                _same_numbers(gl["x"], el["x"]))
            assert _same_numbers(gl["y"], el["y"]) and same_x, (
                f"line {j} of {where} does not plot the right data")
        if bar_positions:
            assert _same_numbers([list(b[:2]) for b in g["bar_data"]],
                                 [list(b[:2]) for b in e["bar_data"]]), (
                f"the bars of {where} are not at the right places or heights")
        assert _same_numbers(g["bar_heights"], e["bar_heights"]), (
            f"the bars of {where} do not have the right heights")
        assert _same_numbers([list(p) for p in g["point_data"]],
                             [list(p) for p in e["point_data"]]), (
            f"the points of {where} are not the right data")
        if e["xticklabels"] and e["bars"]:
            assert sorted(g["xticklabels"]) == sorted(e["xticklabels"]), (
                f"the bars of {where} should be labelled {sorted(e['xticklabels'])}")
        if labels:
            for key, word in (("title", "title"), ("xlabel", "x-axis label"),
                              ("ylabel", "y-axis label")):
                if e[key]:
                    assert g[key].lower() == e[key].lower(), (
                        f"the {word} of {where} should be {e[key]!r}; it is {g[key]!r}")
    if expected.get("suptitle"):
        assert got["suptitle"].lower() == expected["suptitle"].lower(), (
            f"the figure title should be {expected['suptitle']!r}; it is {got['suptitle']!r}")
