"""What the model is told about the live kernel: data objects, SQL schemas, the last error.

A 0.5B model writes correct pandas and SQL only when it sees the real column and table names
(RESEARCH.md: it invents columns and re-creates data otherwise). So every DataFrame, Series,
ndarray and SQL connection in the user namespace is described (shape, dtypes, per-column stats,
null counts, a few rows; tables with their columns), ranked by relevance to the request, and cut
to a token budget so that the objects the request is about survive.
"""

from __future__ import annotations

import difflib
import re
import sqlite3
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qcoder_ds.copilot.errors import CopilotError, DatabaseError

CountTokens = Callable[[str], int]

#: Stats are computed on at most this many rows, so a 10 M-row frame does not stall the prompt.
STATS_ROWS = 100_000
SAMPLE_ROWS = 3
MAX_COLUMNS_SHOWN = 40
_HIDDEN_NAMES = {"In", "Out", "Err", "exit", "quit", "get_ipython"}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: plain values also described (one line each): requests often refer to a threshold, a list
_PLAIN = (bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 3.5 characters a token for code and tables)."""
    return max(1, int(len(text) / 3.5) + 1)


# --------------------------------------------------------------------------- SQL connections


@dataclass
class ConnectionInfo:
    """A SQL connection in scope, with every table's columns (name -> declared type)."""

    name: str
    kind: str  # "sqlite", "duckdb" or "sqlalchemy"
    dialect: str  # a sqlglot dialect name
    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    path: str | None = None  # database file, when there is one
    foreign_keys: list[tuple[str, str, str, str]] = field(default_factory=list)
    samples: dict[str, list[tuple]] = field(default_factory=dict)
    error: str | None = None

    def schema(self) -> dict[str, dict[str, str]]:
        """The mapping sqlglot's ``qualify`` takes. A declared type sqlglot cannot read becomes
        TEXT: only the names matter to the checks, and an odd type must not stop them."""
        from sqlglot import exp
        from sqlglot.errors import SqlglotError

        out: dict[str, dict[str, str]] = {}
        for table, cols in self.tables.items():
            out[table] = {}
            for col, typ in cols.items():
                try:
                    exp.DataType.build(typ or "TEXT", dialect=self.dialect)
                    out[table][col] = typ or "TEXT"
                except (SqlglotError, ValueError):
                    out[table][col] = "TEXT"
        return out


def _sqlalchemy_dialect(name: str) -> str:
    return {"postgresql": "postgres", "mssql": "tsql", "mysql": "mysql", "mariadb": "mysql",
            "sqlite": "sqlite", "oracle": "oracle", "duckdb": "duckdb",
            "snowflake": "snowflake", "bigquery": "bigquery"}.get(name, name)


def connection_kind(obj: Any) -> str | None:
    """'sqlite', 'duckdb', 'sqlalchemy' or None, without importing optional libraries."""
    if isinstance(obj, sqlite3.Connection):
        return "sqlite"
    mod = type(obj).__module__ or ""
    cls = type(obj).__name__
    if mod.lstrip("_").startswith("duckdb") and cls == "DuckDBPyConnection":
        return "duckdb"
    if mod.startswith("sqlalchemy") and cls in ("Engine", "Connection"):
        return "sqlalchemy"
    return None


def _locked_message(name: str, exc: Exception) -> str:
    return (f"the database behind `{name}` is locked by another connection or transaction "
            f"({exc}); commit or close the other transaction and try again")


