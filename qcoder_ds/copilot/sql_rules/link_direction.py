"""Check: a self-link table read from the wrong side ("students who have friends" answered
from ``Friend.friend_id``)."""

from __future__ import annotations

import re
from collections import defaultdict

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import asked
from qcoder_ds.copilot.words import words

#: the request says who is on the other side ("liked by")
_PASSIVE = re.compile(r"\b\w+ed\s+by\b", re.I)


def sides(ctx: SqlContext) -> dict[str, tuple[str, str]]:
    """For each table that links a table to itself (``Friend(student_id, friend_id)``, both
    keys of ``Highschooler``): (the owner's column, the other side's column), the other
    side's column being the one named after the link (``friend_id`` in ``Friend``). A row
    reads "student_id has friend friend_id"."""
    keys: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for table, column, ref, _ in ctx.info.foreign_keys:
        keys[table].append((column, ref.lower()))
    out = {}
    for table, links in keys.items():
        if len(links) != 2 or links[0][1] != links[1][1]:
            continue
        named = [c for c, _ in links if words(c) & words(table)]
        owner = [c for c, _ in links if not words(c) & words(table)]
        if len(named) == 1 and len(owner) == 1:
            out[table] = (owner[0], named[0])
    return out


def link_direction(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when the request says who *has* the link ("students who have friends", "how
    many friends does Kyle have") and the query reads only the link's other side: in
    ``Friend(student_id, friend_id)`` a row says student_id has friend friend_id, so the
    students who have friends are its ``student_id``, and ``friend_id`` lists whom they
    have. A request about the other side ("liked by", "is a friend of") is left alone."""
    request = ctx.request or ""
    if _PASSIVE.search(request):
        return tree, []
    read = {t.name.lower() for t in tree.find_all(exp.Table)}
    used = {c.name.lower() for c in tree.find_all(exp.Column)}
    for table, (owner, other) in sides(ctx).items():
        if table.lower() not in read:
            continue
        noun = "|".join(re.escape(w) for w in sorted(words(table), key=len, reverse=True))
        if re.search(rf"\b(?:is|are)\s+(?:an?\s+|the\s+)?(?:{noun})\w*\s+of\b", request,
                     re.I):
            continue  # "is a friend of": the other side
        if not re.search(rf"\b(?:have|has|having)\b(?:\s+\w+){{0,4}}?\s+(?:{noun})\w*\b|"
                         rf"\b(?:{noun})\w*\b(?:\s+\w+){{0,6}}?\s+(?:have|has)\b",
                         request, re.I):
            continue
        if other.lower() in used and owner.lower() not in used:
            return tree, [Fix(SqlKind.LINK_DIRECTION,
                              f"{table}.{other}; a row of {table} says {owner} has {other}, "
                              f"so who has them is {table}.{owner}")]
    return tree, []


RULE = logic_check(SqlKind.LINK_DIRECTION, link_direction, asked,
                   "the request is about who has the link, but the query reads only {}: "
                   "match the request's subject on that column")
