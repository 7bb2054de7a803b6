"""Rule: a joined table that nothing uses and the request does not name is dropped."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.engine import asked
from qcoder_ds.copilot.sql_rules.words import column_named, mentioned
from qcoder_ds.copilot.words import words


def unused_joins(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """A copy of ``tree`` without the joined tables that nothing but their own join condition
    uses and that the request does not mention, and the tables dropped.

    The small model joins a neighbouring table "to be safe" (``visitor JOIN visit`` for a
    filter on visitors); the join repeats or loses rows and the answer is wrong while it runs.
    A table the request names is kept: there the join is the point ("players who have won").
    In a query that groups or aggregates, the join decides what is counted, so a table is
    also kept when the request names one of its own columns ("the most frequent destination
    airport" counts ``flights`` by ``DestAirport``); otherwise it only repeats the rows that
    are counted ("the number of teachers from each hometown" over ``teacher JOIN
    course_arrange``)."""
    request = words(ctx.request or "")
    info = ctx.info
    try:
        qualified = qualify(tree.copy(), schema=info.schema(), dialect=info.dialect,
                            validate_qualify_columns=False, quote_identifiers=False)
        plain = tree.copy()
        pairs = list(zip(traverse_scope(qualified), traverse_scope(plain), strict=True))
    except (SqlglotError, ValueError):
        return tree, []
    dropped: list[str] = []
    for q_scope, p_scope in pairs:
        if not _has_joins(q_scope, p_scope):
            continue
        counts_in = info if _aggregates(q_scope.expression) else None
        names = [t.name for t in q_scope.expression.find_all(exp.Table)]
        dropped += _drop_joined(q_scope, p_scope, request, names, counts_in)
        first = _drop_from_table(q_scope.expression, p_scope.expression, request, names,
                                 counts_in)
        if first:
            dropped.append(first)
    fixes = [Fix(SqlKind.UNUSED_JOINS, name) for name in dropped]
    return (plain, fixes) if fixes else (tree, [])


def _kept(table: exp.Expression, join: exp.Join, request: set[str], names: list[str],
          counts_in: ConnectionInfo | None) -> bool:
    """Whether the join of ``table`` stays whatever its use: not a table, USING, or named."""
    others = [n for n in names if n != table.name]
    return not isinstance(table, exp.Table) or bool(join.args.get("using")) or \
        mentioned(table.name, request, others) or \
        counts_in is not None and column_named(table.name, request, others, counts_in)


def _has_joins(q_scope: Scope, p_scope: Scope) -> bool:
    """Whether the scope joins tables and selects named columns (``SELECT *`` reads every
    table), and its qualified copy still pairs join for join with the plain one."""
    q_joins = q_scope.expression.args.get("joins") or []
    p_joins = p_scope.expression.args.get("joins") or []
    return len(q_joins) == len(p_joins) and bool(q_joins) and \
        not any(isinstance(s, exp.Star) for s in q_scope.expression.expressions)


def _drop_joined(q_scope: Scope, p_scope: Scope, request: set[str], names: list[str],
                 counts_in: ConnectionInfo | None) -> list[str]:
    """Drop from ``p_scope`` the joined tables that only their own ON uses (read from the
    qualified ``q_scope``); the tables dropped, last join first."""
    q_joins = q_scope.expression.args.get("joins") or []
    p_joins = p_scope.expression.args.get("joins") or []
    dropped = []
    for q_join, p_join in reversed(list(zip(q_joins, p_joins, strict=True))):
        table = q_join.this
        if _kept(table, q_join, request, names, counts_in):
            continue
        alias = table.alias_or_name
        on = q_join.args.get("on")
        in_on = {id(c) for c in on.find_all(exp.Column)} if on else set()
        used = [c for c in q_scope.columns if c.table == alias and id(c) not in in_on]
        if used or on is None or not any(c.table == alias for c in on.find_all(exp.Column)):
            continue
        p_join.pop()
        dropped.append(table.name)
    return dropped


def _aggregates(select: exp.Expression) -> bool:
    """Whether ``select`` groups or aggregates its own rows: then a join decides what is
    counted ("the most frequent destination airport" counts flights), and stays."""
    if select.args.get("group") or select.args.get("having"):
        return True
    return any(agg.find_ancestor(exp.Select) is select for agg in select.find_all(exp.AggFunc))


def _drop_from_table(q_select: exp.Expression, p_select: exp.Expression, request: set[str],
                     names: list[str], counts_in: ConnectionInfo | None = None) -> str | None:
    """``FROM a JOIN b ON a.x = b.y`` where nothing but that ON uses ``a`` and the request
    does not name it becomes ``FROM b``; returns the table dropped. Only for an inner join:
    the FROM table of an outer join decides which rows there are. ``counts_in``: the query
    aggregates, so ``a`` is also kept when the request names a column of its own."""
    q_from, p_from = q_select.args.get("from_"), p_select.args.get("from_")
    q_joins = q_select.args.get("joins") or []
    p_joins = p_select.args.get("joins") or []
    if q_from is None or p_from is None or not q_joins or len(q_joins) != len(p_joins):
        return None
    table, join = q_from.this, q_joins[0]
    on = join.args.get("on")
    if on is None or not isinstance(join.this, exp.Table) or join.side or \
            join.kind.upper() not in ("", "INNER") or \
            _kept(table, join, request, names, counts_in):
        return None
    alias = table.alias_or_name
    in_on = {id(c) for c in on.find_all(exp.Column)}
    uses = [c for c in q_select.find_all(exp.Column) if c.table == alias]
    if not uses or any(id(c) not in in_on for c in uses):
        return None
    name = p_from.this.name
    p_from.set("this", p_joins[0].this.pop())
    p_joins[0].pop()
    return name


RULE = Rule(SqlKind.UNUSED_JOINS, unused_joins, asked, join=", ",
            message="dropped joined table(s) that nothing uses and the request does not "
                    "mention: {}")