def describe_connection(name: str, conn: Any, sample_rows: int = 2) -> ConnectionInfo:
    """Read the schema of a live connection. A locked or closed database becomes ``error``."""
    kind = connection_kind(conn)
    if kind is None:
        raise CopilotError(f"`{name}` is not a sqlite3, DuckDB or SQLAlchemy connection")
    try:
        if kind == "sqlite":
            return _describe_sqlite(name, conn, sample_rows)
        if kind == "duckdb":
            return _describe_duckdb(name, conn, sample_rows)
        return _describe_sqlalchemy(name, conn, sample_rows)
    except Exception as e:  # noqa: BLE001 - any driver error becomes a readable note
        text = str(e)
        if "locked" in text.lower() or "busy" in text.lower():
            text = _locked_message(name, e)
        elif "closed" in text.lower():
            text = f"the connection `{name}` is closed ({e}); open it again"
        else:
            text = f"could not read the schema of `{name}`: {type(e).__name__}: {e}"
        dialect = {"sqlite": "sqlite", "duckdb": "duckdb"}.get(kind, "sqlite")
        return ConnectionInfo(name=name, kind=kind, dialect=dialect, error=text)


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _describe_sqlite(name: str, conn: sqlite3.Connection, sample_rows: int) -> ConnectionInfo:
    info = ConnectionInfo(name=name, kind="sqlite", dialect="sqlite")
    rows = conn.execute("PRAGMA database_list").fetchall()
    main = [r for r in rows if r[1] == "main"]
    if main and main[0][2]:
        info.path = main[0][2]
    tables = conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table','view') "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
    for (table,) in tables:
        cols = conn.execute(f"PRAGMA table_info({_q(table)})").fetchall()
        info.tables[table] = {c[1]: (c[2] or "ANY") for c in cols}
        for fk in conn.execute(f"PRAGMA foreign_key_list({_q(table)})").fetchall():
            info.foreign_keys.append((table, fk[3], fk[2], fk[4]))
        if sample_rows:
            info.samples[table] = conn.execute(
                f"SELECT * FROM {_q(table)} LIMIT {int(sample_rows)}").fetchall()
    return info


def _describe_duckdb(name: str, conn: Any, sample_rows: int) -> ConnectionInfo:
    info = ConnectionInfo(name=name, kind="duckdb", dialect="duckdb")
    dbs = conn.execute("SELECT path FROM duckdb_databases() WHERE database_name = "
                       "current_database()").fetchall()
    if dbs and dbs[0][0]:
        info.path = dbs[0][0]
    cols = conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position").fetchall()
    for table, col, typ in cols:
        info.tables.setdefault(table, {})[col] = typ
    if sample_rows:
        for table in info.tables:
            info.samples[table] = conn.execute(
                f"SELECT * FROM {_q(table)} LIMIT {int(sample_rows)}").fetchall()
    return info


def _describe_sqlalchemy(name: str, engine: Any, sample_rows: int) -> ConnectionInfo:
    import sqlalchemy as sa

    eng = getattr(engine, "engine", engine)
    info = ConnectionInfo(name=name, kind="sqlalchemy",
                          dialect=_sqlalchemy_dialect(eng.dialect.name))
    if eng.dialect.name == "sqlite" and eng.url.database not in (None, "", ":memory:"):
        info.path = eng.url.database
    insp = sa.inspect(eng)
    for table in insp.get_table_names() + insp.get_view_names():
        info.tables[table] = {c["name"]: str(c["type"]) for c in insp.get_columns(table)}
        if table in insp.get_table_names():
            for fk in insp.get_foreign_keys(table):
                pairs = zip(fk["constrained_columns"], fk["referred_columns"], strict=False)
                for src, dst in pairs:
                    info.foreign_keys.append((table, src, fk["referred_table"], dst))
    if sample_rows:
        with eng.connect() as c:
            for table in info.tables:
                info.samples[table] = [tuple(r) for r in c.execute(
                    sa.text(f"SELECT * FROM {_q(table)} LIMIT {int(sample_rows)}"))]
    return info


