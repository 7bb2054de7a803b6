"""Checks that a cell answers the request, not only that it runs.

A cell can parse, run on the sample and still be wrong: it computes nothing, it never fills
the variable the request names, pandas warns that an assignment did nothing, it keeps one
region where the request asked for each, or its chart draws one value four times. Each such
kind of wrong answer is a rule here: one function ``rule(cell: Cell) -> Verdict | None``
(None: the rule does not apply to this request or cell). A verdict without issues is a pass
and says what it verified, for the cell's header ("one bar per region"). Static rules read
the code and the request; run rules also read what the check child reported.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from qcoder_ds.copilot.extract import parse_python
from qcoder_ds.copilot.sandbox import RunResult, sample_copy
from qcoder_ds.copilot.tasks import Task
from qcoder_ds.copilot.validate import Issue, Kind, check_assigns


@dataclass
class Cell:
    """What a rule looks at: the request, the code, the live data, and the run (if any)."""

    request: str
    code: str
    task: Task
    namespace: Mapping[str, Any] = field(default_factory=dict)
    run: RunResult | None = None
    result_name: str | None = None
    sample_rows: int = 2000

    @cached_property
    def tree(self) -> ast.Module | None:
        return parse_python(self.code)[0]

    @cached_property
    def groups(self) -> list[Grouping]:
        return groupings(self.request, self.namespace, self.code)


@dataclass
class Verdict:
    """A rule's finding: what a pass means (for the header) and what failed."""

    verified: str
    issues: list[Issue] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(i.severity == "error" for i in self.issues)


Rule = Callable[[Cell], "Verdict | None"]


# --------------------------------------------------------------------------- computes nothing


def _inert(stmt: ast.stmt) -> bool:
    """An import, ``pass``, or a bare constant (a docstring, ``...``): it computes nothing."""
    return isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass)) or (
        isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))


def computes_nothing(cell: Cell) -> Verdict | None:
    """A cell of imports, comments, ``pass`` and string literals runs without error and does
    nothing: what the model leaves when it stops early or only copies the description."""
    if cell.task is Task.SQL or cell.tree is None:
        return None
    if any(not _inert(s) for s in cell.tree.body):
        return Verdict("computes something")
    return Verdict("computes something", [Issue(
        Kind.COMPUTES_NOTHING, "the cell computes nothing: it has only imports, comments or "
        "string literals. Write the code that does what the request asks")])


# --------------------------------------------------------------------------- the named result

#: words after "put it in" / "store it as" that are not variable names
_NOT_NAMES = {"a", "an", "the", "it", "them", "this", "that", "memory", "disk", "file", "csv",
              "excel", "json", "variable", "new", "place", "order", "mind", "one", "each",
              "dataframe", "frame", "series", "list", "dict", "table", "column", "columns",
              "row", "rows", "chart", "plot", "figure", "percent", "percentage", "ascending",
              "descending", "sorted", "text", "string", "number", "numbers", "float", "int",
              "integer", "lowercase", "uppercase", "bar", "line", "pie", "histogram", "form",
              "format", "words", "terms", "total"}
_TICKED = re.compile(r"\b(as|into|in|to|called|named)\s+(?:a\s+|the\s+)?(?:new\s+)?"
                     r"(?:variable\s+|dataframe\s+|frame\s+|series\s+)?"
                     r"(?:called\s+|named\s+)?`([A-Za-z_]\w*)`", re.I)
_STORE = re.compile(r"\b(?:store|save|put|assign|keep|place|write)\b", re.I)
_BARE = re.compile(r"\b(?:store|save|put|assign|keep|place)\s+(?:(?:it|them|this|that|"
                   r"the\s+(?:result|results|answer|output|values?|counts?))\s+)?"
                   r"(?:in|into|to|as)\s+(?:a\s+|the\s+)?(?:new\s+)?"
                   r"(?:variable\s+(?:called\s+|named\s+)?)?([A-Za-z_]\w*)\b(?![.(])", re.I)
_CALL_IT = re.compile(r"\b(?:call|name)\s+(?:it|them|the\s+result)\s+`?([A-Za-z_]\w*)`?",
                      re.I)


def named_result(request: str, namespace: Mapping[str, Any] | None = None) -> str | None:
    """The variable the request says the answer goes in ("store it in `result`", "put it in
    x", "as `top5`", "call it summary"), or None. A live name after "in"/"to" without a
    store verb is what the request works on ("the rows in `sales`"), not where it goes."""
    live = set(namespace or ())
    for m in _TICKED.finditer(request):
        word, name = m.group(1).lower(), m.group(2)
        if name in live and word in ("in", "into", "to") and \
                not _STORE.search(request[:m.start()]):
            continue
        if name.lower() not in _NOT_NAMES:
            return name
    for pattern in (_BARE, _CALL_IT):
        for m in pattern.finditer(request):
            if m.group(1).lower() not in _NOT_NAMES:
                return m.group(1)
    return None


def assigns_result(cell: Cell) -> Verdict | None:
    """The request named the variable for the answer: the cell must put it there."""
    if not cell.result_name or cell.tree is None or cell.task is Task.SQL:
        return None
    return Verdict(f"puts the answer in `{cell.result_name}`",
                   check_assigns(cell.tree, cell.result_name))


