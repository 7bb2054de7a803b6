"""Scope rule: a real column through the wrong alias is taken from the table that has it."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.tree import table_sources


def requalify(scope: Scope, ctx: SqlContext) -> list[Fix]:
    """``A.x`` where A's table has no ``x`` but exactly one other table here does: use it
    (``T2.Hometown`` where ``Hometown`` belongs to ``teacher AS T1``)."""
    cols = ctx.columns()
    sources = table_sources(scope)
    fixes = []
    for column in scope.columns:
        qual = column.table.lower()
        name = column.name.lower()
        if not qual or not name or name == "*":
            continue
        table = sources.get(qual)
        if table is None and qual in cols and qual not in sources.values():
            table = qual  # qualified with a table that is not in FROM at all
        if table is None or name in cols.get(table, set()):
            continue
        owners = [a for a, t in sources.items() if name in cols.get(t, set())]
        if len(owners) == 1:
            alias = next(a for a in scope.sources if a.lower() == owners[0])
            fixes.append(Fix(SqlKind.REQUALIFY, f"{column.table}.{column.name} -> "
                                                f"{alias}.{column.name}"))
            column.set("table", exp.to_identifier(alias))
    return fixes
