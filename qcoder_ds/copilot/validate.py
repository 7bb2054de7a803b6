"""Static checks of a Python answer against the live kernel, before anything runs.

Each finding is an :class:`Issue` the repair loop can hand back to the model verbatim:
a syntax error, a name that is not defined, a column a DataFrame does not have (with the
closest real names), or a statement that throws the user's data away by rebinding a data
variable to literal or freshly loaded data (the small model's most common mistake).
"""

from __future__ import annotations

import ast
import builtins
import difflib
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qcoder_ds.copilot.extract import parse_problem, parse_python, parses

_NOTEBOOK_NAMES = {"display", "get_ipython", "In", "Out", "Err", "__builtins__"}

#: methods that return an object with (a superset of) the same columns, so ``x.m(...)[col]``
#: and ``x.m(...).col`` can be checked against the original frame
_SAME_COLUMNS = {"copy", "query", "dropna", "fillna", "sort_values", "sort_index", "head", "tail",
                 "sample", "groupby", "reset_index", "drop_duplicates", "astype", "loc", "iloc",
                 "nlargest", "nsmallest", "where", "mask", "round", "abs", "infer_objects",
                 "convert_dtypes", "rolling", "expanding", "resample"}
#: keyword arguments that name columns of the frame the method is called on
_COLUMN_KWARGS = {"by", "subset", "columns", "index", "values", "on", "x", "y", "hue",
                  "left_on", "right_on", "column", "keys"}
#: methods whose positional string arguments are columns
_COLUMN_POSITIONAL = {"groupby", "sort_values", "set_index", "drop_duplicates", "pivot_table",
                      "pivot", "nlargest", "nsmallest", "explode", "melt", "value_counts"}
#: calls that make new data: rebinding a live data variable to one of these discards the data
_MAKERS = {"DataFrame", "Series", "array", "asarray", "read_csv", "read_excel", "read_parquet",
           "read_json", "read_sql", "read_sql_query", "read_table", "read_feather", "loadtxt",
           "genfromtxt", "load", "from_dict", "from_records", "zeros", "ones", "arange",
           "linspace", "rand", "randn", "randint", "date_range"}


class Kind(str, enum.Enum):
    """What an :class:`Issue` is about: one kind per rule, so reports can count them. A
    ``str`` enum, so ``issue.kind == "syntax"`` and plain-string kinds keep working."""

    SYNTAX = "syntax"
    UNDEFINED_NAME = "undefined-name"
    UNKNOWN_COLUMN = "unknown-column"
    REBINDS_DATA = "rebinds-data"
    NO_RESULT = "no-result"
    IGNORES_DATA = "ignores-data"
    UNSAFE = "unsafe"
    SQL = "sql"
    SQL_FIXED = "sql-fixed"
    PYTHON_FIXED = "python-fixed"
    SQL_VALUE = "sql-value"
    SQL_LOGIC = "sql-logic"  # a query that resolves and runs but cannot answer the request
    TRUNCATED = "truncated"  # generation ended at the token budget, not at a stop
    COMPUTES_NOTHING = "computes-nothing"  # imports, comments, pass, string literals only
    RUN_WARNING = "run-warning"  # pandas/numpy warned while the cell ran on the sample
    NOT_PER_GROUP = "not-per-group"  # a per-group request without one entry per group
    FILTERS_GROUP = "filters-group"  # keeps one value of the column the request groups by
    CONSTANT_PLOT = "constant-plot"  # a comparison drawn with every value the same
    PLOT_MISSING = "plot-missing"  # the chart lacks a text, legend, scale or layout asked for
    EXAMPLE_COLUMNS = "example-columns"  # the result lacks the columns the request writes out
    ALL_MISSING = "all-missing"  # every value of the result is NaN
    REPEATED_ROWS = "repeated-rows"  # a join lists one row of the answer's table twice
    EVERY_COLUMN = "every-column"  # "each column" answered by naming the sample's columns
    TEXT_DATES = "text-dates"  # dates turned into text that looks the same
    DATE_FORM = "date-form"  # dates in digits where the request shows the month's name
    NUMBERS_AS_TEXT = "numbers-as-text"  # a number column of the data comes back as text
    NOT_REPLACED = "not-replaced"  # what the request asks to replace is still in the result
    CHECK_FAILED = "check-failed"  # a check itself failed on the answer (a bug, reported)

    def __str__(self) -> str:
        return self.value