# --------------------------------------------------------------------------- warnings on the run

#: warning classes (or any of their bases) that mean the cell does not do what it says:
#: an assignment that changes nothing, or a call that the next pandas changes or removes
_FAILING_WARNINGS = {"ChainedAssignmentError", "SettingWithCopyWarning", "FutureWarning",
                     "DeprecationWarning", "PendingDeprecationWarning", "PandasChangeWarning"}
#: numpy's RuntimeWarnings that mean the computation had nothing to work on
_EMPTY = re.compile(r"empty slice|degrees of freedom <= 0|empty sequence", re.I)


def warning_entry(message: Any) -> dict[str, Any]:
    """One warning as the check child reports it (``RunResult.warnings``): ``category``, the
    names of its classes up to ``Warning`` in ``bases``, the ``message``, and the cell's
    ``line`` (None when the warning points outside the cell)."""
    bases = [c.__name__ for c in message.category.__mro__
             if issubclass(c, Warning) and c is not Warning]
    return {"category": message.category.__name__, "bases": bases,
            "message": str(message.message)[:500],
            "line": message.lineno if message.filename == "<cell>" else None}


def _fails(entry: Mapping[str, Any]) -> bool:
    names = set(entry.get("bases") or ()) | {entry.get("category")}
    if names & _FAILING_WARNINGS:
        return True
    return "RuntimeWarning" in names and bool(_EMPTY.search(str(entry.get("message", ""))))


_WARNING_HINTS = {
    "chained": " (assign the result back: `df[col] = df[col].fillna(...)` or "
               "`df.loc[rows, col] = ...`, not a chained or inplace call on a column)",
    "empty": " (the computation had no rows or values to work on: check the filter)",
    "deprecated": " (use the current form of the call the message names)"}


def _hint_key(entry: Mapping[str, Any]) -> str:
    names = set(entry.get("bases") or ()) | {entry.get("category")}
    if names & {"ChainedAssignmentError", "SettingWithCopyWarning"}:
        return "chained"
    if "RuntimeWarning" in names:
        return "empty"
    return "deprecated"


def run_warnings(cell: Cell) -> Verdict | None:
    """pandas or numpy warned while the cell ran on the sample: a chained or ``inplace``
    assignment on a copy (pandas 3 ignores it, so the data is unchanged), a deprecated call
    or dtype change, a mean of nothing. Each is a failure the repair gets told about."""
    run = cell.run
    reported = getattr(run, "warnings", None)  # a list of warning_entry() dicts
    if run is None or not run.ok or reported is None:
        return None  # a check child that does not report warnings verifies nothing here
    bad = [w for w in reported if _fails(w)]
    issues = []
    for w in bad[:3]:
        text = str(w.get("message", "")).strip()
        first = (text.splitlines() or [""])[0][:300]
        issues.append(Issue(Kind.RUN_WARNING, f"running it on a sample warned "
                            f"{w.get('category')}: {first}. Write it so pandas and numpy do "
                            f"not warn{_WARNING_HINTS.get(_hint_key(w), '')}", w.get("line")))
    return Verdict("no pandas warnings", issues)


# --------------------------------------------------------------------------- per group

_TIME_UNITS = {"day": "D", "daily": "D", "week": "W", "weekly": "W", "month": "M",
               "monthly": "M", "quarter": "Q", "quarterly": "Q", "year": "Y", "yearly": "Y",
               "annual": "Y", "annually": "Y", "hour": "h", "hourly": "h"}
_TRIGGER = re.compile(r"\b(per|for each|for every|each|by|across)\s+(?:the\s+|each\s+)?"
                      r"([A-Za-z_][\w-]*)(?:\s+([A-Za-z_][\w-]*))?", re.I)
_ADJECTIVE = re.compile(r"\b(daily|weekly|monthly|quarterly|yearly|annual|hourly)\b", re.I)
#: "sorted by x" and "top 5 by x" rank rows; they do not group them
_RANKS = re.compile(r"\b(sort|sorted|order|ordered|rank|ranked|top|largest|smallest|highest|"
                    r"lowest|most|least|first|last|descending|ascending)\b[^.,;]*$", re.I)
_RANKING = re.compile(r"\b(top|\d+|largest|smallest|highest|lowest|most|least|first|last|"
                      r"best|worst|ranks?|ranking)\b", re.I)


@dataclass(frozen=True)
class Grouping:
    """A column the request groups by ("per region"), or a time unit of a date column."""

    frame: str
    column: str
    unit: str | None = None  # pandas period code for time groupings ("M" for "by month")

    @property
    def label(self) -> str:
        if self.unit:
            return next(w for w, u in _TIME_UNITS.items() if u == self.unit and
                        not w.endswith("ly") and w != "annual")
        return self.column


def _frames(namespace: Mapping[str, Any], code: str) -> dict[str, Any]:
    """The live DataFrames, those the code reads first."""
    import pandas as pd

    frames = {k: v for k, v in namespace.items()
              if not k.startswith("_") and isinstance(v, pd.DataFrame)}
    used = set(re.findall(r"[A-Za-z_]\w*", code))
    return dict(sorted(frames.items(), key=lambda kv: kv[0] not in used))


