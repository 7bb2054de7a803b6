"""Check: an attribute read from the wrong table of a join (``Student.Age`` for a pet's age,
when the joined ``Pets`` has ``pet_age``)."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import asked
from qcoder_ds.copilot.sql_rules.words import mentioned
from qcoder_ds.copilot.words import words

#: words that many tables share as columns: a name or type is not "the same attribute"
_GENERIC = {"name", "title", "type", "description", "detail", "details", "other", "id",
            "code"}


def borrowed_column(tree: exp.Expression, ctx: SqlContext
                    ) -> tuple[exp.Expression, list[Fix]]:
    """An error when the query reads an attribute (``T3.Age``) from a joined table the request
    does not name (``Student``), while another table of the query has that attribute under
    its own name (``Pets.pet_age``: the attribute's word plus words of the table's name). "The
    youngest dog" ordered by the owner's age runs and is wrong. Keys and generic words (name,
    type, description) are left alone."""
    if not isinstance(tree, exp.Select) or not tree.args.get("joins"):
        return tree, []
    tables = {t.alias_or_name.lower(): t.name for t in tree.find_all(exp.Table)
              if t.find_ancestor(exp.Select) is tree}
    info = ctx.info
    keys = {c.lower() for fk in info.foreign_keys for c in (fk[1], fk[3])}
    request = words(ctx.request or "")
    for col in tree.find_all(exp.Column):
        owner = tables.get(col.table.lower()) if col.table else None
        name = col.name.lower()
        if owner is None or col.find_ancestor(exp.Select) is not tree or \
                col.find_ancestor(exp.Join) is not None or name in keys or \
                re.search(r"(?:id|code)$", name) or not words(col.name) - _GENERIC:
            continue
        others = [t for t in tables.values() if t.lower() != owner.lower()]
        if mentioned(owner, request, others):
            continue
        for other in others:
            own = next((cs for t, cs in info.tables.items() if t.lower() == other.lower()), {})
            for candidate in own:
                extra = words(candidate) - words(col.name)
                if candidate.lower() != name and words(col.name) < words(candidate) and \
                        extra <= words(other) and not extra & _GENERIC:
                    return tree, [Fix(SqlKind.BORROWED_COLUMN,
                                      f"{col.sql()} is {owner}'s {col.name}, but {other} has its "
                                      f"own ({other}.{candidate}), and the request does not "
                                      f"name {owner}")]
    return tree, []


RULE = logic_check(SqlKind.BORROWED_COLUMN, borrowed_column, asked,
                   "{}: read the attribute from the table the request is about")