@dataclass
class Issue:
    """One problem found in an answer. ``severity`` is "error" or "warning"."""

    kind: Kind | str
    message: str
    line: int | None = None
    severity: str = "error"

    def __post_init__(self) -> None:
        try:
            self.kind = Kind(self.kind)
        except ValueError:
            pass  # a kind some caller made up stays a string

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.message}"


def did_you_mean(word: str, options: list[str], ignore_case: bool = False) -> str:
    """`` (did you mean 'x'?)`` for the options closest to ``word``, or nothing. SQL names
    match ``ignore_case``; Python names match as spelled, then in another case."""
    low = {o.lower(): o for o in options}
    if ignore_case:
        hits = [low[h] for h in difflib.get_close_matches(word.lower(), list(low), n=3,
                                                          cutoff=0.5)]
    else:
        hits = difflib.get_close_matches(word, options, n=3, cutoff=0.5)
        if not hits and word.lower() in low:
            hits = [low[word.lower()]]
    return f" (did you mean {', '.join(map(repr, hits))}?)" if hits else ""


def check_syntax(code: str) -> tuple[ast.Module | None, list[Issue]]:
    """The parsed cell, or an issue saying why it does not parse (never an exception: the
    text is the model's, and may be anything)."""
    tree, error = parse_python(code)
    if tree is not None:
        return tree, []
    line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
    return None, [Issue(Kind.SYNTAX, parse_problem(error), line)]


# --------------------------------------------------------------------------- names


def _bound_names(tree: ast.AST) -> set[str]:
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, ast.MatchAs) and node.name:
            bound.add(node.name)
    return bound


def check_names(tree: ast.Module, namespace: Mapping[str, Any]) -> list[Issue]:
    """Every name the code reads is bound in the code, in the kernel, or a builtin."""
    bound = _bound_names(tree)
    known = bound | set(namespace) | set(dir(builtins)) | _NOTEBOOK_NAMES
    issues, seen = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id not in known and node.id not in seen:
                seen.add(node.id)
                options = [n for n in namespace if not n.startswith("_")] + sorted(bound)
                hint = did_you_mean(node.id, options)
                if node.id in ("pd", "np", "plt", "sns"):
                    hint = f" (add the import for `{node.id}`)"
                issues.append(Issue("undefined-name",
                                    f"name `{node.id}` is not defined in the kernel{hint}",
                                    node.lineno))
    return issues


# --------------------------------------------------------------------------- columns


def _is_frame(obj: Any) -> bool:
    return type(obj).__name__ == "DataFrame" and (type(obj).__module__ or "").startswith("pandas")


