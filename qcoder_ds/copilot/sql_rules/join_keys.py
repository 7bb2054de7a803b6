"""Rule: a join condition that cannot be meant is replaced by the foreign key."""

from __future__ import annotations

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.engine import resolves
from qcoder_ds.copilot.sql_rules.tree import links, scoped_copy, table_sources

FKs = list[tuple[str, str, str, str]]


def join_keys(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """A copy of ``tree`` whose join conditions that cannot be meant are replaced by the
    foreign key between the two tables, and what was changed (``[]`` when nothing was).

    Three slips of the small model, each running without error and returning wrong rows:
    a condition that compares a column with itself (``JOIN stadium AS T3 ON T2.Singer_ID =
    T2.Singer_ID``: every row pairs with every stadium); one on two other tables, which
    leaves the joined one unlinked (the foreign key is added to it); and keys of different
    names that no foreign key links while one does
    (``Documents.Document_ID = Templates.Template_ID`` where ``Documents.Template_ID``
    references ``Templates``). Only when exactly one foreign key links the tables; a join on
    columns of the same name is left alone, since shared keys are often not declared."""
    fks = ctx.info.foreign_keys
    if not fks:
        return tree, []
    fixed, scopes = scoped_copy(tree)
    fixes: list[Fix] = []
    for scope in scopes:
        select = scope.expression
        from_ = select.args.get("from_")
        joins = select.args.get("joins") or []
        if from_ is None or not isinstance(from_.this, exp.Table) or not joins:
            continue
        sources = table_sources(scope)
        seen = [from_.this.alias_or_name]
        for join in joins:
            table, on = join.this, join.args.get("on")
            if not isinstance(table, exp.Table):
                break
            alias = table.alias_or_name
            note = _fix_one_join(on, alias, seen, sources, fks) if isinstance(on, exp.EQ) \
                else None
            if note:
                fixes.append(Fix(SqlKind.JOIN_KEYS, note))
            seen.append(alias)
    return (fixed, fixes) if fixes else (tree, [])


def _candidates(on: exp.EQ, joined: str, earlier: list[str], sources: dict[str, str],
                fks: FKs) -> list[str] | None:
    """The earlier aliases whose foreign key to the ``joined`` alias may replace ``on``; None
    when ``on`` is to be left alone."""
    left, right = on.this, on.expression
    quals = {left.table.lower(), right.table.lower()}
    one_table = len(quals) == 1
    if one_table or joined not in quals:  # one table's own columns, or never the joined table
        return [a for a in earlier if a.lower() != joined]
    other = (quals - {joined}).pop()
    this_col, other_col = (left, right) if left.table.lower() == joined else (right, left)
    linked = {(m.lower(), t.lower()) for m, t in links(fks, sources[joined], sources[other])}
    if this_col.name.lower() == other_col.name.lower() or \
            (this_col.name.lower(), other_col.name.lower()) in linked:
        return None
    return [a for a in earlier if a.lower() == other]


def _fix_one_join(on: exp.EQ, alias: str, earlier: list[str], sources: dict[str, str],
                  fks: FKs) -> str | None:
    left, right = on.this, on.expression
    if not isinstance(left, exp.Column) or not isinstance(right, exp.Column) or \
            not left.table or not right.table:
        return None
    quals = {left.table.lower(), right.table.lower()}
    if not quals <= set(sources):
        return None
    joined = alias.lower()
    others = _candidates(on, joined, earlier, sources, fks)
    if others is None:
        return None
    found = [(a, pair) for a in others for pair in links(fks, sources[joined], sources[a.lower()])]
    tables = [sources[a.lower()] for a in others]
    if len(found) != 1 or tables.count(sources[found[0][0].lower()]) != 1:
        return None
    other_alias, (mine, theirs) = found[0]
    key = exp.EQ(this=exp.column(mine, table=alias),
                 expression=exp.column(theirs, table=other_alias))
    one_table = len(quals) == 1
    itself = one_table and left.name.lower() == right.name.lower()
    # a condition on two other tables is kept: only the joined table's link is missing
    new = key if itself or joined in quals and not one_table else exp.and_(on.copy(), key)
    before = on.sql()
    on.replace(new)
    return f"ON {before} -> ON {new.sql()}"


RULE = Rule(SqlKind.JOIN_KEYS, join_keys, resolves,
            message="matched keys by the foreign key: {}")
