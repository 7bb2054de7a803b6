"""Rule: an inner join whose condition never mentions the joined table is dropped."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.engine import resolves
from qcoder_ds.copilot.sql_rules.tree import conjuncts, own_columns, scoped_copy


def unlinked_joins(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """A copy of ``tree`` without the inner-joined tables that their own join condition does
    not mention and nothing else uses, and the tables dropped (``teacher AS T1 JOIN course
    AS T2 ON T1.Teacher_ID = T1.Teacher_ID``): such a join pairs every row with every row of
    the table, which is never meant. Its condition stays, in the WHERE clause, unless it
    compares a column with itself."""
    fixed, scopes = scoped_copy(tree)
    fixes: list[Fix] = []
    for scope in scopes:
        if isinstance(scope.expression, exp.Select):
            fixes += _drop_unlinked(scope)
    return (fixed, fixes) if fixes else (tree, [])


def _drop_unlinked(scope: Scope) -> list[Fix]:
    select = scope.expression
    fixes = []
    for join in list(select.args.get("joins") or []):
        table, on = join.this, join.args.get("on")
        if not isinstance(table, exp.Table) or on is None or join.side or \
                join.args.get("using") or join.kind.upper() not in ("", "INNER"):
            continue
        alias = table.alias_or_name.lower()
        mentions = [c for c in scope.columns if c.table.lower() == alias]
        if mentions or any(c.table.lower() == alias for c in on.find_all(exp.Column)) or \
                not all(c.table for c in own_columns(scope)):
            continue
        kept = [c for c in conjuncts(on) if not _self_equal(c)]
        join.pop()
        fixes.append(Fix(SqlKind.UNLINKED_JOINS, table.name))
        if kept:
            select.where(exp.and_(*[c.copy() for c in kept]), copy=False)
    return fixes


def _self_equal(cond: exp.Expression) -> bool:
    return isinstance(cond, exp.EQ) and isinstance(cond.this, exp.Column) and \
        cond.this == cond.expression


RULE = Rule(SqlKind.UNLINKED_JOINS, unlinked_joins, resolves, join=", ",
            message="dropped joined table(s) that the join condition does not link, which "
                    "paired every row with every row: {}")
