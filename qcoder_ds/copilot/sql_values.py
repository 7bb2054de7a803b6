"""The text values a query filters on, looked up in the live database.

After the column names, the small model's next SQL slip is the value: it filters
``flights.Airline = 'JetBlue Airways'`` where ``flights.Airline`` holds airline ids and the name
lives in ``airlines.Airline``, or writes ``'north america'`` for ``'North America'``. Both run and
return nothing, so execution alone does not catch them. Each ``column = 'text'`` (and
``column IN ('text', ...)``) is looked up with a parameterized, read-only ``SELECT ... LIMIT``:

- the value is in the column: nothing to say;
- it is there once the case (and surrounding spaces) are ignored, in one spelling: the literal
  is rewritten to that spelling and the fix reported (a warning);
- it is there only with surrounding spaces the query lacks: a warning, the query unchanged. The
  stray spaces are a fault of the data the user should see, not a slip of the model, and the
  query as written is what they asked (Spider's gold answers, too, compare exactly);
- it is in exactly one other column of the tables that the comparison's SELECT reads
  (``T1.Name = 'Kabul'`` on ``country``, where ``city AS T2`` is joined and ``city.Name`` holds
  it): the comparison is moved to that column and the fix reported;
- it is in other columns of the database: an error naming them, for the repair prompt;
- it is nowhere: nothing to say (an empty answer may be the right one).

Only sqlite3 and DuckDB connections are looked up; a server database is left alone. The
lookups share a time budget, so a large database costs at most that.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.validate import Issue

_TEXT_TYPES = ("char", "text", "clob", "string")


@dataclass(frozen=True)
class Filter:
    """``table.column`` compared with the text ``value`` somewhere in the query."""

    table: str
    column: str
    value: str


def filters(tree: exp.Expression, info: ConnectionInfo) -> list[Filter]:
    """The ``column = 'text'`` / ``<>`` / ``IN`` comparisons of ``tree``, with each column's
    real table (found by qualifying against the schema)."""
    try:
        qualified = qualify(tree.copy(), schema=info.schema(), dialect=info.dialect,
                            validate_qualify_columns=False, quote_identifiers=False)
        scopes = list(traverse_scope(qualified))
    except SqlglotError:
        return []
    tables = {t.lower(): t for t in info.tables}
    found: list[Filter] = []
    for scope in scopes:
        for column in scope.columns:
            source = scope.sources.get(column.table)
            if not isinstance(source, exp.Table) or source.name.lower() not in tables:
                continue
            table = tables[source.name.lower()]
            real = next((c for c in info.tables[table] if c.lower() == column.name.lower()),
                        None)
            if real is None:
                continue
            for value in _compared_texts(column):
                found.append(Filter(table, real, value))
    return list(dict.fromkeys(found))


def _compared_texts(column: exp.Column) -> list[str]:
    parent = column.parent
    if isinstance(parent, (exp.EQ, exp.NEQ)):
        other = parent.expression if parent.this is column else parent.this
        if isinstance(other, exp.Literal) and other.is_string:
            return [other.this]
    if isinstance(parent, exp.In) and parent.this is column:
        return [e.this for e in parent.expressions
                if isinstance(e, exp.Literal) and e.is_string]
    return []


class _Lookup:
    """Read-only lookups on a DB-API connection within a shared time budget."""

    def __init__(self, conn: Any, info: ConnectionInfo, budget_s: float):
        self.conn, self.info = conn, info
        self.deadline = time.monotonic() + budget_s

    def rows(self, sql: str, params: tuple) -> list[tuple] | None:
        """The rows, or None when out of time or the lookup failed."""
        if time.monotonic() > self.deadline:
            return None
        is_sqlite = isinstance(self.conn, sqlite3.Connection)
        if is_sqlite:
            self.conn.set_progress_handler(lambda: int(time.monotonic() > self.deadline), 5000)
        try:
            return list(self.conn.execute(sql, params).fetchall())
        except Exception:  # noqa: BLE001 - a lookup that fails says nothing about the query
            return None
        finally:
            if is_sqlite:
                self.conn.set_progress_handler(None, 0)

    def quote(self, name: str) -> str:
        return exp.to_identifier(name, quoted=True).sql(dialect=self.info.dialect)

    def has(self, table: str, column: str, value: str) -> bool | None:
        rows = self.rows(f"SELECT 1 FROM {self.quote(table)} WHERE {self.quote(column)} = ? "
                         "LIMIT 1", (value,))
        return None if rows is None else bool(rows)

    def spellings(self, table: str, column: str, value: str) -> list[str] | None:
        col = self.quote(column)
        rows = self.rows(f"SELECT DISTINCT CAST({col} AS TEXT) FROM {self.quote(table)} "
                         f"WHERE lower(trim(CAST({col} AS TEXT))) = ? LIMIT 3",
                         (value.strip().lower(),))
        return None if rows is None else [r[0] for r in rows]


def check_values(sql: str, info: ConnectionInfo, conn: Any, budget_s: float = 2.0
                 ) -> tuple[str, list[Issue]]:
    """(``sql`` with misspelled values corrected, issues) for the text values ``sql`` filters
    on, looked up on ``conn``; a correction is reported as a ``sql-fixed`` warning."""
    if info.kind not in ("sqlite", "duckdb") or not hasattr(conn, "execute"):
        return sql, []
    try:
        tree = sqlglot.parse_one(sql, read=info.dialect)
    except (SqlglotError, RecursionError):  # the base class: TokenError too
        return sql, []
    look = _Lookup(conn, info, budget_s)
    fixes: dict[str, str] = {}
    issues: list[Issue] = []
    for f in filters(tree, info):
        if f.value in fixes or look.has(f.table, f.column, f.value) is not False:
            continue
        same = look.spellings(f.table, f.column, f.value)
        if same and len(same) == 1 and same[0].strip() == f.value.strip():
            issues.append(Issue("sql-value", f"{f.table}.{f.column} stores {same[0]!r} with "
                                f"surrounding spaces, so = {f.value!r} matches no row; "
                                f"TRIM({f.column}) = {f.value.strip()!r} would",
                                severity="warning"))
            continue
        if same and len(same) == 1:
            fixes[f.value] = same[0]
            issues.append(Issue("sql-fixed", f"value spelled as stored: {f.table}.{f.column} "
                                f"{f.value!r} -> {same[0]!r}", severity="warning"))
            continue
        moved = _move_to_holder(tree, info, look, f)
        if moved:
            issues.append(Issue("sql-fixed", moved, severity="warning"))
            continue
        elsewhere = _elsewhere(look, f)
        if elsewhere:
            issues.append(Issue(
                "sql-value", f"no row of {f.table}.{f.column} is {f.value!r}; that value is in "
                f"{', '.join(elsewhere)}: filter on that column (join its table if needed)"))
    if not fixes and not any(i.kind == "sql-fixed" for i in issues):
        return sql, issues

    def respell(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Literal) and node.is_string and node.this in fixes:
            return exp.Literal.string(fixes[node.this])
        return node

    return tree.transform(respell).sql(dialect=info.dialect, pretty=True), issues


def _move_to_holder(tree: exp.Expression, info: ConnectionInfo, look: _Lookup, f: Filter
                    ) -> str | None:
    """``T1.Name = 'Kabul'`` on ``country``, where of the query's own tables only ``city.Name``
    holds 'Kabul': the comparison is moved to that column (``T2.Name = 'Kabul'``), in ``tree``
    itself, and the change described. Only for ``=``/``<>`` and one holding column among the
    tables of the comparison's own SELECT, each read once; else None."""
    try:
        scopes = list(traverse_scope(tree))
    except SqlglotError:  # a query sqlglot cannot scope keeps its error message instead
        return None
    for scope in scopes:
        sources = {a.lower(): (a, s.name) for a, s in scope.sources.items()
                   if isinstance(s, exp.Table) and s.name}
        names = [t.lower() for _, t in sources.values()]
        for column in scope.columns:
            parent = column.parent
            if column.find_ancestor(exp.Select) is not scope.expression or \
                    not isinstance(parent, (exp.EQ, exp.NEQ)) or \
                    f.value not in _compared_texts(column) or \
                    column.name.lower() != f.column.lower():
                continue
            owner = sources.get(column.table.lower()) if column.table else None
            if owner is None and not column.table:
                found = [o for o in sources.values() if _has_column(info, o[1], f.column)]
                owner = found[0] if len(found) == 1 else None
            if owner is None or owner[1].lower() != f.table.lower():
                continue
            holders = []
            for alias, table in sources.values():
                real = next((t for t in info.tables if t.lower() == table.lower()), table)
                for col, typ in info.tables.get(real, {}).items():
                    if (real.lower(), col.lower()) == (f.table.lower(), f.column.lower()) or \
                            not _is_text(typ):
                        continue
                    stored = look.spellings(real, col, f.value)
                    if stored is None:
                        return None  # out of time: say nothing rather than half a fix
                    if stored:
                        holders.append((alias, real, col, stored))
            # a holder that has it only with stray spaces is left to the user, as above
            if len(holders) != 1 or len(holders[0][3]) != 1 or \
                    names.count(holders[0][1].lower()) != 1 or \
                    holders[0][3][0] != holders[0][3][0].strip():
                return None
            alias, real, col, stored = holders[0]
            before = column.sql()
            column.set("this", exp.to_identifier(col))
            if column.table or real.lower() != f.table.lower():
                column.set("table", exp.to_identifier(alias))
            literal = parent.expression if parent.this is column else parent.this
            literal.replace(exp.Literal.string(stored[0]))
            return (f"no row of {f.table}.{f.column} is {f.value!r}; compared "
                    f"{real}.{col} instead, which holds it: {before} -> {column.sql()}")
    return None


def _has_column(info: ConnectionInfo, table: str, column: str) -> bool:
    cols = next((c for t, c in info.tables.items() if t.lower() == table.lower()), {})
    return any(c.lower() == column.lower() for c in cols)


def _elsewhere(look: _Lookup, f: Filter, most: int = 3) -> list[str]:
    """Other text columns holding ``f.value`` exactly (case and spaces ignored)."""
    hits = []
    for table, cols in look.info.tables.items():
        for column, typ in cols.items():
            if (table, column) == (f.table, f.column) or not _is_text(typ):
                continue
            if look.spellings(table, column, f.value):
                hits.append(f"{table}.{column}")
                if len(hits) >= most:
                    return hits
    return hits


def _is_text(declared: str | None) -> bool:
    """Text columns, and SQLite's untyped ones (which hold whatever was put in)."""
    low = (declared or "").lower()
    return not low or any(t in low for t in _TEXT_TYPES)