def _singular(word: str) -> list[str]:
    w = word.lower()
    out = [w]
    if w.endswith("ies"):
        out.append(w[:-3] + "y")
    if w.endswith("es"):
        out.append(w[:-2])
    if w.endswith("s"):
        out.append(w[:-1])
    return out


def _label_column(frame: Any, words: list[str]) -> str | None:
    """The column of ``frame`` that ``words`` name, if it holds labels (text, category or
    bool): "per unit" next to a numeric ``units`` column is a rate, not a grouping."""
    import pandas as pd

    names = {str(c).lower().replace(" ", "_"): c for c in frame.columns}
    for key in words:
        col = names.get(key)
        if col is None:
            continue
        s = frame[col]
        if isinstance(s, pd.Series) and (pd.api.types.is_object_dtype(s) or
                                         pd.api.types.is_string_dtype(s) or
                                         isinstance(s.dtype, pd.CategoricalDtype) or
                                         pd.api.types.is_bool_dtype(s)):
            return str(col)
    return None


def _date_column(frame: Any) -> str | None:
    import pandas as pd

    return next((str(c) for c in frame.columns
                 if pd.api.types.is_datetime64_any_dtype(frame[c])), None)


def groupings(request: str, namespace: Mapping[str, Any], code: str = "") -> list[Grouping]:
    """The groupings the request asks for ("per region", "for each origin", "by month",
    "monthly"), matched to columns of the live DataFrames."""
    frames = _frames(namespace, code)
    found: list[Grouping] = []

    def add(g: Grouping) -> None:
        if all((f.column, f.unit) != (g.column, g.unit) for f in found):
            found.append(g)

    for m in _TRIGGER.finditer(request):
        if m.group(1).lower() == "by" and _RANKS.search(request[:m.start()]):
            continue
        first, second = m.group(2), m.group(3)
        words = ([f"{a}_{second.lower()}" for a in _singular(first)] if second else []) + \
            _singular(first)
        if first.lower() in _TIME_UNITS:
            for name, frame in frames.items():
                date = _date_column(frame)
                if date:
                    add(Grouping(name, date, _TIME_UNITS[first.lower()]))
                    break
            continue
        for name, frame in frames.items():
            col = _label_column(frame, words)
            if col:
                add(Grouping(name, col))
                break
    for m in _ADJECTIVE.finditer(request):
        for name, frame in frames.items():
            date = _date_column(frame)
            if date:
                add(Grouping(name, date, _TIME_UNITS[m.group(1).lower()]))
                break
    return found


#: the recurring reading of a time unit, as a ``Series.dt`` attribute
_OF_YEAR = {"M": "month", "Q": "quarter", "D": "day_of_week", "h": "hour"}


def _group_counts(cell: Cell) -> tuple[set[int], int] | None:
    """How many groups the sample the check ran on holds (each reading of a time unit: per
    period, or per month of the year), and the sample's row count; None if not computable."""
    import pandas as pd

    groups = cell.groups
    if not groups or len({g.frame for g in groups}) != 1:
        return None
    frame = sample_copy(cell.namespace[groups[0].frame], cell.sample_rows)
    readings: list[list[Any]] = [[]]
    for g in groups:
        col = frame[g.column]
        if g.unit is None:
            keys = [col]
        else:
            dates = pd.to_datetime(col)
            keys = [dates.dt.to_period(g.unit)]
            of_year = _OF_YEAR.get(g.unit)
            if of_year is not None:  # "by month" may mean each month of the year
                keys.append(getattr(dates.dt, of_year))
        readings = [r + [k] for r in readings for k in keys]
    counts = set()
    for keys in readings:
        counts.add(int(pd.DataFrame({f"k{i}": k for i, k in enumerate(keys)}).dropna()
                       .drop_duplicates().shape[0]))
    return counts, len(frame)


def _groups_text(cell: Cell) -> str:
    return " and ".join(g.label for g in cell.groups)


#: chart kinds whose marks are not one per group (bins, points, boxes of a distribution)
_DISTRIBUTION = re.compile(r"\b(hist|histogram|distribution|box ?plot|boxes|scatter|heat ?map|"
                           r"kde|density|violin|regression|correlation)\b", re.I)


#: type names of one number, as the check child reports a result's type
_SCALARS = {"int", "float", "int64", "int32", "float64", "float32", "Decimal", "Timestamp",
            "Timedelta", "bool", "bool_"}


def _entries_ok(n: int, counts: set[int], ranking: bool) -> bool:
    if n in counts:
        return True
    if n < min(counts):
        return False
    return ranking and any(c and n % c == 0 for c in counts)  # top k per group


