"""Check: "both", "shared" or "in common" asked, and a query that tests one row at a time."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import asked
from qcoder_ds.copilot.sql_rules.tree import conjuncts

#: "both" as in "has both a dog and a cat", not "show both the name and the id"
_BOTH = re.compile(r"(?<!show )(?<!list )(?<!give )(?<!return )(?<!display )(?<!find )"
                   r"\bboth\b(?! the )|\bshared\b|\bin common\b", re.I)


def both_asked(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when the request asks for what has both of two things ("students who both
    have friends and are liked", "citizenships shared by singers born before 1945 and after
    1955") and the query can only test one row at a time: no INTERSECT, no GROUP BY ...
    HAVING, no two subqueries (IN, EXISTS or joined), no self-join on anything but a key.
    One row cannot be both; the model writes OR (either), or drops one of the two, and the
    query runs."""
    found = _BOTH.search(ctx.request or "")
    if not found or _can_pair(tree, ctx):
        return tree, []
    return tree, [Fix(SqlKind.BOTH_ASKED, found.group(0).strip().lower())]


def _can_pair(tree: exp.Expression, ctx: SqlContext) -> bool:
    """Whether the query has a form that can relate two rows."""
    if tree.find(exp.Intersect, exp.Having):
        return True
    if sum(1 for s in tree.find_all(exp.Select) if s is not tree) >= 2:
        return True  # two subqueries (IN, EXISTS or joined), one for each part
    keys = {(rt.lower(), rc.lower()) for _, _, rt, rc in ctx.info.foreign_keys}
    for select in tree.find_all(exp.Select):
        tables = {t.alias_or_name.lower(): t.name.lower() for t in select.find_all(exp.Table)}
        for join in select.args.get("joins") or []:
            for on in conjuncts(join.args["on"]) if join.args.get("on") else []:
                if isinstance(on, exp.EQ) and _pairs(on, tables, keys):
                    return True
    return False


def _pairs(on: exp.EQ, tables: dict[str, str], keys: set[tuple[str, str]]) -> bool:
    """Whether ``on`` pairs two rows of one table that share a value (not its key)."""
    a, b = on.this, on.expression
    if not isinstance(a, exp.Column) or not isinstance(b, exp.Column):
        return False
    same = tables.get(a.table.lower()) is not None and a.table.lower() != b.table.lower() \
        and tables.get(a.table.lower()) == tables.get(b.table.lower())
    return same and (a.name.lower() != b.name.lower() or
                     (tables[a.table.lower()], a.name.lower()) not in keys)


RULE = logic_check(SqlKind.BOTH_ASKED, both_asked, asked,
                   "the request asks for what has both ('{}'), but the query tests one row "
                   "at a time, and no row is both. Write one query for each part and "
                   "INTERSECT them, or GROUP BY the thing asked about and keep the groups "
                   "that have both (HAVING COUNT(DISTINCT ...) = 2)")
