"""Small readings of a sqlglot tree that several rules share."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.scope import Scope, traverse_scope


def table_sources(scope: Scope) -> dict[str, str]:
    """alias (or name) -> real table name, lower case, for the tables this scope reads."""
    return {alias.lower(): src.name.lower() for alias, src in scope.sources.items()
            if isinstance(src, exp.Table) and src.name}


def own_columns(scope: Scope) -> list[exp.Column]:
    """The scope's columns without those of its subqueries (which sqlglot lists too, as
    possible outer references)."""
    return [c for c in scope.columns if c.find_ancestor(exp.Select) is scope.expression]


def spelled(scope: Scope, alias_lower: str) -> str:
    """The alias as the query spells it."""
    return next(a for a in scope.sources if a.lower() == alias_lower)


def scoped_copy(tree: exp.Expression) -> tuple[exp.Expression, list[Scope]]:
    """A copy of ``tree`` to edit and its scopes (none when sqlglot cannot scope it)."""
    fixed = tree.copy()
    try:
        return fixed, list(traverse_scope(fixed))
    except SqlglotError:
        return fixed, []


def conjuncts(cond: exp.Expression) -> list[exp.Expression]:
    """The parts of ``a AND b AND ...``."""
    cond = cond.unnest()
    if isinstance(cond, exp.And):
        return conjuncts(cond.this) + conjuncts(cond.expression)
    return [cond]


def links(fks: list[tuple[str, str, str, str]], a: str, b: str) -> list[tuple[str, str]]:
    """The (column of a, column of b) pairs that a foreign key between tables a and b (lower
    case) joins, spelled as the schema does."""
    out = [(c, rc) for t, c, rt, rc in fks if t.lower() == a and rt.lower() == b]
    out += [(rc, c) for t, c, rt, rc in fks if t.lower() == b and rt.lower() == a]
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for pair in out:
        seen.setdefault((pair[0].lower(), pair[1].lower()), pair)
    return list(seen.values())


def compared_subqueries(tree: exp.Expression) -> list[tuple[exp.Column, exp.Select]]:
    """(column, one-column one-table SELECT) for each ``column IN (SELECT ...)`` and
    ``column = / <> (SELECT ...)`` in ``tree``."""
    out = []
    for node in tree.find_all(exp.In, exp.EQ, exp.NEQ):
        if isinstance(node, exp.In):
            outer, query = node.this, node.args.get("query")
        else:
            outer, query = node.this, node.expression
            if isinstance(outer, exp.Subquery):
                outer, query = query, outer
        inner = query.this if isinstance(query, exp.Subquery) else query
        if isinstance(outer, exp.Column) and isinstance(inner, exp.Select) and \
                len(inner.expressions) == 1 and not inner.args.get("joins") and \
                isinstance(inner.expressions[0], exp.Column):
            out.append((outer, inner))
    return out