def one_entry_per_group(cell: Cell) -> Verdict | None:
    """A request for a value per group ("per region", "for each origin", "by month") needs a
    result, or a chart, with one entry per group. One overall value, or one group's rows,
    answers another question."""
    if cell.run is None or not cell.run.ok or cell.task is Task.SQL:
        return None
    got = _group_counts(cell)
    if got is None:
        return None
    counts, rows = got
    if min(counts) < 2:
        return None  # the sample holds one group: any answer has one entry
    ranking = bool(_RANKING.search(cell.request))
    what = _groups_text(cell)
    expected = " or ".join(str(c) for c in sorted(counts))
    if cell.task is Task.PLOT:
        return _plot_per_group(cell, counts, ranking, what, expected)
    value = cell.run.value or {}
    shape = value.get("shape")
    if value.get("type") in _SCALARS:
        shape = [1]  # one overall number
    elif value.get("type") not in ("DataFrame", "Series") or not shape or \
            value.get("is_input"):
        return None
    if shape[0] == rows:
        return None  # one entry per row: a new column, not an aggregate
    sizes = [shape[0]]
    if len(shape) > 1:  # a pivot: groups down the rows, across the columns, or both
        sizes += [shape[1], shape[1] - 1, shape[0] * shape[1], shape[0] * (shape[1] - 1)]
    verified = f"one entry per {what}"
    if any(_entries_ok(s, counts, ranking) for s in sizes):
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.NOT_PER_GROUP, f"the request asks for a value per {what}, but the result has "
        f"{shape[0]} entr{'y' if shape[0] == 1 else 'ies'} where the sample has {expected} "
        f"{what} value(s); group by {what} and keep every group")])


def _marks(axes: Mapping[str, Any]) -> int:
    bars = axes.get("bar_heights")
    if bars is not None:
        return len(bars)
    return int(axes.get("patches") or 0)


def _plot_per_group(cell: Cell, counts: set[int], ranking: bool, what: str,
                    expected: str) -> Verdict | None:
    if _DISTRIBUTION.search(cell.request):
        return None
    axes = [a for f in cell.run.figures for a in f.get("axes", [])] if cell.run else []
    marked = [_marks(a) for a in axes if _marks(a)]
    if not marked:
        return None  # lines and points: the report does not say how many (yet)
    verified = f"one bar per {what}"
    if any(_entries_ok(n, counts, ranking) or (n > min(counts) and n % min(counts) == 0)
           for n in marked) or len(marked) in counts:
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.NOT_PER_GROUP, f"the request asks for one bar per {what}, but the chart draws "
        f"{marked[0]} where the sample has {expected} {what} value(s); aggregate by {what} "
        "before plotting")])


# --------------------------------------------------------------------------- filters a group


def _compared_values(node: ast.AST, column: str) -> list[str]:
    """String values ``node`` tests ``column`` against with ``==`` or ``isin([one])``."""
    out: list[str] = []
    for n in ast.walk(node):
        if isinstance(n, ast.Compare) and len(n.ops) == 1 and isinstance(n.ops[0], ast.Eq):
            sides = [n.left, n.comparators[0]]
            if any(_names_column(s, column) for s in sides):
                out += [s.value for s in sides
                        if isinstance(s, ast.Constant) and isinstance(s.value, str)]
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and \
                n.func.attr == "isin" and _names_column(n.func.value, column) and n.args and \
                isinstance(n.args[0], (ast.List, ast.Tuple, ast.Set)) and \
                len(n.args[0].elts) == 1 and isinstance(n.args[0].elts[0], ast.Constant):
            out.append(str(n.args[0].elts[0].value))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and \
                n.func.attr == "query" and n.args and isinstance(n.args[0], ast.Constant) and \
                isinstance(n.args[0].value, str):
            out += re.findall(rf"\b{re.escape(column)}\s*==\s*['\"]([^'\"]*)['\"]",
                              n.args[0].value)
    return out


def _names_column(node: ast.AST, column: str) -> bool:
    """``df['region']``, ``df.region`` or ``df.loc[:, 'region']``."""
    if isinstance(node, ast.Subscript):
        sl = node.slice
        if isinstance(sl, ast.Tuple) and len(sl.elts) == 2:
            sl = sl.elts[1]
        return isinstance(sl, ast.Constant) and sl.value == column
    return isinstance(node, ast.Attribute) and node.attr == column


def filters_group(cell: Cell) -> Verdict | None:
    """The request groups by a column and the code keeps one value of it
    (``df[df.region == 'North']`` for "revenue per region"): the answer then covers one
    group. A value the request itself names ("per product in the North") is asked for."""
    if cell.tree is None or cell.task is Task.SQL:
        return None
    labels = [g for g in cell.groups if g.unit is None]
    if not labels:
        return None
    said = cell.request.lower()
    issues = []
    for g in labels:
        kept = [v for v in _compared_values(cell.tree, g.column) if v.lower() not in said]
        if kept:
            issues.append(Issue(Kind.FILTERS_GROUP, f"the request asks for every {g.column}, "
                                f"but the code keeps only {g.column} == {kept[0]!r}; drop that "
                                f"filter and group by {g.column}"))
    return Verdict(f"keeps every {' and '.join(g.column for g in labels)}", issues)


# --------------------------------------------------------------------------- constant plots

_COMPARES = re.compile(r"\b(compare|comparing|comparison|vs\.?|versus|across|per|each|by|"
                       r"between|among)\b", re.I)
