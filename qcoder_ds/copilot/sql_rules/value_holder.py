"""Value rule: a value held by one other column of the query's tables is compared there."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.scope import Scope, traverse_scope

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind, always
from qcoder_ds.copilot.sql_rules.lookup import Filter, compared_texts, is_text

Source = tuple[str, str]  # (alias as spelled, table)
Holder = tuple[str, str, str, list[str]]  # (alias, table, column, stored spellings)


def value_holder(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """``T1.Name = 'Kabul'`` on ``country``, where of the query's own tables only ``city.Name``
    holds 'Kabul': the comparison is moved to that column (``T2.Name = 'Kabul'``), in ``tree``
    itself, and the change described. Only for ``=``/``<>`` and one holding column among the
    tables of the comparison's own SELECT, each read once."""
    try:
        scopes = list(traverse_scope(tree))
    except SqlglotError:  # a query sqlglot cannot scope keeps its error message instead
        return tree, []
    for scope in scopes:
        sources = {a.lower(): (a, s.name) for a, s in scope.sources.items()
                   if isinstance(s, exp.Table) and s.name}
        for column in scope.columns:
            if _compares(column, scope, ctx.filter) and \
                    _owner(column, sources, ctx) is not None:
                moved = _move(column, sources, ctx)
                return tree, [Fix(SqlKind.VALUE_HOLDER, moved)] if moved else []
    return tree, []


def _compares(column: exp.Column, scope: Scope, f: Filter) -> bool:
    """Whether ``column`` is the filter's column, compared by ``=``/``<>`` in ``scope``."""
    return column.find_ancestor(exp.Select) is scope.expression and \
        isinstance(column.parent, (exp.EQ, exp.NEQ)) and \
        f.value in compared_texts(column) and column.name.lower() == f.column.lower()


def _owner(column: exp.Column, sources: dict[str, Source], ctx: SqlContext) -> Source | None:
    """The source ``column`` is read from, when it is the filter's table."""
    f = ctx.filter
    owner = sources.get(column.table.lower()) if column.table else None
    if owner is None and not column.table:
        found = [o for o in sources.values() if _has_column(ctx.info, o[1], f.column)]
        owner = found[0] if len(found) == 1 else None
    return owner if owner is not None and owner[1].lower() == f.table.lower() else None


def _holders(sources: dict[str, Source], ctx: SqlContext) -> list[Holder] | None:
    """The other text columns of the scope's tables that hold the value (None: out of time:
    say nothing rather than half a fix)."""
    f, info = ctx.filter, ctx.info
    holders = []
    for alias, table in sources.values():
        real = next((t for t in info.tables if t.lower() == table.lower()), table)
        for col, typ in info.tables.get(real, {}).items():
            if (real.lower(), col.lower()) == (f.table.lower(), f.column.lower()) or \
                    not is_text(typ):
                continue
            stored = ctx.lookup.spellings(real, col, f.value)
            if stored is None:
                return None
            if stored:
                holders.append((alias, real, col, stored))
    return holders


def _move(column: exp.Column, sources: dict[str, Source], ctx: SqlContext) -> str | None:
    """Compare the one holder instead of ``column``; the change, described."""
    f = ctx.filter
    holders = _holders(sources, ctx)
    names = [t.lower() for _, t in sources.values()]
    # a holder that has it only with stray spaces is left to the user, as above
    if holders is None or len(holders) != 1 or len(holders[0][3]) != 1 or \
            names.count(holders[0][1].lower()) != 1 or \
            holders[0][3][0] != holders[0][3][0].strip():
        return None
    alias, real, col, stored = holders[0]
    before = column.sql()
    parent = column.parent
    column.set("this", exp.to_identifier(col))
    if column.table or real.lower() != f.table.lower():
        column.set("table", exp.to_identifier(alias))
    literal = parent.expression if parent.this is column else parent.this
    literal.replace(exp.Literal.string(stored[0]))
    return (f"no row of {f.table}.{f.column} is {f.value!r}; compared "
            f"{real}.{col} instead, which holds it: {before} -> {column.sql()}")


def _has_column(info: ConnectionInfo, table: str, column: str) -> bool:
    cols = next((c for t, c in info.tables.items() if t.lower() == table.lower()), {})
    return any(c.lower() == column.lower() for c in cols)


RULE = Rule(SqlKind.VALUE_HOLDER, value_holder, always, verify=False)
