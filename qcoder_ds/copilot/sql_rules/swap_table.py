"""Scope rule: a one-table query reads the one table that has all its columns."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind


def swap_table(scope: Scope, ctx: SqlContext) -> list[Fix]:
    """A one-table query whose table lacks some of its columns, when exactly one other table
    has them all (``SELECT description FROM templates`` -> ``FROM ref_template_types``)."""
    cols = ctx.columns()
    tables = [s for s in scope.sources.values() if isinstance(s, exp.Table)]
    if len(scope.sources) != 1 or len(tables) != 1:
        return []
    table = tables[0]
    used = {c.name.lower() for c in scope.columns if c.name and c.name != "*"}
    if not used or used <= cols.get(table.name.lower(), set()):
        return []
    fits = [t for t in ctx.info.tables if used <= cols[t.lower()]]
    if len(fits) != 1:
        return []
    fix = Fix(SqlKind.SWAP_TABLE, f"FROM {table.name} -> FROM {fits[0]}")
    table.set("this", exp.to_identifier(fits[0]))
    return [fix]
