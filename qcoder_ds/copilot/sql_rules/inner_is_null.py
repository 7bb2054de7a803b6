"""Check: ``JOIN t ... WHERE t.x IS NULL``, an inner join asked to find what is missing."""

from __future__ import annotations

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import resolves


def inner_is_null(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when a WHERE clause tests a column of an inner-joined table for NULL ("shops
    with no employees" as ``shop JOIN hiring ... WHERE hiring.Employee_ID IS NULL``): an inner
    join keeps only the rows that have a match, so what the test looks for is gone before it
    runs. The model means a LEFT JOIN, or ``NOT IN``."""
    for select in tree.find_all(exp.Select):
        inner = {j.this.alias_or_name.lower() for j in select.args.get("joins") or []
                 if isinstance(j.this, exp.Table) and not j.side}
        where = select.args.get("where")
        if not inner or where is None:
            continue
        for test in where.find_all(exp.Is):
            col = test.this
            if isinstance(test.expression, exp.Null) and isinstance(col, exp.Column) and \
                    col.table.lower() in inner and test.find_ancestor(exp.Not) is None and \
                    test.find_ancestor(exp.Select) is select:
                return tree, [Fix(SqlKind.INNER_IS_NULL, test.sql())]
    return tree, []


RULE = logic_check(SqlKind.INNER_IS_NULL, inner_is_null, resolves,
                   "{} tests a table joined with an inner join, which keeps only rows that "
                   "have a match, so nothing missing is left to find. Use NOT IN (SELECT key "
                   "FROM that table), or a LEFT JOIN")