_REDUCTIONS = {"mean", "sum", "median", "max", "min", "count", "std", "var", "nunique",
               "average"}
_PLOT_CALLS = {"bar": 1, "barh": 1, "plot": 1, "pie": 0}


def _one_column(node: ast.AST) -> bool:
    """``df['x']`` or ``df.x`` (filtered or not), not grouped: a column of numbers."""
    if any(k in ast.dump(node) for k in ("groupby", "pivot", "resample", "rolling", "'agg'")):
        return False
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)
    return isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Subscript))


def _scalar_reduction(node: ast.AST) -> bool:
    """``df['x'].mean()``, ``np.mean(df['x'])`` or ``[m] * 3``: one number, however many
    bars it feeds."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and \
            isinstance(node.left, ast.List) and len(node.left.elts) == 1:
        return True
    if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) > 1:
        return len({ast.dump(e) for e in node.elts}) == 1 and \
            not isinstance(node.elts[0], ast.Constant)
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute) or \
            node.func.attr not in _REDUCTIONS:
        return False
    owner = node.func.value
    if isinstance(owner, ast.Name) and owner.id in ("np", "numpy", "statistics"):
        return bool(node.args) and _one_column(node.args[0]) and not node.keywords
    return not node.args and not node.keywords and _one_column(owner)


def _constant_calls(tree: ast.Module) -> list[ast.Call]:
    """Plot calls whose heights are one number: ``plt.bar(names, df['x'].mean())``."""
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and \
                n.func.attr in _PLOT_CALLS:
            pos = _PLOT_CALLS[n.func.attr]
            heights = n.args[pos] if len(n.args) > pos else next(
                (k.value for k in n.keywords if k.arg in ("height", "width", "x", "y")), None)
            if heights is not None and _scalar_reduction(heights) and (
                    len(n.args) > 1 or n.func.attr == "pie"):
                out.append(n)
    return out


def _flat(values: list[Any]) -> bool:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not
            (isinstance(v, float) and math.isnan(v))]
    return len(nums) >= 2 and max(nums) - min(nums) <= 1e-12 * max(1.0, abs(nums[0]))


def varies_where_compared(cell: Cell) -> Verdict | None:
    """A chart that compares ("per region", "compare", "across") must show different values:
    bars all of one height, or one overall mean drawn once per group, compare nothing."""
    if cell.task is not Task.PLOT or not (_COMPARES.search(cell.request) or cell.groups):
        return None
    verified = "the chart's values differ"
    if cell.tree is not None:
        calls = _constant_calls(cell.tree)
        if calls:
            return Verdict(verified, [Issue(
                Kind.CONSTANT_PLOT, "the chart draws one overall number for every bar "
                f"(`{ast.unparse(calls[0])[:120]}`), so it compares nothing; compute one "
                "value per group (groupby) and plot those", calls[0].lineno)])
    run = cell.run
    if run is None or not run.ok:
        return None
    reported = False
    for axes in (a for f in run.figures for a in f.get("axes", [])):
        bars, lines = axes.get("bar_heights"), axes.get("line_ys")
        if bars is None and lines is None:
            continue
        reported = True
        series = ([bars] if bars else []) + list(lines or [])
        if series and all(_flat(s) for s in series if len(s) >= 2) and \
                any(len(s) >= 2 for s in series):
            return Verdict(verified, [Issue(
                Kind.CONSTANT_PLOT, "every value the chart draws is the same, so it compares "
                "nothing; plot one value per group, computed from the data")])
    return Verdict(verified) if reported else None


# --------------------------------------------------------------------------- every column

#: a request about every column of a frame, or about columns it cannot list ("prefixed with")
_EVERY_COLUMN = re.compile(
    r"\b(?:each|every|all|any)\s+(?:of\s+)?(?:the\s+)?(?:existing\s+|other\s+|numeric\s+|"
    r"remaining\s+|such\s+)?columns?\b|\bcolumns?\s+(?:\w+\s+){0,3}(?:prefixed|suffixed|"
    r"starting|beginning|ending)\b|\bnumber\s+of\s+(?:such\s+)?columns\b", re.I)
#: frame attributes and methods that work over its columns without naming them
_OVER_COLUMNS = {"columns", "filter", "select_dtypes", "iloc", "keys", "items", "iteritems",
                 "dtypes", "apply", "map", "applymap", "replace", "transform", "add_prefix",
                 "add_suffix", "abs", "fillna", "astype", "pipe", "agg", "aggregate", "mask",
                 "where", "clip", "round", "rank", "pct_change", "diff", "cumsum", "cumprod",
                 "div", "mul", "add", "sub", "pow", "rdiv", "rsub", "radd", "rmul", "rpow",
                 "truediv", "rtruediv", "melt", "stack", "ffill", "bfill", "interpolate",
                 "dropna", "isna", "notna", "isnull", "notnull", "eq", "ne", "gt", "lt", "ge",
                 "le", "any", "all", "sum", "mean", "max", "min", "median", "std", "count",
                 "nunique", "describe", "rename", "set_axis", "T", "transpose", "to_numpy",
                 "values", "corr", "cov", "duplicated", "drop_duplicates", "style"}


#: calls that show or measure a frame, not work over its columns
_SHOWS = {"print", "display", "len", "type", "repr", "str", "id", "isinstance"}


def _over_columns(tree: ast.AST, frame: str) -> bool:
    """Whether the code works over ``frame``'s columns without listing them: an attribute or
    method from ``_OVER_COLUMNS`` on the frame itself, or the frame used whole as an operand
    or argument (``1 / df``, ``np.exp(df)``, ``for c in df``)."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id == frame):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute):
            if parent.attr in _OVER_COLUMNS:
                return True
        elif isinstance(parent, ast.Call):
            if not (isinstance(parent.func, ast.Name) and parent.func.id in _SHOWS):
                return True
        elif isinstance(parent, (ast.BinOp, ast.UnaryOp, ast.comprehension, ast.For,
                                 ast.keyword, ast.Starred)):
            return True
    return False


