"""Rule: an aggregate selected only to rank by is dropped from the result."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.engine import asked

_SUPERLATIVE = re.compile(r"\b(?:the )?(?:most|greatest|largest|highest|biggest|fewest|least|"
                          r"smallest|lowest)(?: (?:number|amount|count))?(?: of)?\b", re.I)
_ASKS_AMOUNT = re.compile(r"\b(?:how many|how much|count|counts|number|numbers|amount|total|"
                          r"sum|average|mean|maximum|minimum|max|min)\b", re.I)


def ranking_column(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """``SELECT grade, COUNT(*) AS n ... ORDER BY n DESC LIMIT 1`` for "which grade has the most
    students?" becomes ``SELECT grade ... ORDER BY COUNT(*) DESC LIMIT 1``; the fix names the
    column dropped.

    The small model adds the aggregate it ranks by to the result although the question asks
    which, not how many. In Spider's gold queries that rank by an aggregate with LIMIT, the
    aggregate is selected in 4 of 70, each time the question asks for the number itself; so it
    is kept whenever the request asks for an amount other than as "the most/fewest (number of)"."""
    if not isinstance(tree, exp.Select) or not tree.args.get("limit") or \
            not tree.args.get("order") or len(tree.expressions) < 2 or \
            _ASKS_AMOUNT.search(_SUPERLATIVE.sub(" ", ctx.request or "")):
        return tree, []
    ranking = _ranking(tree)
    if len(ranking) != 1:
        return tree, []
    out = tree.copy()
    gone = out.expressions[ranking[0]]
    inner, alias = gone.unalias(), gone.alias
    for ordered in out.args["order"].expressions:
        key = ordered.this
        if alias and isinstance(key, exp.Column) and not key.table and \
                key.name.lower() == alias.lower():
            ordered.set("this", inner.copy())
    out.set("expressions", [e for i, e in enumerate(out.expressions) if i != ranking[0]])
    return out, [Fix(SqlKind.RANKING_COLUMN, gone.sql())]


def _ranking(tree: exp.Select) -> list[int]:
    """The positions of the selected aggregates that the query orders by."""
    keys = [o.this for o in tree.args["order"].expressions]
    ranking = []
    for i, column in enumerate(tree.expressions):
        inner, alias = column.unalias(), column.alias
        if isinstance(inner, exp.AggFunc) and any(
                k == inner or (alias and isinstance(k, exp.Column) and not k.table and
                               k.name.lower() == alias.lower()) for k in keys):
            ranking.append(i)
    return ranking


RULE = Rule(SqlKind.RANKING_COLUMN, ranking_column, asked,
            message="dropped {} from the result: it only ranks the rows, and the request "
                    "asks which, not how many")