def render_connection(info: ConnectionInfo, full: bool = True) -> str:
    """The schema as CREATE TABLE statements (what text-to-SQL models read best)."""
    head = f"# SQL connection `{info.name}` ({info.kind}, dialect {info.dialect})"
    if info.error:
        return f"{head}: unavailable: {info.error}"
    parts = [head]
    for table, cols in info.tables.items():
        if full:
            body = ",\n".join(f"  {_q(c) if not c.isidentifier() else c} {t}"
                              for c, t in cols.items())
            fks = [f"  FOREIGN KEY ({s}) REFERENCES {rt}({rc})"
                   for t, s, rt, rc in info.foreign_keys if t == table]
            if fks:
                body += ",\n" + ",\n".join(fks)
            parts.append(f"CREATE TABLE {table} (\n{body}\n);")
            if info.samples.get(table):
                rows = "; ".join(_short_repr(r, 120) for r in info.samples[table])
                parts.append(f"-- e.g. {rows}")
        else:
            parts.append(f"{table}({', '.join(cols)})")
    return "\n".join(parts)


# --------------------------------------------------------------------------- data objects


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_dataframe(name: str, df: Any, sample_rows: int = SAMPLE_ROWS) -> str:
    """Name, shape, per-column dtype / nulls / stats, and a few rows as CSV."""
    import pandas as pd

    nrows, ncols = df.shape
    part = df if nrows <= STATS_ROWS else df.head(STATS_ROWS)
    note = "" if nrows <= STATS_ROWS else f" (stats on the first {STATS_ROWS} rows)"
    lines = [f"# DataFrame `{name}`: {nrows} rows x {ncols} columns{note}"]
    if not isinstance(df.index, pd.RangeIndex):
        lines.append(f"index: {df.index.name or '(unnamed)'} ({df.index.dtype})")
    lines.append("columns (name: dtype, nulls, stats):")
    for i, col in enumerate(df.columns):
        if i >= MAX_COLUMNS_SHOWN:
            lines.append(f"  ... and {ncols - MAX_COLUMNS_SHOWN} more columns: "
                         + ", ".join(map(repr, list(df.columns[i:i + 30]))))
            break
        s = part[col]
        if isinstance(s, pd.DataFrame):  # duplicated column label
            s = s.iloc[:, 0]
        lines.append(f"  {col!r}: {s.dtype}, {int(s.isna().sum())} nulls, {_stats(s)}")
    if sample_rows and nrows:
        csv = df.head(sample_rows).iloc[:, :MAX_COLUMNS_SHOWN].to_csv(index=False)
        lines.append("first rows (CSV):\n" + "\n".join(r[:300] for r in csv.splitlines()))
    return "\n".join(lines)


def _stats(s: Any) -> str:
    import pandas as pd
    from pandas.api import types as pt

    try:
        if pt.is_bool_dtype(s):
            return f"true {int(s.sum())}"
        if pt.is_numeric_dtype(s):
            d = s.describe()
            if d.get("count", 0) == 0:
                return "all null"
            return f"min {d['min']:.4g}, mean {d['mean']:.4g}, max {d['max']:.4g}"
        if pt.is_datetime64_any_dtype(s):
            return f"from {s.min()} to {s.max()}"
        vc = s.astype("object").value_counts(dropna=True)
        top = ", ".join(_short_repr(v, 30) for v in vc.index[:5])
        return f"{len(vc)} distinct, e.g. {top}"
    except (TypeError, ValueError, pd.errors.PerformanceWarning):
        return "(no stats)"


def describe_series(name: str, s: Any) -> str:
    head = ", ".join(_short_repr(v, 30) for v in s.head(5).tolist())
    return (f"# Series `{name}` (name {s.name!r}): {len(s)} values, {s.dtype}, "
            f"{int(s.isna().sum())} nulls, {_stats(s)}; index {s.index.dtype}; head: {head}")


def describe_ndarray(name: str, a: Any) -> str:
    import numpy as np

    text = f"# ndarray `{name}`: shape {a.shape}, dtype {a.dtype}"
    if a.size and np.issubdtype(a.dtype, np.number):
        text += f", min {a.min():.4g}, max {a.max():.4g}"
    flat = a.ravel()[:6].tolist() if a.size else []
    return text + f", first values {_short_repr(flat, 100)}"


# --------------------------------------------------------------------------- ranking + budget


