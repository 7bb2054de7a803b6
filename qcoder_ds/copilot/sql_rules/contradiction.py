"""Check: a WHERE clause that can never hold (``Year = 2014 AND Year = 2015``)."""

from __future__ import annotations

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import resolves
from qcoder_ds.copilot.sql_rules.tree import conjuncts

Bound = tuple[float, bool]  # the tightest bound, and whether it is strict


def contradiction(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when a WHERE clause can never hold: one column equal to two different values
    (``Year = 2014 AND Year = 2015``), or a range that is empty (``Age > 40 AND Age < 30``).
    The small model writes this for "in both 2014 and 2015", which a row cannot be; the query
    runs and returns nothing, so the execution check alone would pass it."""
    for where in tree.find_all(exp.Where):
        found = _never(where)
        if found:
            return tree, [Fix(SqlKind.CONTRADICTION, found)]
    return tree, []


def _never(where: exp.Where) -> str | None:
    """The comparisons of one column in ``where`` that no row can meet together, or None."""
    equal: dict[str, set[str]] = {}
    low: dict[str, Bound] = {}
    high: dict[str, Bound] = {}
    shown: dict[str, list[str]] = {}
    for c in conjuncts(where.this):
        _collect(c, equal, low, high, shown)
    for key in shown:
        empty_range = key in low and key in high and (
            low[key][0] > high[key][0] or
            (low[key][0] == high[key][0] and (low[key][1] or high[key][1])))
        if len(equal.get(key, ())) > 1 or empty_range:
            return " AND ".join(shown[key])
    return None


def _collect(c: exp.Expression, equal: dict[str, set[str]], low: dict[str, Bound],
             high: dict[str, Bound], shown: dict[str, list[str]]) -> None:
    """Add one conjunct ``column <op> literal`` to the values and bounds seen so far."""
    if not isinstance(c, (exp.EQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
        return
    col, lit, flip = c.this, c.expression, False
    if isinstance(col, exp.Literal) and isinstance(lit, exp.Column):
        col, lit, flip = lit, col, True
    if not isinstance(col, exp.Column) or not isinstance(lit, exp.Literal):
        return
    key = col.sql().lower()
    shown.setdefault(key, []).append(c.sql())
    if isinstance(c, exp.EQ):
        equal.setdefault(key, set()).add(lit.name)
        return
    try:
        bound = (float(lit.name), isinstance(c, (exp.GT, exp.LT)))
    except ValueError:
        return
    if isinstance(c, (exp.GT, exp.GTE)) != flip:
        low[key] = max(low.get(key, bound), bound)
    else:
        high[key] = min(high.get(key, bound), bound, key=lambda b: (b[0], not b[1]))


RULE = logic_check(SqlKind.CONTRADICTION, contradiction, resolves,
                   "the WHERE clause can never be true: {} (a row holds one value). For rows "
                   "matching either, use OR or IN; for what has both, INTERSECT two queries")