def _str_consts(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [e.value for e in node.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


class _ColumnChecker:
    def __init__(self, tree: ast.Module, namespace: Mapping[str, Any]):
        self.frames: dict[str, list[str]] = {
            k: [str(c) for c in v.columns] for k, v in namespace.items()
            if not k.startswith("_") and _is_frame(v)}
        self.created = self._created_columns(tree)
        self.aliases = self._aliases(tree)
        self.issues: list[Issue] = []
        self.seen: set[tuple[str, str]] = set()
        import pandas as pd

        self.frame_attrs = set(dir(pd.DataFrame)) | set(dir(pd.core.groupby.DataFrameGroupBy))

    @staticmethod
    def _created_columns(tree: ast.Module) -> set[str]:
        """Strings the code itself introduces as column names (assigned, renamed, aggregated)."""
        made: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                made.update(_str_consts(node.slice))
                if isinstance(node.slice, ast.Tuple) and len(node.slice.elts) == 2:
                    made.update(_str_consts(node.slice.elts[1]))
            elif isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg and kw.arg not in _COLUMN_KWARGS:
                        made.add(kw.arg)  # assign(new=...), agg(total=(...))
                    if kw.arg in ("columns", "name", "value_name", "var_name", "names"):
                        if isinstance(kw.value, ast.Dict):
                            for v in kw.value.values:
                                made.update(_str_consts(v))
                        else:
                            made.update(_str_consts(kw.value))
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in ("rename", "to_frame",
                                                                     "reset_index", "insert"):
                    for a in node.args:
                        made.update(_str_consts(a))
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                made.add(node.attr)
        return made

    def _aliases(self, tree: ast.Module) -> dict[str, str]:
        """``x = df`` / ``x = df[mask]`` / ``x = df.copy()``: x has df's columns."""
        out: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                t = node.targets[0]
                if isinstance(t, ast.Name) and t.id not in self.frames:
                    root = self._root_frame(node.value, out)
                    if root:
                        out[t.id] = root
        return out

    def _root_frame(self, node: ast.AST, aliases: dict[str, str] | None = None) -> str | None:
        """The live frame whose columns ``node`` still has, if we can tell."""
        aliases = self.aliases if aliases is None else aliases
        if isinstance(node, ast.Name):
            if node.id in self.frames:
                return node.id
            return aliases.get(node.id)
        if isinstance(node, ast.Subscript):
            if _str_consts(node.slice) and not isinstance(node.slice, (ast.List, ast.Tuple)):
                return None  # df['a'] is a Series
            if isinstance(node.value, ast.Attribute) and node.value.attr in ("loc", "iloc"):
                return self._root_frame(node.value.value, aliases)
            if not _str_consts(node.slice):
                return self._root_frame(node.value, aliases)  # boolean filter
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _SAME_COLUMNS:
                return self._root_frame(node.func.value, aliases)
        return None

    def _unknown(self, frame: str, col: str, line: int) -> None:
        cols = self.frames[frame]
        if col in cols or col in self.created or (frame, col) in self.seen:
            return
        self.seen.add((frame, col))
        self.issues.append(Issue(
            "unknown-column",
            f"`{frame}` has no column {col!r}{did_you_mean(col, cols)}; its columns are "
            f"{cols[:30]}", line))

    def run(self, tree: ast.Module) -> list[Issue]:
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                target = node.value
                sl = node.slice
                if isinstance(target, ast.Attribute) and target.attr in ("loc",):
                    frame = self._root_frame(target.value)
                    if frame and isinstance(sl, ast.Tuple) and len(sl.elts) == 2:
                        for c in _str_consts(sl.elts[1]):
                            self._unknown(frame, c, node.lineno)
                    continue
                frame = self._root_frame(target)
                if frame:
                    for c in _str_consts(sl):
                        self._unknown(frame, c, node.lineno)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                frame = self._root_frame(node.value)
                if (frame and node.attr not in self.frame_attrs
                        and not node.attr.startswith("_")):
                    self._unknown(frame, node.attr, node.lineno)
            elif isinstance(node, ast.Call):
                self._call(node)
        return self.issues

    def _call(self, node: ast.Call) -> None:
        func = node.func
        frame = None
        if isinstance(func, ast.Attribute):
            frame = self._root_frame(func.value)
            if frame and func.attr in _COLUMN_POSITIONAL:
                for a in node.args[:1]:
                    for c in _str_consts(a):
                        self._unknown(frame, c, node.lineno)
        data = next((kw.value for kw in node.keywords if kw.arg == "data"), None)
        if data is not None:  # seaborn style: sns.barplot(data=df, x="a", y="b")
            frame = self._root_frame(data)
        if frame is None:
            return
        method = func.attr if isinstance(func, ast.Attribute) else ""
        for kw in node.keywords:
            if kw.arg in _COLUMN_KWARGS:
                if method in ("rename", "reset_index", "drop") and kw.arg != "columns":
                    continue
                if method == "rename":
                    if isinstance(kw.value, ast.Dict):
                        for k in kw.value.keys:
                            for c in _str_consts(k) if k is not None else []:
                                self._unknown(frame, c, node.lineno)
                    continue
                if method in ("pivot_table", "pivot", "melt", "merge", "join") and \
                        kw.arg in ("on", "left_on", "right_on"):
                    if method in ("merge", "join"):
                        continue  # names on the other frame too
                for c in _str_consts(kw.value):
                    self._unknown(frame, c, node.lineno)


def check_columns(tree: ast.Module, namespace: Mapping[str, Any]) -> list[Issue]:
    """Every column the code names on a live DataFrame exists (or is made by the code)."""
    return _ColumnChecker(tree, namespace).run(tree)


# --------------------------------------------------------------------------- rebinding data


def _maker_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.UnaryOp):  # -np.random.rand(10)
        return _maker_name(node.operand)
    if isinstance(node, ast.BinOp):  # 2 * np.random.rand(10): made-up data, scaled
        parts = (node.left, node.right)
        made = [_maker_name(p) for p in parts]
        if any(made) and all(m or isinstance(p, ast.Constant)
                             for m, p in zip(made, parts, strict=True)):
            return next(m for m in made if m)
        return None
    if isinstance(node, (ast.Dict, ast.List)) and (
            getattr(node, "keys", None) or getattr(node, "elts", None)):
        return "a literal"
    if isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        if name in _MAKERS:
            return ast.unparse(f) + "(...)"
    return None


_LIVE_LITERALS = (list, dict, tuple, set, str)


def _literal_copy(node: ast.AST) -> bool:
    """A literal list/dict/tuple/set/string: a made-up copy of a live value of that kind."""
    try:
        return ast.literal_eval(node) not in ("", [], {}, ())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def rebinding_statements(tree: ast.Module, namespace: Mapping[str, Any]) -> list[ast.stmt]:
    """Top-level statements that replace a live data variable with literal or loaded data:
    a DataFrame, Series or array re-created or loaded, or a live list, dict, tuple, set or
    string replaced by a literal (``products = [1069104, 1069105]`` where ``products`` holds
    the user's ids). Numbers are left alone: rebinding one is how a parameter is changed."""
    from qcoder_ds.copilot.context import is_data

    out = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            names = [t.id for t in stmt.targets if isinstance(t, ast.Name) and t.id in namespace]
            if any(is_data(namespace[n]) in ("dataframe", "series", "ndarray")
                   for n in names) and _maker_name(stmt.value):
                out.append(stmt)
            elif any(isinstance(namespace[n], _LIVE_LITERALS) for n in names) and \
                    _literal_copy(stmt.value):
                out.append(stmt)
    return out


def check_rebinding(tree: ast.Module, namespace: Mapping[str, Any]) -> list[Issue]:
    issues = []
    for stmt in rebinding_statements(tree, namespace):
        name = next(t.id for t in stmt.targets if isinstance(t, ast.Name))
        issues.append(Issue(
            "rebinds-data",
            f"`{name}` already holds the user's data; this line replaces it with "
            f"{_maker_name(stmt.value) or 'a literal'}. Use the existing `{name}` instead",
            stmt.lineno))
    return issues


def drop_rebinding(code: str, namespace: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Remove top-level statements that re-create live data; return the code and what went.

    Safe to do without asking the model: the removed statement would only have replaced the
    user's real data with a made-up copy.
    """
    tree, _ = parse_python(code)
    if tree is None:
        return code, []
    stmts = rebinding_statements(tree, namespace)
    if not stmts:
        return code, []
    lines = code.splitlines()
    drop: set[int] = set()
    notes = []
    for s in stmts:
        drop.update(range(s.lineno - 1, (s.end_lineno or s.lineno)))
        notes.append(lines[s.lineno - 1].strip()[:80])
        above = s.lineno - 2  # its comment ("# Sample data") goes with it
        while above >= 0 and lines[above].lstrip().startswith("#"):
            drop.add(above)
            above -= 1
    kept = "\n".join(line for i, line in enumerate(lines) if i not in drop)
    return re.sub(r"\n{3,}", "\n\n", kept).strip("\n"), notes


# --------------------------------------------------------------------------- Series logic


def _is_column(node: ast.AST, namespace: Mapping[str, Any]) -> bool:
    """``df['x']`` or ``df.x`` on a live DataFrame (or a live Series itself): a Series."""
    if isinstance(node, ast.Name):
        obj = namespace.get(node.id)
        return type(obj).__name__ == "Series" and \
            (type(obj).__module__ or "").startswith("pandas")
    if isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.value, ast.Name):
        return _is_frame(namespace.get(node.value.id))
    return False


def _series_test(node: ast.AST, namespace: Mapping[str, Any]) -> bool:
    return isinstance(node, ast.Compare) and len(node.ops) == 1 and \
        (_is_column(node.left, namespace) or _is_column(node.comparators[0], namespace))


_CMP = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


def fix_series_logic(code: str, namespace: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Rewrite the two Python habits that raise "the truth value of a Series is ambiguous":
    ``a <= df['x'] <= b`` becomes ``(a <= df['x']) & (df['x'] <= b)``, and ``and``/``or``
    between Series comparisons becomes ``&``/``|``. Both have one meaning, so the fix is made
    here (and reported) instead of spending a repair on it."""
    tree, _ = parse_python(code)
    if tree is None:
        return code, []
    edits: list[tuple[ast.AST, str]] = []

    def seg(node: ast.AST) -> str:
        return ast.get_source_segment(code, node) or ""

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Compare) and len(node.ops) == 2 and \
                _is_column(node.comparators[0], namespace):
            left, mid, right = node.left, node.comparators[0], node.comparators[1]
            op1, op2 = (_CMP.get(type(o)) for o in node.ops)
            if op1 is None or op2 is None:
                return
            edits.append((node, f"({seg(left)} {op1} {seg(mid)}) & ({seg(mid)} {op2} "
                                f"{seg(right)})"))
            return
        if isinstance(node, ast.BoolOp) and all(_series_test(v, namespace)
                                                for v in node.values):
            op = " & " if isinstance(node.op, ast.And) else " | "
            edits.append((node, op.join(f"({seg(v)})" for v in node.values)))
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    try:
        visit(tree)
    except RecursionError:  # an expression nested past Python's limit: left as written
        return code, []
    return _rewrite(code, edits)


def fix_old_pandas(code: str) -> tuple[str, list[str]]:
    """The old pandas calls of ``code`` rewritten (see :func:`_fix_old_pandas_once`), nested
    ones included, and what was changed."""
    notes: list[str] = []
    for _ in range(3):
        code, changed = _fix_old_pandas_once(code)
        if not changed:
            break
        notes += changed
    return code, notes


def _fix_old_pandas_once(code: str) -> tuple[str, list[str]]:
    """Rewrite the pandas calls the model learned from older code that the installed pandas
    no longer has, each with one meaning: ``df.applymap(f)`` is ``df.map(f)`` (pandas 2.1
    renamed it, 3.0 removed it), ``s.iteritems()`` is ``s.items()`` (removed in 2.0), and
    ``df.groupby(k)['a', 'b']`` is ``df.groupby(k)[['a', 'b']]`` (a tuple is refused since
    2.0). Made here, like the Series logic, instead of spending a repair on it."""
    import pandas as pd

    tree, _ = parse_python(code)
    if tree is None:
        return code, []
    renames = {}
    if not hasattr(pd.DataFrame, "applymap") and hasattr(pd.DataFrame, "map"):
        renames["applymap"] = "map"
    if not hasattr(pd.Series, "iteritems"):
        renames["iteritems"] = "items"
    edits: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in renames:
            owner = ast.get_source_segment(code, node.func.value) or ""
            edits.append((node.func, f"{owner}.{renames[node.func.attr]}"))
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple) and \
                _is_groupby(node.value) and node.slice.elts and \
                all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                    for e in node.slice.elts):
            cols = ", ".join(repr(e.value) for e in node.slice.elts)
            owner = ast.get_source_segment(code, node.value) or ""
            edits.append((node, f"{owner}[[{cols}]]"))
    return _rewrite(code, edits)


