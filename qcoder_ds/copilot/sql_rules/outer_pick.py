"""Check: ``x IN (SELECT y FROM t)`` where ``t`` has no ``y``, so SQL reads the outer row's."""

from __future__ import annotations

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, State, logic_check
from qcoder_ds.copilot.sql_rules.engine import resolves
from qcoder_ds.copilot.sql_rules.tree import compared_subqueries


def outer_pick(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when ``x IN (SELECT y FROM t)`` (or ``x = (SELECT y ...)``) picks a ``y`` that
    ``t`` does not have: SQL then reads ``y`` from the outer query's row, so the subquery
    returns that row's own value and the test holds for every row (or, with NOT, none). The
    schema check passes it, since ``y`` is a column of the outer query."""
    info = ctx.info
    cols = ctx.columns()
    for _, inner in compared_subqueries(tree):
        picked = inner.expressions[0]
        table = inner.args["from_"].this if inner.args.get("from_") else None
        if not isinstance(table, exp.Table) or table.name.lower() not in cols or \
                picked.name.lower() in cols[table.name.lower()] or \
                (picked.table and picked.table.lower() != table.alias_or_name.lower()):
            continue
        real = next(t for t in info.tables if t.lower() == table.name.lower())
        return tree, [Fix(SqlKind.OUTER_PICK, (
            f"the subquery SELECT {picked.sql()} FROM {table.name} picks a "
            f"column {real} does not have, so SQL takes {picked.name} from the outer "
            f"row and the comparison holds for every row; {real}'s columns are "
            f"{sorted(info.tables[real])}"))]
    return tree, []


def _first_error(state: State, ctx: SqlContext) -> bool:
    """One mistake that runs is enough for the repair: not after a contradiction."""
    return resolves(state, ctx) and SqlKind.CONTRADICTION not in state.fired


RULE = logic_check(SqlKind.OUTER_PICK, outer_pick, _first_error)
