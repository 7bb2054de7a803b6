"""Scope rule: a column of a table that a query table references is taken by joining it."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.tree import own_columns, spelled, table_sources


def _references(info: ConnectionInfo, sources: dict[str, str], froms: list[str], name: str,
                cols: dict[str, set[str]]) -> list[tuple[str, str, str, str]]:
    """(alias, referenced table, key, referenced key) for each foreign key from a table of
    ``froms`` to a table outside the query that has the column ``name``."""
    return [(a, rt, c, rc) for a in froms for t, c, rt, rc in info.foreign_keys
            if t.lower() == sources[a] and rt.lower() not in sources.values()
            and name in cols.get(rt.lower(), set())]


def _missing(scope: Scope, sources: dict[str, str], cols: dict[str, set[str]]
             ) -> list[exp.Column]:
    """The scope's own columns that none of its tables has."""
    return [c for c in own_columns(scope) if c.name and c.name != "*"
            and not any(c.name.lower() in cols.get(t, set()) for t in sources.values())]


def _link(column: exp.Column, ctx: SqlContext, sources: dict[str, str],
          cols: dict[str, set[str]]) -> tuple[str, str, str, str] | None:
    """The one foreign key whose referenced table has ``column``, or None."""
    name, qual = column.name.lower(), column.table.lower()
    if qual and qual not in sources:
        return None
    # a wrong qualifier (``T2.fname`` on pets, where has_pet references student) is a slip
    found = _references(ctx.info, sources, [qual], name, cols) if qual else []
    found = found or _references(ctx.info, sources, list(sources), name, cols)
    if len({(a, rt.lower()) for a, rt, _, _ in found}) != 1 or len(found) != 1:
        return None
    return found[0]


def _join(scope: Scope, link: tuple[str, str, str, str], alias: str, sources: dict[str, str],
          cols: dict[str, set[str]]) -> str:
    """Join the referenced table of ``link`` as ``alias``; the change, described."""
    a, rt, c, rc = link
    for other in own_columns(scope):  # the new table may share names: qualify them
        if not other.table and other.name and other.name != "*":
            owners = [s for s, t in sources.items() if other.name.lower() in cols[t]]
            if len(owners) == 1:
                other.set("table", exp.to_identifier(spelled(scope, owners[0])))
    here = spelled(scope, a)
    scope.expression.append("joins", exp.Join(
        this=exp.table_(rt, alias=alias),
        on=exp.EQ(this=exp.column(c, table=here), expression=exp.column(rc, table=alias))))
    return f"JOIN {rt} AS {alias} ON {here}.{c} = {alias}.{rc}"


def join_referenced(scope: Scope, ctx: SqlContext) -> list[Fix]:
    """A column that no table of the query has, but exactly one table that a query table
    references by a foreign key does (``SELECT AVG(Earnings) FROM poker_player WHERE Height >
    200``, where ``poker_player.People_ID`` references ``people``): that table is joined by
    the key. Only along a reference, many rows to one, so no row of the query is repeated."""
    select = scope.expression
    from_ = select.args.get("from_") if isinstance(select, exp.Select) else None
    if from_ is None or not isinstance(from_.this, exp.Table):
        return []
    cols = ctx.columns()
    sources = table_sources(scope)
    if not sources or len(sources) != len(scope.sources):
        return []
    added: dict[tuple[str, str], str] = {}  # (query alias, referenced table) -> new alias
    used = {a.lower() for a in scope.sources} | set(sources.values())
    fixes = []
    for column in _missing(scope, sources, cols):
        link = _link(column, ctx, sources, cols)
        if link is None:
            continue
        key = (link[0], link[1].lower())
        if key not in added:
            alias = next(f"T{i}" for i in range(1, 100) if f"t{i}" not in used)
            used.add(alias.lower())
            added[key] = alias
            joined = _join(scope, link, alias, sources, cols)
            fixes.append(Fix(SqlKind.JOIN_REFERENCED, f"{joined} (for {column.name})"))
        column.set("table", exp.to_identifier(added[key]))
    return fixes