def _is_groupby(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
        node.func.attr == "groupby"


def _rewrite(code: str, edits: list[tuple[ast.AST, str]]) -> tuple[str, list[str]]:
    """``code`` with each node's source replaced by its text (innermost edits are not
    combined with outer ones), and the changes as ``old -> new``; unchanged if the result
    does not parse."""
    if not edits:
        return code, []
    starts = [0]
    for line in code.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offset(line: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        text = code[starts[line - 1]:starts[line] if line < len(starts) else None]
        return starts[line - 1] + len(text.encode()[:col].decode(errors="ignore"))

    spans: list[tuple[int, int, str]] = []
    for node, text in edits:
        a = offset(node.lineno, node.col_offset)
        b = offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
        spans.append((a, b, text))
    chosen: list[tuple[int, int, str]] = []
    for a, b, text in sorted(spans, key=lambda s: s[1] - s[0]):  # innermost first
        if all(b <= c or a >= d for c, d, _ in chosen):
            chosen.append((a, b, text))
    out = code
    notes = []
    for a, b, text in sorted(chosen, reverse=True):
        notes.append(f"{out[a:b]} -> {text}")
        out = out[:a] + text + out[b:]
    if not parses(out):
        return code, []
    return out, notes[::-1]


def _base_name(node: ast.AST) -> str | None:
    """``df`` for ``df``, ``df['a']``, ``df.loc[i, 'a']`` and ``df.a``."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _changes(node: ast.AST, name: str) -> bool:
    """Whether ``node`` binds ``name`` or changes the object it names in place: ``df = ...``,
    ``df['a'] = ...``, ``df.loc[...] = ...``, ``df += 1``, ``del df['a']``, or
    ``df.method(..., inplace=True)``."""
    if isinstance(node, (ast.Name, ast.Subscript, ast.Attribute)) and \
            isinstance(node.ctx, (ast.Store, ast.Del)):
        return _base_name(node) == name
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            _base_name(node.func.value) == name:
        return any(k.arg == "inplace" and isinstance(k.value, ast.Constant) and k.value.value
                   is True for k in node.keywords)
    return False


def check_assigns(tree: ast.Module, name: str) -> list[Issue]:
    """The request said where the answer goes (``result = ...``): the code must put it there.
    A cell that prints the answer, or leaves it in a function it never calls, answers nothing
    the next cell can use. When the answer goes in the data itself (DS-1000 asks for ``df``
    in 91 of 221 pandas problems), changing it in place puts it there too."""
    todo: list[ast.AST] = [tree]
    while todo:  # the cell's own scope: not the bodies of functions or classes it defines
        node = todo.pop()
        if _changes(node, name):
            return []
        todo.extend(c for c in ast.iter_child_nodes(node) if not isinstance(
            c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)))
    return [Issue("no-result", f"the request asks for the answer in the variable `{name}`, "
                               f"but the code never assigns it: end with `{name} = ...`")]


_TYPED = {"DataFrame", "Series", "array"}


def check_uses_data(tree: ast.Module, namespace: Mapping[str, Any]) -> list[Issue]:
    """An error when the kernel holds data but the code reads none of it and types a table or
    array in by hand instead (``result = pd.DataFrame({"A": [1, 2], "sigmoid_A": [...]})``):
    the small model copies the example it was shown, and the cell is then right only for
    that example, never for the user's data. For requests that ask for data to be made, the
    caller does not run this check."""
    from qcoder_ds.copilot.context import is_data

    live = sorted(n for n, v in namespace.items() if not n.startswith("_") and
                  is_data(v) in ("dataframe", "series", "ndarray"))
    if not live:
        return []
    reads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and
             isinstance(n.ctx, ast.Load) and n.id in namespace and
             not isinstance(namespace[n.id], type) and not callable(namespace[n.id]) and
             type(namespace[n.id]).__name__ != "module"}
    if reads:
        return []
    typed = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
             (n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", None))
             in _TYPED and any(isinstance(a, (ast.List, ast.Dict, ast.Tuple)) for a in
                               [*n.args, *(k.value for k in n.keywords)])]
    if not typed:
        return []
    names = ", ".join(f"`{n}`" for n in live[:3])
    return [Issue("ignores-data", f"the code never reads the data in the kernel ({names}) and "
                                  "types values in by hand instead; compute the answer from "
                                  f"{names}", typed[0].lineno)]


def validate_python(code: str, namespace: Mapping[str, Any],
                    result_name: str | None = None) -> list[Issue]:
    """Syntax, names, columns, rebinding and, when the request names one, the result variable
    (safety is separate: it may only warn)."""
    tree, issues = check_syntax(code)
    if tree is None:
        return issues
    issues = (check_names(tree, namespace) + check_columns(tree, namespace)
              + check_rebinding(tree, namespace))
    return issues + (check_assigns(tree, result_name) if result_name else [])
