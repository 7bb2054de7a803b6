"""Check: the request's word for a yes/no column is not tested ("the official language",
answered without ``IsOfficial``)."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import asked

#: a yes/no column and the word it stands for: IsOfficial, is_active, HasPet
_FLAG = re.compile(r"^(?:is|has)_?([A-Za-z]{3,})$", re.I)


def flag_column(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when a table the query reads has a yes/no column (``IsOfficial``,
    ``is_active``) whose word the request uses ("official language", "active users") and
    the query never tests it: "the official language of the country whose head of state is
    Beatrix" answered with every language spoken there. A request that negates the word
    ("not official", "unofficial") is left alone: it may be answered either way."""
    request = ctx.request or ""
    read = {t.name.lower() for t in tree.find_all(exp.Table)}
    used = {c.name.lower() for c in tree.find_all(exp.Column)}
    for table, columns in ctx.info.tables.items():
        if table.lower() not in read:
            continue
        for column in columns:
            m = _FLAG.match(column)
            if not m or column.lower() in used:
                continue
            word = re.escape(m.group(1).lower())
            if re.search(rf"\b{word}\b", request, re.I) and not re.search(
                    rf"\bnot\s+(?:an?\s+|the\s+)?{word}\b|\bun{word}\b", request, re.I):
                return tree, [Fix(SqlKind.FLAG_COLUMN, f"what is {m.group(1).lower()}, but the "
                                  f"query never tests {table}.{column}")]
    return tree, []


RULE = logic_check(SqlKind.FLAG_COLUMN, flag_column, asked,
                   "the request asks for {}: add the condition on it (such a column holds "
                   "'T'/'F', 1/0 or the like: look at its values)")
