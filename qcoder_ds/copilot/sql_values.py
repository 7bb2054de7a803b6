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

The cases are the value rules of ``sql_rules.VALUE_RULES`` (``sql_rules/values.py``,
``sql_rules/value_holder.py``), tried in that order for each value. Only sqlite3 and DuckDB
connections are looked up; a server database is left alone. The
lookups share a time budget, so a large database costs at most that.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from qcoder_ds.copilot import sql_rules
from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.sql_rules.base import SqlContext
from qcoder_ds.copilot.sql_rules.engine import report
from qcoder_ds.copilot.sql_rules.lookup import Filter, Lookup, filters
from qcoder_ds.copilot.validate import Issue

__all__ = ["Filter", "check_values", "filters"]


def check_values(sql: str, info: ConnectionInfo, conn: Any, budget_s: float = 2.0,
                 request: str | None = None) -> tuple[str, list[Issue]]:
    """(``sql`` with misspelled values corrected, issues) for the text values ``sql`` filters
    on, looked up on ``conn``; a correction is reported as a ``sql-fixed`` warning. The
    ``request`` lets a value be respelled as the request names it."""
    if info.kind not in ("sqlite", "duckdb") or not hasattr(conn, "execute"):
        return sql, []
    try:
        tree = sqlglot.parse_one(sql, read=info.dialect)
    except (SqlglotError, RecursionError):  # the base class: TokenError too
        return sql, []
    ctx = SqlContext(info, request=request, conn=conn, lookup=Lookup(conn, info, budget_s))
    issues: list[Issue] = []
    for f in filters(tree, info):
        if f.value in ctx.respell:
            continue
        held = ctx.lookup.has(f.table, f.column, f.value)
        if held is False:
            tree, found = _first_rule(tree, replace(ctx, filter=f))
        elif held and request:  # stored, but perhaps not the value the request names
            tree, found = _apply(sql_rules.VALUE_IN_REQUEST, tree, replace(ctx, filter=f))
        else:
            continue
        issues += found
    if not ctx.respell and not any(i.kind == "sql-fixed" for i in issues):
        return sql, issues
    return _respelled(tree, ctx.respell).sql(dialect=info.dialect, pretty=True), issues


def _first_rule(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Issue]]:
    """The first value rule that fires for ``ctx.filter`` decides it."""
    for rule in sql_rules.VALUE_RULES:
        tree, found = _apply(rule, tree, ctx)
        if found:
            return tree, found
    return tree, []


def _apply(rule: Any, tree: exp.Expression, ctx: SqlContext
           ) -> tuple[exp.Expression, list[Issue]]:
    tree, fixes = rule.apply(tree, ctx)
    return tree, report(rule, fixes) if fixes else []


def _respelled(tree: exp.Expression, spellings: dict[str, str]) -> exp.Expression:
    """Every text literal of ``spellings`` spelled as stored."""
    def respell(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Literal) and node.is_string and node.this in spellings:
            return exp.Literal.string(spellings[node.this])
        return node

    return tree.transform(respell)