def _named_columns(tree: ast.AST, frame: Any, name: str) -> list[str]:
    """The columns of ``frame`` that the code names: as string constants anywhere, or as
    attributes of the frame (``df.A``)."""
    columns = {str(c) for c in frame.columns}
    named = [n.value for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in columns]
    named += [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and
              isinstance(n.value, ast.Name) and n.value.id == name and n.attr in columns]
    return list(dict.fromkeys(named))


def names_each_column(cell: Cell) -> Verdict | None:
    """A request about every column ("the inverse of each column", "any column prefixed
    with Value") answered by naming the sample's columns one at a time (``df['A']``,
    ``df['B']``) is right for today's columns only: the data may have, or gain, others. The
    cell must work over the frame's columns (``df.columns``, ``df.filter(like=...)``, an
    operation on the whole frame)."""
    if cell.task is not Task.PANDAS or cell.tree is None or \
            not _EVERY_COLUMN.search(cell.request):
        return None
    for name, frame in _frames(cell.namespace, cell.code).items():
        if name not in {n.id for n in ast.walk(cell.tree) if isinstance(n, ast.Name)}:
            continue
        named = _named_columns(cell.tree, frame, name)
        if len(named) < 2:
            continue
        if _over_columns(cell.tree, name):  # unless one statement lists three or more
            listing = [n for stmt in cell.tree.body
                       if not _over_columns(stmt, name)
                       for n in [_named_columns(stmt, frame, name)] if len(n) >= 3]
            if not listing:
                continue
            named = listing[0]
        listed = ", ".join(named[:6])
        return Verdict("works over every column", [Issue(
            Kind.EVERY_COLUMN, f"the request is about every column, but the cell names "
            f"{listed} one at a time, so a column the data has beyond these is missed; work "
            f"over the columns of `{name}` (`{name}.columns`, `{name}.filter(like=...)`, or "
            f"one operation on the whole frame)")])
    return None


# --------------------------------------------------------------------------- dates as text

#: pandas' own display of a datetime with a time: text in this form looks the same
_DISPLAY_FORMATS = {"%Y-%m-%d %H:%M:%S", "%Y-%m-%d %X", "%F %T"}
_ASKS_TEXT = re.compile(r"\b(?:as|to|into|in)\s+(?:a\s+)?(?:strings?|text|str)\b|"
                        r"\bstrftime\b|\bformat", re.I)


def text_dates(cell: Cell) -> Verdict | None:
    """``.dt.strftime('%Y-%m-%d %H:%M:%S')`` writes dates as text in the form pandas shows
    them anyway: nothing looks different, but the column no longer holds dates (it sorts,
    compares and exports as text). Unless the request asks for text or a format, fail."""
    if cell.task is not Task.PANDAS or cell.tree is None or _ASKS_TEXT.search(cell.request):
        return None
    for node in ast.walk(cell.tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "strftime" and node.args and \
                isinstance(node.args[0], ast.Constant) and \
                node.args[0].value in _DISPLAY_FORMATS:
            return Verdict("keeps dates as dates", [Issue(
                Kind.TEXT_DATES, f"`{ast.unparse(node)[:100]}` turns the dates into text "
                "that looks exactly as pandas already shows them, so the column stops being "
                "dates (it sorts and compares as text); keep them datetimes (for a time zone: "
                "`.dt.tz_localize(None)`)", node.lineno)])
    return None


_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
#: a date written with its month's name: 01-Dec-2015, 1 December 2015, Dec 1, 2015
_NAMED_DATE = re.compile(rf"\b\d{{1,2}}[- /]{_MONTH}[- /,]\s?\d{{2,4}}\b|"
                         rf"\b{_MONTH} \d{{1,2}},? \d{{4}}\b", re.I)
#: a date written in digits only: 2015-12-01, 01-12-2015, 12/01/2015
_DIGIT_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}[-/]\d{1,2}[-/]\d{4}\b")


