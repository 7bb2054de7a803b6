"""Check: "the number of languages" answered with ``SUM(Percentage)`` (a sum of another
column where the request counts things)."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import asked
from qcoder_ds.copilot.words import words

#: what the request counts: "number of languages", "how many cities", "the most languages"
#: ("amount of" is left out: "the total amount of orders" is mostly a sum)
_COUNTS = re.compile(r"\b(?:number|count)\s+of\s+(?:different\s+|distinct\s+|"
                     r"unique\s+)?(\w+)|\bhow\s+many\s+(?:different\s+|distinct\s+|unique\s+)?"
                     r"(\w+)|\b(?:most|fewest|least)\s+(\w+)", re.I)
_NUMERIC = re.compile(r"INT|REAL|NUM|FLOAT|DOUBLE|DEC", re.I)


def sum_for_count(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when the request counts things it names ("the largest number of languages",
    "how many cities") that are a table or a text column, and the query counts nothing but
    sums another column (``SUM(Percentage)``): the total of a measure is not a count of
    the things. A sum of the counted thing itself ("the number of people" as
    ``SUM(Population)``: people is no table or text column here) is left alone."""
    sums = [s for s in tree.find_all(exp.Sum) if isinstance(s.this, exp.Column)]
    if not sums or any(True for _ in tree.find_all(exp.Count)):
        return tree, []
    info = ctx.info
    texts = [c for cols in info.tables.values() for c, typ in cols.items()
             if not _NUMERIC.search(typ or "")]
    for m in _COUNTS.finditer(ctx.request or ""):
        noun = words(next(g for g in m.groups() if g))
        things = [t for t in info.tables if words(t) & noun] + \
            [c for c in texts if words(c) & noun]
        if things and not any(words(s.this.name) & noun for s in sums):
            return tree, [Fix(SqlKind.SUM_FOR_COUNT,
                                  f"{sums[0].sql()} for '{m.group(0).strip()}'")]
    return tree, []


RULE = logic_check(SqlKind.SUM_FOR_COUNT, sum_for_count, asked,
                   "the query adds up {}: a sum of another column does not count the things "
                   "the request counts; count them (COUNT(*), or COUNT(DISTINCT ...))")
