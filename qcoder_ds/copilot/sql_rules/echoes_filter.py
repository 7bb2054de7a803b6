"""Check: a query that returns only the values its own WHERE fixed (``SELECT name ... WHERE
name = 'Kyle'``)."""

from __future__ import annotations

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import resolves
from qcoder_ds.copilot.sql_rules.tree import conjuncts


def echoes_filter(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when every selected column is one the WHERE clause sets equal to a literal
    ("the names of Kyle's friends" answered ``SELECT T1.name ... WHERE T1.name = 'Kyle'``,
    "describe the section h" answered ``SELECT section_name ... WHERE section_name = 'h'``):
    the result can only repeat the request's own value back."""
    if not isinstance(tree, exp.Select) or tree.args.get("where") is None:
        return tree, []
    selected = [e.unalias() for e in tree.expressions]
    if not selected or not all(isinstance(c, exp.Column) and c.name != "*" for c in selected):
        return tree, []
    fixed = {c.this.sql().lower() for c in conjuncts(tree.args["where"].this)
             if isinstance(c, exp.EQ) and isinstance(c.this, exp.Column)
             and isinstance(c.expression, exp.Literal)}
    if all(c.sql().lower() in fixed for c in selected):
        return tree, [Fix(SqlKind.ECHOES_FILTER, ", ".join(c.sql() for c in selected))]
    return tree, []


RULE = logic_check(SqlKind.ECHOES_FILTER, echoes_filter, resolves,
                   "the query selects only {}, which its WHERE clause sets to the request's "
                   "own value, so it can only return that value. Select what the request asks "
                   "about (another column, or the rows of a joined table)")
