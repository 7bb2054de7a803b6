"""Rule: ``x IN (SELECT y FROM t)`` compares ``x`` with the key of ``t`` that links to it."""

from __future__ import annotations

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.engine import resolves
from qcoder_ds.copilot.sql_rules.tree import compared_subqueries, links


def in_keys(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """A copy of ``tree`` whose ``x IN (SELECT y FROM t ...)`` (or ``x = (SELECT y ...)``)
    compares ``x`` with the column of ``t`` that a foreign key links to it, when ``y`` is
    another key that nothing links to ``x`` (``Stadium_ID NOT IN (SELECT concert_ID FROM
    concert ...)`` where ``concert.Stadium_ID`` references ``stadium``): ids of different
    things never match, so the query runs and is wrong. The same when ``t`` has no ``y`` at
    all (``CountryCode IN (SELECT CountryCode FROM country)``, where the key is ``Code``):
    SQL then reads ``y`` from the outer row, and the test holds for every row. Only when
    exactly one such foreign key exists; a same-named column of ``t`` is left alone."""
    if not ctx.info.foreign_keys:
        return tree, []
    fixed = tree.copy()
    fixes = [Fix(SqlKind.IN_KEYS, note) for outer, inner in compared_subqueries(fixed)
             if (note := _fix_one(outer, inner, ctx))]
    return (fixed, fixes) if fixes else (tree, [])


def _fix_one(outer: exp.Column, inner: exp.Select, ctx: SqlContext) -> str | None:
    fks, cols = ctx.info.foreign_keys, ctx.columns()
    picked = inner.expressions[0]
    from_ = inner.args.get("from_")
    select = outer.find_ancestor(exp.Select)
    if from_ is None or not isinstance(from_.this, exp.Table) or select is None:
        return None
    sub_table = from_.this.name.lower()
    owner = _owner(outer, select, cols)
    absent = picked.name.lower() not in cols.get(sub_table, set())
    if owner is None or (picked.name.lower() == outer.name.lower() and not absent):
        return None
    found = [(mine, theirs) for mine, theirs in links(fks, sub_table, owner)
             if theirs.lower() == outer.name.lower()]
    linked = {(m.lower(), t.lower()) for m, t in links(fks, sub_table, owner)}
    if len(found) != 1 or (picked.name.lower(), outer.name.lower()) in linked:
        return None
    before = picked.sql()
    picked.set("this", exp.to_identifier(found[0][0]))
    if picked.table and absent:
        picked.set("table", None)
    return f"(SELECT {before} ...) -> (SELECT {picked.sql()} ...)"


def _owner(column: exp.Column, select: exp.Select, cols: dict[str, set[str]]) -> str | None:
    """The table (lower case) of ``select``'s own FROM and JOINs that ``column`` belongs to."""
    tables = {}
    from_ = select.args.get("from_")
    for t in ([from_.this] if from_ is not None else []) + \
            [j.this for j in select.args.get("joins") or []]:
        if isinstance(t, exp.Table):
            tables[t.alias_or_name.lower()] = t.name.lower()
    if column.table:
        return tables.get(column.table.lower())
    owners = [t for t in tables.values() if column.name.lower() in cols.get(t, set())]
    return owners[0] if len(owners) == 1 else None


RULE = Rule(SqlKind.IN_KEYS, in_keys, resolves, message="matched keys by the foreign key: {}")
