"""Rule: SQLite reads ``"France"`` as a string when no column has that name; so do we."""

from __future__ import annotations

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind, State


def quoted_strings(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """``WHERE country = "UK"`` -> ``WHERE country = 'UK'`` when no column is named UK."""
    names = {c.lower() for cols in ctx.info.tables.values() for c in cols}
    read: list[Fix] = []

    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and not node.table:
            ident = node.this
            if isinstance(ident, exp.Identifier) and ident.quoted and \
                    ident.name.lower() not in names:
                read.append(Fix(SqlKind.QUOTED_STRINGS, f'"{ident.name}" -> {ident.name!r}'))
                return exp.Literal.string(ident.name)
        return node

    return tree.transform(fix), read


def _sqlite(state: State, ctx: SqlContext) -> bool:
    return ctx.info.dialect == "sqlite"


#: silent, as SQLite itself reads it; also for a query refused before the rules (a write)
RULE = Rule(SqlKind.QUOTED_STRINGS, quoted_strings, _sqlite, message=None, verify=False)