def named_month_dates(cell: Cell) -> Verdict | None:
    """A request that shows the dates it wants with the month's name ("Desired output
    01-Dec-2015 00:00:00"), dates the data does not hold, answered by a result that writes
    its dates in digits only (``01-12-2015``): the wrong format."""
    if cell.task is not Task.PANDAS or cell.run is None or not cell.run.ok:
        return None
    printed = " ".join((cell.run.value or {}).get("printed") or [])
    wanted = _NAMED_DATE.findall(cell.request)
    if not wanted or not (_DIGIT_DATE.search(printed) or _NAMED_DATE.search(printed)):
        return None
    held = " ".join(sample_copy(f, 200).to_string() for f in _frames(cell.namespace, "").values())
    wanted = [w for w in wanted if w not in held]
    if not wanted:
        return None
    verified = f"writes dates like {wanted[0]}"
    if _NAMED_DATE.search(printed):
        return Verdict(verified)
    found = _DIGIT_DATE.search(printed)
    return Verdict(verified, [Issue(
        Kind.DATE_FORM, f"the request shows its dates as {wanted[0]}, with the month's name; "
        f"the result writes them as {found.group(0) if found else 'digits'}: use "
        "`.dt.strftime` with `%b` (Dec) or `%B` (December) in the format")])



# --------------------------------------------------------------------------- numbers kept

_NUMBER_KINDS = set("iufcb")
#: a request for text ("as strings", "to text"; "in a string" is where a value is found)
_ASKS_STRINGS = re.compile(r"\b(?:as|to|into)\s+(?:a\s+)?(?:strings?|text|str)\b|\bformat",
                           re.I)


def kept_numbers(cell: Cell) -> Verdict | None:
    """A result that holds a live frame's number columns as text (``df.map(lambda x:
    re.sub(..., str(x)))`` to clean the text columns turns the counts into strings too): the
    numbers no longer add up or sort. Unless the request asks for text, fail."""
    if cell.task is not Task.PANDAS or cell.run is None or not cell.run.ok or \
            _ASKS_STRINGS.search(cell.request):
        return None
    kinds = (cell.run.value or {}).get("kinds")
    if not kinds:
        return None
    for name, frame in _frames(cell.namespace, cell.code).items():
        numbers = [str(c) for c in frame.columns
                   if getattr(frame[c], "dtype", None) is not None
                   and getattr(frame[c].dtype, "kind", "") in _NUMBER_KINDS]
        shared = [c for c in numbers if c in kinds]
        if not shared:
            continue
        texts = [c for c in shared if kinds[c] in "OSUT"]
        verified = "number columns stay numbers"
        if not texts:
            return Verdict(verified)
        return Verdict(verified, [Issue(
            Kind.NUMBERS_AS_TEXT, f"the result holds {', '.join(texts[:5])} as text, but in "
            f"`{name}` {'they are' if len(texts) > 1 else 'it is'} numbers; change only the "
            "columns the request is about (a text operation on every value, like "
            "`str(x)` inside `map`, turns numbers into strings)")])
    return None

# --------------------------------------------------------------------------- replaced everywhere

_REPLACE = re.compile(r"\b(?:replace|substitute|swap)\s+(.{1,80}?)\s+(?:with|by|for)\b",
                      re.I | re.S)
_SPLIT = re.compile(r"\s*(?:,|\band\b|\bor\b|\s)\s*")


def _replaced_tokens(request: str) -> list[str]:
    """What the request asks to replace: each word or quoted string between "replace" and
    "with", two characters or more."""
    tokens: list[str] = []
    for m in _REPLACE.finditer(request):
        for tok in _SPLIT.split(m.group(1)):
            tok = tok.strip().strip("'\"`")
            if len(tok) >= 2 and tok.lower() not in ("all", "the", "any", "every", "each",
                                                      "values", "value"):
                tokens.append(tok)
    return list(dict.fromkeys(tokens))


def _holds_text(frame: Any, token: str) -> str | None:
    """The first text column of ``frame`` with a value containing ``token``."""
    for col in frame.columns:
        values = frame[col]
        if getattr(values, "dtype", None) is None or values.dtype.kind not in "OSU" and \
                str(values.dtype) not in ("string", "str"):
            continue
        try:
            if values.astype(str).str.contains(token, regex=False).any():
                return str(col)
        except Exception:  # noqa: BLE001 - a column pandas cannot read as text
            continue
    return None


def replaced_everywhere(cell: Cell) -> Verdict | None:
    """"Replace &AMP; with '&'" (in all columns, or in none named) answered by a result that
    still shows ``&AMP;``: the cell cleaned one column of several. Only text the live data
    holds counts; a request that names one of the frame's columns and not "all columns"
    asks for that column only."""
    if cell.task is not Task.PANDAS or cell.run is None or not cell.run.ok:
        return None
    printed = (cell.run.value or {}).get("printed") or []
    tokens = _replaced_tokens(cell.request)
    if not printed or not tokens:
        return None
    for name, frame in _frames(cell.namespace, cell.code).items():
        columns = {str(c) for c in frame.columns}
        if not _EVERY_COLUMN.search(cell.request) and \
                any(re.search(rf"\b{re.escape(c)}\b", cell.request) for c in columns):
            continue
        held = [t for t in tokens if _holds_text(sample_copy(frame, cell.sample_rows), t)]
        left = [t for t in held if any(t in form for form in printed)]
        if held:
            verified = f"no {held[0]} left in the result"
            if not left:
                return Verdict(verified)
            return Verdict(verified, [Issue(
                Kind.NOT_REPLACED, f"the request asks to replace {', '.join(left)}, but the "
                f"result still shows it: replace it in every column that holds it (e.g. "
                f"`{name}.replace('{left[0]}', ..., regex=True)` for text inside values)")])
    return None


