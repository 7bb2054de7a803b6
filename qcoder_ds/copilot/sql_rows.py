"""Checks on the rows a query returned: a join that lists one row of the answer's table more
than once, and a NULL test that found nothing.

"Which regions speak Dutch or English?" answered with ``country JOIN countrylanguage``
lists a region once per matching language row: the same country row comes back twice. Only
the database can tell a row repeated by the join from two rows that hold equal values (two
paragraphs with the same text), so this check runs after the query: when the result has
duplicate rows, a probe counts the rows against the distinct source rows (``rowid``) of the
one table every selected column comes from. The probe runs in the sandbox, as the query did.

"Students who have no friends" answered ``SELECT student_id FROM Friend WHERE friend_id IS
NULL`` returns nothing: a student without friends has no row in ``Friend`` at all, not a row
with a NULL. A query with no rows whose filter tests a column of an inner (not outer) table
for NULL is sent back for NOT IN or a LEFT JOIN.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.validate import Issue, Kind


@dataclass(frozen=True)
class Probe:
    """The cell that counts (rows, distinct source rows), and the table it counts."""

    cell: str
    table: str


def probe(sql: str, info: ConnectionInfo) -> Probe | None:
    """The probe for ``sql``, or None when the check does not apply: not SQLite or DuckDB
    (``rowid``), no join, DISTINCT, GROUP BY, an aggregate, LIMIT, a set operation, or
    selected values that are not plain columns of one table."""
    if info.kind not in ("sqlite", "duckdb"):
        return None
    try:
        tree = sqlglot.parse_one(sql, read=info.dialect)
    except (SqlglotError, ValueError):
        return None
    if not isinstance(tree, exp.Select) or not tree.args.get("joins") or \
            tree.args.get("distinct") or tree.args.get("group") or tree.args.get("limit") or \
            any(s.find(exp.AggFunc) for s in tree.expressions):
        return None
    cols = [s.unalias() for s in tree.expressions]
    if not cols or not all(isinstance(c, exp.Column) and c.table and c.name != "*"
                           for c in cols):
        return None
    aliases = {c.table.lower() for c in cols}
    sources = {t.alias_or_name.lower(): t for t in tree.find_all(exp.Table)
               if t.find_ancestor(exp.Select) is tree}
    if len(aliases) != 1 or next(iter(aliases)) not in sources:
        return None
    alias = cols[0].table
    count = tree.copy()
    count.set("order", None)
    count.set("expressions", [
        exp.Count(this=exp.Star()),
        exp.Count(this=exp.Distinct(expressions=[exp.column("rowid", table=alias)]))])
    query = count.sql(dialect=info.dialect)
    cell = f"query = {query!r}\nresult = tuple({info.name}.execute(query).fetchone())"
    return Probe(cell, sources[alias.lower()].name)


def verdict_issue(probe: Probe, value: dict | None) -> Issue | None:
    """The error when the probe's result says the join repeats rows, else None."""
    try:
        rows, distinct = ast.literal_eval((value or {}).get("repr", ""))
        rows, distinct = int(rows), int(distinct)
    except (ValueError, SyntaxError, TypeError):
        return None  # the probe did not give two numbers: say nothing
    if rows <= distinct:
        return None
    return Issue(Kind.REPEATED_ROWS,
                 f"the join lists rows of {probe.table} more than once: {rows} rows come from "
                 f"{distinct} rows of it. Use SELECT DISTINCT, or test the joined table with "
                 "IN (SELECT ...) or EXISTS instead of joining it")


def null_test_issue(sql: str, info: ConnectionInfo, value: dict | None) -> Issue | None:
    """The error when the query returned no rows and its WHERE tests a column of a table it
    reads directly or through an inner join for NULL (``friend_id IS NULL``): a missing
    link is a missing row. A NULL test on an outer-joined table (the LEFT JOIN anti-join) or
    under NOT is left alone, and so is a query with rows."""
    shape = (value or {}).get("shape")
    if not shape or shape[0] != 0:
        return None
    try:
        tree = sqlglot.parse_one(sql, read=info.dialect)
    except (SqlglotError, ValueError):
        return None
    for select in tree.find_all(exp.Select):
        outer = {j.this.alias_or_name.lower() for j in select.args.get("joins") or []
                 if isinstance(j.this, exp.Table) and j.side}
        where = select.args.get("where")
        for test in where.find_all(exp.Is) if where is not None else ():
            col = test.this
            if isinstance(test.expression, exp.Null) and isinstance(col, exp.Column) and \
                    test.find_ancestor(exp.Not) is None and \
                    test.find_ancestor(exp.Select) is select and \
                    col.table.lower() not in outer and not (outer and not col.table):
                return Issue(Kind.SQL_LOGIC, f"the query returns no rows: {test.sql()} holds "
                             "for no row, because what is missing has no row at all rather "
                             "than a row with a NULL. Use NOT IN (SELECT key FROM that table), "
                             "or a LEFT JOIN and test the joined table's key for NULL")
    return None
