"""Check: "under 30" written as ``> 30`` (a comparison the other way from the request's)."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import asked

_NUMBER = r"\s+(?:(?:the\s+)?age(?:\s+of)?\s+)?(\d+(?:\.\d+)?)\b"
_BELOW = re.compile(r"(?<!not )\b(under|below|less than|fewer than|younger than|smaller than|"
                    r"lower than|before|earlier than|at most|shorter than|cheaper than)"
                    + _NUMBER, re.I)
_ABOVE = re.compile(r"(?<!not )\b(over|above|more than|greater than|older than|larger than|"
                    r"bigger than|higher than|after|later than|at least|exceeding|"
                    r"longer than)" + _NUMBER, re.I)


def comparison_words(tree: exp.Expression, ctx: SqlContext
                     ) -> tuple[exp.Expression, list[Fix]]:
    """An error when the request bounds a number one way ("employees under age 30", "born
    after 1955") and the query compares that same number the other way (``age > 30``). A
    number the request bounds both ways, a comparison under NOT or on the right of EXCEPT
    (where the sense flips), and "not more than" are left alone."""
    request = ctx.request or ""
    want: dict[float, dict[str, str]] = {}  # number -> side -> the request's phrase
    for pattern, side in ((_BELOW, "below"), (_ABOVE, "above")):
        for m in pattern.finditer(request):
            want.setdefault(float(m.group(2)), {})[side] = m.group(0)
    if not want:
        return tree, []
    for c in tree.find_all(exp.GT, exp.GTE, exp.LT, exp.LTE):
        col, lit, flip = c.this, c.expression, False
        if isinstance(col, exp.Literal):
            col, lit, flip = lit, col, True
        if not isinstance(lit, exp.Literal) or lit.is_string or _negated(c):
            continue
        try:
            sides = want.get(float(lit.name), {})
        except ValueError:
            continue
        side = "above" if isinstance(c, (exp.GT, exp.GTE)) != flip else "below"
        if len(sides) == 1 and side not in sides:
            said = next(iter(sides.values()))
            return tree, [Fix(SqlKind.COMPARISON_WORDS,
                              f"the request says '{said}', but the query tests {c.sql()}")]
    return tree, []


def _negated(node: exp.Expression) -> bool:
    """Whether a NOT, or the right side of an EXCEPT, flips the sense of ``node``."""
    child, parent = node, node.parent
    while parent is not None:
        if isinstance(parent, exp.Not) or \
                isinstance(parent, exp.Except) and parent.expression is child:
            return True
        child, parent = parent, parent.parent
    return False


RULE = logic_check(SqlKind.COMPARISON_WORDS, comparison_words, asked,
                   "{}: turn the comparison around")
