"""Check: "do not" answered with ``<>`` on a joined table of many rows per row asked about."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import resolves
from qcoder_ds.copilot.sql_rules.tree import conjuncts

_NEGATION = re.compile(r"\b(?:not|never|without|no|none|neither|nor)\b|n't\b", re.I)


def anti_join(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when a request says "do not" / "never" / "without" and the query tests it with
    ``<>`` (or ``!=``) on a column of a joined table that holds many rows per row of the
    table it selects from (``country JOIN countrylanguage ... WHERE Language <> 'English'``
    for "countries that do not speak English"): a country that speaks English and any other
    language still passes. A foreign key from the joined table to the selected one is what
    says "many rows per row", or a table of the query that references both (``Has_Pet``
    between ``Student`` and ``Pets``); without foreign keys the rule says nothing."""
    if not ctx.request or not _NEGATION.search(ctx.request) or not ctx.info.foreign_keys:
        return tree, []
    for select in tree.find_all(exp.Select):
        found = _many_side_negation(select, ctx)
        if found:
            return tree, [Fix(SqlKind.ANTI_JOIN, found)]
    return tree, []


def _many_side_negation(select: exp.Select, ctx: SqlContext) -> str | None:
    from_, joins, where = select.args.get("from_"), select.args.get("joins"), \
        select.args.get("where")
    if from_ is None or not joins or where is None or not isinstance(from_.this, exp.Table):
        return None
    tables = {t.alias_or_name.lower(): t.name.lower()
              for t in [from_.this] + [j.this for j in joins] if isinstance(t, exp.Table)}
    main = from_.this.name.lower()
    cols = ctx.columns()
    for c in conjuncts(where.this):
        if not isinstance(c, exp.NEQ):
            continue
        col, lit = c.this, c.expression
        if isinstance(col, exp.Literal):
            col, lit = lit, col
        if not isinstance(col, exp.Column) or not isinstance(lit, exp.Literal):
            continue
        owner = tables.get(col.table.lower()) if col.table else next(
            (t for t in tables.values() if col.name.lower() in cols.get(t, set())), None)
        if owner is None or owner == main:
            continue
        refs = {(t.lower(), rt.lower()) for t, _, rt, _ in ctx.info.foreign_keys}
        if (owner, main) in refs:
            return f"{c.sql()} (on {owner}, which holds many rows per {main} row)"
        link = next((t for t in tables.values() if (t, main) in refs and (t, owner) in refs),
                    None)
        if link is not None:  # Student -> Has_Pet -> Pets: many pets per student
            return (f"{c.sql()} (on {owner}, which holds many rows per {main} row through "
                    f"{link})")
    return None


RULE = logic_check(SqlKind.ANTI_JOIN, anti_join, resolves,
                   "the request says 'not', but {}: a row passes as soon as one of its joined "
                   "rows differs. Keep the rows that have none: WHERE key NOT IN (SELECT key "
                   "FROM that table WHERE column = value), or EXCEPT")
