"""Rule: the unambiguous column and table slips, fixed from the schema scope by scope.

Most of the embedded model's failing queries name a real column through the wrong alias
(``T2.Hometown`` where ``Hometown`` belongs to ``teacher AS T1``), or take every column from a
table that has none of them while another table has all of them. Asked to repair, the 0.5B
model mostly repeats itself; the schema says which fix is right, so the fix is made here and
reported. Only an unambiguous fix is made: one owner among the query's own tables, one
table holding every column of a single-table query, or one table that a query table
references by a foreign key (joined by that key). Anything else is left to the model.

The four scope rules run in ``SCOPE_RULES`` order on each scope in turn, innermost first, and
are kept together only when the query then resolves: one slip fixed alone often leaves
another, and a half-fixed query is no better than the model's.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.scope import Scope, traverse_scope

from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.engine import unresolved
from qcoder_ds.copilot.sql_rules.join_referenced import join_referenced
from qcoder_ds.copilot.sql_rules.requalify import requalify
from qcoder_ds.copilot.sql_rules.respell import respell
from qcoder_ds.copilot.sql_rules.swap_table import swap_table

ScopeRule = Callable[[Scope, SqlContext], list[Fix]]

SCOPE_RULES: tuple[ScopeRule, ...] = (respell, requalify, swap_table, join_referenced)


def schema_slips(tree: exp.Expression, ctx: SqlContext,
                 rules: tuple[ScopeRule, ...] = SCOPE_RULES) -> tuple[exp.Expression, list[Fix]]:
    """A copy of ``tree`` with the unambiguous column/table slips fixed, and what was changed
    (``[]`` when nothing was); a change made twice is reported once."""
    fixed = tree.copy()
    fixes: list[Fix] = []
    try:
        for scope in traverse_scope(fixed):
            for rule in rules:
                fixes += rule(scope, ctx)
    except SqlglotError:
        return tree, []
    once = list({f.change: f for f in fixes}.values())
    return (fixed, once) if fixes else (tree, [])


RULE = Rule(SqlKind.SCHEMA_SLIPS, schema_slips, unresolved,
            message="fixed from the schema: {}", settles=True)
