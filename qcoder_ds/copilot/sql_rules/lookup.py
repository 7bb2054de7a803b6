"""The text values a query compares, and read-only lookups of them on the live database."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope

from qcoder_ds.copilot.context import ConnectionInfo

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
            for value in compared_texts(column):
                found.append(Filter(table, real, value))
    return list(dict.fromkeys(found))


def compared_texts(column: exp.Column) -> list[str]:
    """The text literals ``column`` is compared with by ``=``, ``<>`` or ``IN``."""
    parent = column.parent
    if isinstance(parent, (exp.EQ, exp.NEQ)):
        other = parent.expression if parent.this is column else parent.this
        if isinstance(other, exp.Literal) and other.is_string:
            return [other.this]
    if isinstance(parent, exp.In) and parent.this is column:
        return [e.this for e in parent.expressions
                if isinstance(e, exp.Literal) and e.is_string]
    return []


def is_text(declared: str | None) -> bool:
    """Text columns, and SQLite's untyped ones (which hold whatever was put in)."""
    low = (declared or "").lower()
    return not low or any(t in low for t in _TEXT_TYPES)


class Lookup:
    """Read-only lookups on a DB-API connection within a shared time budget; each spelling
    is looked up once per query."""

    def __init__(self, conn: Any, info: ConnectionInfo, budget_s: float):
        self.conn, self.info = conn, info
        self.deadline = time.monotonic() + budget_s
        self._spellings: dict[tuple[str, str, str], list[str] | None] = {}

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
        """Whether ``value`` is stored as written (None: not known, out of time)."""
        rows = self.rows(f"SELECT 1 FROM {self.quote(table)} WHERE {self.quote(column)} = ? "
                         "LIMIT 1", (value,))
        return None if rows is None else bool(rows)

    def spellings(self, table: str, column: str, value: str) -> list[str] | None:
        """Up to 3 stored values equal to ``value`` once case and surrounding spaces are
        ignored (None: not known)."""
        key = (table, column, value.strip().lower())
        if key not in self._spellings:
            col = self.quote(column)
            rows = self.rows(f"SELECT DISTINCT CAST({col} AS TEXT) FROM {self.quote(table)} "
                             f"WHERE lower(trim(CAST({col} AS TEXT))) = ? LIMIT 3", (key[2],))
            self._spellings[key] = None if rows is None else [r[0] for r in rows]
        return self._spellings[key]
