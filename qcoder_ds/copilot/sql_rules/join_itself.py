"""Check: a join condition that compares a column with itself (``ON T2.id = T2.id``)."""

from __future__ import annotations

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import resolves


def join_itself(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when a join is on a column compared with itself (``JOIN Courses AS T2 ON
    T2.course_id = T2.course_id``): the condition holds for every row, so every row of one
    table pairs with every row of the other and counts and lists come out multiplied. The
    ``join_keys`` rule replaces such a condition when one foreign key links the two tables;
    this reports the ones it could not (no direct link: the tables meet through a third)."""
    for join in tree.find_all(exp.Join):
        on = join.args.get("on")
        if isinstance(on, exp.EQ) and isinstance(on.this, exp.Column) and \
                isinstance(on.expression, exp.Column) and \
                on.this.sql().lower() == on.expression.sql().lower():
            return tree, [Fix(SqlKind.JOIN_ITSELF, f"ON {on.sql()}")]
    return tree, []


RULE = logic_check(SqlKind.JOIN_ITSELF, join_itself, resolves,
                   "{} compares a column with itself, so every row pairs with every row of "
                   "the other table. Join on the columns that link the two tables; where no "
                   "column of one refers to the other, join the table that links them too")
