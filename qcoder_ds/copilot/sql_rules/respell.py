"""Scope rule: a column spelled another way (``pet_type`` for ``PetType``) is that column."""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind
from qcoder_ds.copilot.sql_rules.tree import own_columns, spelled, table_sources


def _squash(name: str) -> str:
    return re.sub(r"[_\s]", "", name.lower())


def respell(scope: Scope, ctx: SqlContext) -> list[Fix]:
    """A column that no table here has but exactly one has under another spelling of the
    same letters (``pet_type`` for ``PetType``): that column is meant."""
    cols = ctx.columns()
    sources = table_sources(scope)
    spelling = {t.lower(): list(c) for t, c in ctx.info.tables.items()}
    fixes = []
    for column in own_columns(scope):
        name = column.name
        if not name or name == "*" or any(name.lower() in cols.get(t, set())
                                          for t in sources.values()):
            continue
        found = {(a, c) for a, t in sources.items() for c in spelling.get(t, [])
                 if _squash(c) == _squash(name)}
        if len(found) != 1:
            continue
        alias, real = found.pop()
        fixes.append(Fix(SqlKind.RESPELL, f"{name} -> {real}"))
        column.set("this", exp.to_identifier(real))
        if column.table:
            column.set("table", exp.to_identifier(spelled(scope, alias)))
    return fixes