#: run before the sandbox (on the code and the request)
STATIC_RULES: tuple[Rule, ...] = (computes_nothing, assigns_result, filters_group,
                                  varies_where_compared, names_each_column, text_dates)
# --------------------------------------------------------------------------- functions

def uncalled_function(tree: ast.Module | None) -> str | None:
    """The name of the last function the cell defines at top level and never calls, when
    every parameter has a default (``def f(df=example_df):``): the check calls it so, since a
    run that only defines it has tested nothing in its body. None otherwise."""
    if tree is None:
        return None
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if not defs:
        return None
    fn = defs[-1]
    args = fn.args
    if len(args.defaults) < len(args.posonlyargs) + len(args.args) or \
            any(d is None for d in args.kw_defaults):
        return None
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return None if fn.name in used else fn.name


# --------------------------------------------------------------------------- the example's columns

_EXAMPLE_FRAME = re.compile(r"^\s*(?:result|expected\w*|desired\w*|output|out|df_out|"
                            r"df_result)\s*=\s*pd\.DataFrame\(\s*\{", re.M)


def example_columns(request: str) -> list[str] | None:
    """The columns of the result a request writes out as code ("the resulting dataframe
    should look like so: ``result = pd.DataFrame({"A": [...], "inv_A": [...]})``"), or None.
    Only the keys are read: the values are often not Python (``e^1``). Input frames
    (``df = pd.DataFrame(...)``) are not examples of the result."""
    for m in _EXAMPLE_FRAME.finditer(request):
        start = request.index("{", m.start())
        depth, end = 0, None
        for i, ch in enumerate(request[start:start + 5000], start):
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                end = i
                break
        if end is None:
            continue
        keys = re.findall(r"[{,]\s*([\"'])([^\"'\n]{1,60})\1\s*:", request[start:end + 1])
        if len(keys) >= 2:
            return [k.strip() for _, k in keys]
    return None


def has_example_columns(cell: Cell) -> Verdict | None:
    """A request that writes its result out as a DataFrame gets a result with those columns,
    in that order (names compared without surrounding spaces)."""
    if cell.task is not Task.PANDAS or cell.run is None or not cell.run.ok:
        return None
    want = example_columns(cell.request)
    if want is None:
        return None
    got = [c.strip() for c in ((cell.run.value or {}).get("columns") or [])]
    verified = "has the columns of the request's example"
    if got == want:
        return Verdict(verified)
    found = ", ".join(got[:8]) if got else \
        f"a {(cell.run.value or {}).get('type', 'value')} without columns"
    missing = [c for c in want if c not in got]
    return Verdict(verified, [Issue(
        Kind.EXAMPLE_COLUMNS, f"the request shows a result with the columns {', '.join(want)}; "
        f"the cell's result has {found}"
        + (f" (missing: {', '.join(missing[:6])})" if missing else " (another order)")
        + "; build exactly those columns (keep the existing ones and add the new ones)")])


# --------------------------------------------------------------------------- all missing

#: a request whose right answer can be all NaN: values set to NaN, an empty column
_ASKS_MISSING = re.compile(r"\b(?:to|with|as|into|of)\s+(?:nan|nans|null|nulls|none|na|"
                           r"missing(?:\s+values)?)\b|\bempty\s+(?:column|series|frame)|"
                           r"\b(?:mask|blank)\w*\b", re.I)


def not_all_missing(cell: Cell) -> Verdict | None:
    """A result whose every value is missing (NaN) answers nothing: mostly an index that did
    not align (``pd.Series(df['v'], index=df['date'])`` reindexes by the dates and finds
    none). A request whose answer can be all NaN ("set the values to NaN", "an empty
    column") is left alone; one that only asks where NaNs come from is not."""
    if cell.task is not Task.PANDAS or cell.run is None or not cell.run.ok:
        return None
    value = cell.run.value or {}
    if "all_missing" not in value or _ASKS_MISSING.search(cell.request):
        return None
    verified = "the result has values (not all NaN)"
    if not value["all_missing"]:
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.ALL_MISSING, "every value of the result is NaN: the index probably did not "
        "align (building a Series or DataFrame from another one with a new index reindexes "
        "it); use .to_numpy() / .values, or set_index, to keep the values")])


#: run after the sandbox (on what the check child reported)
RUN_RULES: tuple[Rule, ...] = (run_warnings, one_entry_per_group, varies_where_compared,
                               has_example_columns, not_all_missing, replaced_everywhere,
                               named_month_dates, kept_numbers)


def apply(rules: tuple[Rule, ...], cell: Cell) -> list[Verdict]:
    """Every verdict of ``rules`` on ``cell`` (rules that do not apply give none)."""
    return [v for v in (rule(cell) for rule in rules) if v is not None]
