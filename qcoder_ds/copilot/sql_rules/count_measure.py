"""Check: ``COUNT(Population)`` for "how many people" (a count of a quantity column)."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import resolves
from qcoder_ds.copilot.words import words

_NUMERIC = re.compile(r"INT|REAL|NUM|FLOAT|DOUBLE|DEC", re.I)
_KEYISH = re.compile(r"(?:id|code|no|number|num)$", re.I)


def count_measure(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when the query counts a numeric column that is a quantity, not a key
    (``COUNT(T1.Population)`` for "how many people live in Gelderland"): it counts the rows
    that have a value, while the request wants the values added up (SUM) or the rows counted
    (COUNT(*)). A key (in a foreign key, named like an id or code, or named after a table:
    ``flights.Airline``) is left alone, and so is COUNT(DISTINCT ...)."""
    info = ctx.info
    keys = {c.lower() for fk in info.foreign_keys for c in (fk[1], fk[3])}
    table_words = [words(t) for t in info.tables]
    sources = {t.alias_or_name.lower(): t.name.lower() for t in tree.find_all(exp.Table)}
    for count in tree.find_all(exp.Count):
        col = count.this
        if not isinstance(col, exp.Column) or col.name.lower() in keys or \
                _KEYISH.search(col.name) or any(words(col.name) & w for w in table_words):
            continue
        owners = [sources[col.table.lower()]] if col.table.lower() in sources else \
            list(sources.values())
        types = [typ for t, cols in info.tables.items() if t.lower() in owners
                 for c, typ in cols.items() if c.lower() == col.name.lower()]
        if types and all(_NUMERIC.search(t or "") for t in types):
            return tree, [Fix(SqlKind.COUNT_MEASURE, col.sql())]
    return tree, []


RULE = logic_check(SqlKind.COUNT_MEASURE, count_measure, resolves,
                   "COUNT({0}) counts the rows that have a {0}, not the amount: to add the "
                   "amounts up use SUM({0}); to count rows, COUNT(*)")