@dataclass
class ContextItem:
    """One object in scope, described fully and in one line, with the terms that match it."""

    name: str
    kind: str  # "dataframe", "series", "ndarray", "sql"
    full: str
    short: str
    terms: set[str]
    order: int
    score: float = 0.0


@dataclass
class KernelContext:
    """The live objects a request may use, ranked, plus the last error."""

    items: list[ContextItem]
    objects: dict[str, Any]
    connections: dict[str, ConnectionInfo]
    last_error: str | None = None
    last_error_cell: str | None = None

    @property
    def dataframes(self) -> dict[str, Any]:
        return {i.name: self.objects[i.name] for i in self.items if i.kind == "dataframe"}

    def render(self, budget: int, count_tokens: CountTokens = approx_tokens,
               include_error: bool = False, kinds: tuple[str, ...] | None = None) -> str:
        """The context block for the prompt, best-ranked first, within ``budget`` tokens.

        ``kinds`` keeps only those kinds of object (a pandas answer is not helped by a
        database schema: the small model starts reading tables into frames)."""
        parts: list[str] = []
        used = 0
        if include_error and self.last_error:
            err = self.last_error
            if self.last_error_cell:
                err = f"# The cell that failed:\n{self.last_error_cell}\n# Its error:\n{err}"
            limit = max(200, budget // 3)
            while count_tokens(err) > limit and len(err) > 400:
                err = "...\n" + err[len(err) // 4:]
            parts.append(err)
            used += count_tokens(err)
        left_out: list[str] = []
        for item in self.items:
            if kinds is not None and item.kind not in kinds:
                continue
            for text in (item.full, item.short):
                cost = count_tokens(text) + 1
                if used + cost <= budget:
                    parts.append(text)
                    used += cost
                    break
            else:
                left_out.append(item.name)
        if left_out:
            parts.append("# Also in scope (not described): " + ", ".join(left_out))
        return "\n\n".join(parts)


def _terms_of(text: str) -> set[str]:
    out = set()
    for w in _WORD.findall(text):
        lw = w.lower()
        out.add(lw)
        out.update(p for p in lw.split("_") if len(p) > 2)
    return out


def rank(items: list[ContextItem], request: str) -> list[ContextItem]:
    """Order items so those the request names (or whose columns it names) come first."""
    words = _terms_of(request)
    mentioned = set(_WORD.findall(request))
    n = max(1, len(items))
    for item in items:
        score = 0.0
        if item.name in mentioned:
            score += 10.0
        hits = words & item.terms
        score += 2.0 * len(hits)
        fuzzy = sum(1 for w in words - hits if len(w) > 3
                    and difflib.get_close_matches(w, item.terms, n=1, cutoff=0.85))
        score += 1.0 * fuzzy
        score += {"dataframe": 1.0, "sql": 1.0}.get(item.kind, 0.0)
        score += 0.5 * item.order / n  # most recently defined wins ties
        item.score = score
    return sorted(items, key=lambda i: -i.score)


def is_data(obj: Any) -> str | None:
    mod = type(obj).__module__ or ""
    if mod.startswith("pandas"):
        cls = type(obj).__name__
        if cls == "DataFrame":
            return "dataframe"
        if cls == "Series":
            return "series"
    if mod == "numpy" and type(obj).__name__ == "ndarray":
        return "ndarray"
    if connection_kind(obj):
        return "sql"
    return None


def user_names(namespace: Mapping[str, Any]) -> list[str]:
    """Names a user defined (not IPython's own, not _-prefixed, not modules)."""
    return [k for k in namespace if not k.startswith("_") and k not in _HIDDEN_NAMES]


def collect(namespace: Mapping[str, Any], request: str = "") -> KernelContext:
    """Describe every data object and SQL connection in ``namespace``, ranked for ``request``."""
    items: list[ContextItem] = []
    objects: dict[str, Any] = {}
    connections: dict[str, ConnectionInfo] = {}
    names = user_names(namespace)
    for order, name in enumerate(names):
        obj = namespace[name]
        kind = is_data(obj)
        if kind is None:
            if isinstance(obj, _PLAIN) and not isinstance(obj, type):
                text = f"# `{name}` = {_short_repr(obj, 200)} ({type(obj).__name__})"
                items.append(ContextItem(name, "value", text, text, {name.lower()}, order))
                objects[name] = obj
            continue
        objects[name] = obj
        if kind == "dataframe":
            cols = [str(c) for c in obj.columns]
            full = describe_dataframe(name, obj)
            short = f"# DataFrame `{name}` {obj.shape}: columns {cols[:60]}"
            terms = {name.lower()} | _terms_of(" ".join(cols))
        elif kind == "series":
            full = describe_series(name, obj)
            short = f"# Series `{name}` ({len(obj)} values, {obj.dtype})"
            terms = {name.lower()} | _terms_of(str(obj.name))
        elif kind == "ndarray":
            full = describe_ndarray(name, obj)
            short = f"# ndarray `{name}` {obj.shape} {obj.dtype}"
            terms = {name.lower()}
        else:
            info = describe_connection(name, obj)
            connections[name] = info
            full = render_connection(info, full=True)
            short = render_connection(info, full=False)
            words = " ".join(list(info.tables) + [c for t in info.tables.values() for c in t])
            terms = {name.lower()} | _terms_of(words)
        items.append(ContextItem(name, kind, full, short, terms, order))
    err, cell = last_error(namespace)
    return KernelContext(rank(items, request), objects, connections, err, cell)


def last_error(namespace: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The newest ``Err[n]`` (kept by the magic) and its cell, else Python's last exception."""
    errs = namespace.get("Err")
    if isinstance(errs, dict) and errs:
        n = max(errs)
        cells = namespace.get("In")
        cell = cells[n] if isinstance(cells, list) and 0 <= n < len(cells) else None
        return str(errs[n]), cell
    value = getattr(sys, "last_value", None) or getattr(sys, "last_exc", None)
    if value is not None:
        text = "".join(traceback.format_exception(type(value), value, value.__traceback__))
        return text, None
    return None, None


# --------------------------------------------------------------------------- {var} interpolation

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:\[(-?\d+)\])?\}")


def interpolate(request: str, namespace: Mapping[str, Any], limit: int = 4000) -> str:
    """Replace ``{name}``, ``{In[3]}``, ``{Out[3]}``, ``{Err[3]}`` by their values, as jupyter-ai.

    A data object becomes its name in backticks (it is described in the context anyway); a
    name that is not defined stays as written, so braces in code samples survive.
    """

    def sub(m: re.Match) -> str:
        name, index = m.group(1), m.group(2)
        if name not in namespace:
            return m.group(0)
        value = namespace[name]
        if index is not None:
            try:
                value = value[int(index)]
            except (KeyError, IndexError, TypeError):
                return m.group(0)
        elif is_data(value):
            return f"`{name}`"
        text = value if isinstance(value, str) else repr(value)
        return text if len(text) <= limit else text[:limit] + "..."

    return _VAR.sub(sub, request)


def referenced_names(request: str, ctx: KernelContext) -> list[str]:
    """Data objects a request names explicitly (used to force them into the sandbox copy)."""
    mentioned = set(_WORD.findall(request))
    return [i.name for i in ctx.items if i.name in mentioned]


def require_sql(ctx: KernelContext) -> ConnectionInfo:
    """The connection a SQL request runs on; a clear error when there is none or it is locked."""
    good = [c for c in ctx.connections.values() if not c.error]
    if good:
        best = next((i.name for i in ctx.items if i.name in ctx.connections
                     and not ctx.connections[i.name].error), good[0].name)
        return ctx.connections[best]
    if ctx.connections:
        info = next(iter(ctx.connections.values()))
        raise DatabaseError(info.error or f"`{info.name}` cannot be read")
    raise CopilotError("a SQL request needs a connection in scope: create one, e.g. "
                       "`conn = sqlite3.connect('shop.db')`, then ask again")
