"""Check: "groups whose average X is over 72" written as a row filter (``WHERE X > 72``)."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import asked

_AGGREGATE_BOUND = re.compile(
    r"\b(?:average|mean|total|sum of|number of|count of)\s+(?:\w+\s+){0,3}?"
    r"(?:is\s+|are\s+|of\s+)?(?:greater|more|less|larger|smaller|higher|lower|longer|shorter|"
    r"above|below|over|under|at least|at most|bigger|fewer|exceed)", re.I)


def group_filter(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when the request bounds an aggregate of each group ("government forms with an
    average life expectancy greater than 72") and the grouped query bounds single rows in
    WHERE and has no HAVING: it keeps the rows over 72, not the groups whose average is."""
    found = _AGGREGATE_BOUND.search(ctx.request or "")
    if not found:
        return tree, []
    for select in tree.find_all(exp.Select):
        where = select.args.get("where")
        if select.args.get("group") and not select.args.get("having") and where is not None \
                and where.find(exp.GT, exp.GTE, exp.LT, exp.LTE) \
                and not where.find(exp.AggFunc, exp.Subquery):
            return tree, [Fix(SqlKind.GROUP_FILTER, found.group(0))]
    return tree, []


RULE = logic_check(SqlKind.GROUP_FILTER, group_filter, asked,
                   "the request bounds a value of each group ('{}'), but the query bounds "
                   "single rows in WHERE: compare the aggregate in HAVING (GROUP BY ... "
                   "HAVING AVG(column) > value)")
