"""Check: a key compared with a number the request never gives (``liked_id = 1510`` for
"Kyle")."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import asked


def unnamed_key(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when the query compares a key (a foreign-key column, or one named ``...id``)
    with a number that is nowhere in the request ("how many likes does Kyle have?" answered
    ``WHERE liked_id = 1510``): the model copied an id from the sample rows, and the query
    answers for that row, whatever the data holds tomorrow. The request's own name or value
    belongs in the query, through a join to the table that holds it."""
    keys = {c.lower() for fk in ctx.info.foreign_keys for c in (fk[1], fk[3])}
    given = set(re.findall(r"\d+(?:\.\d+)?", ctx.request or ""))
    for eq in tree.find_all(exp.EQ):
        col, lit = eq.this, eq.expression
        if isinstance(col, exp.Literal):
            col, lit = lit, col
        if isinstance(col, exp.Column) and isinstance(lit, exp.Literal) and \
                not lit.is_string and lit.name not in given and \
                (col.name.lower() in keys or col.name.lower().endswith("id")):
            return tree, [Fix(SqlKind.UNNAMED_KEY, eq.sql())]
    return tree, []


RULE = logic_check(SqlKind.UNNAMED_KEY, unnamed_key, asked,
                   "{} compares a key with a number the request does not give: filter on "
                   "what the request names (join the table that holds it), not on an id "
                   "copied from the data")
