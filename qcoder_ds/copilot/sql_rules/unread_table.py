"""Check: the request names a table the query never reads ("how many documents use each
type", answered from ``Templates`` alone)."""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, SqlContext, SqlKind, logic_check
from qcoder_ds.copilot.sql_rules.engine import asked
from qcoder_ds.copilot.words import words


def _singular(word: str) -> str:
    if word.endswith("ies"):
        return word[:-3] + "y"
    if re.search(r"(?:s|x|ch|sh)es$", word):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def mentions(table: str) -> re.Pattern[str]:
    """The table's name as a request writes it: its words in order, the last one singular or
    plural (``poker_player``: "poker players"; ``Documents``: "document")."""
    parts = [p.lower() for p in re.split(r"[_\s]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", table))
             if p]
    if not parts:  # a name of underscores only: nothing a request can say
        return re.compile(r"(?!)")
    one = _singular(parts[-1])
    many = one[:-1] + "ies" if one.endswith("y") else one + ("es" if re.search(
        r"(?:s|x|ch|sh)$", one) else "s")
    last = "|".join(re.escape(f) for f in sorted({parts[-1], one, many}, key=len, reverse=True))
    head = "".join(re.escape(p) + r"[\s_]+" for p in parts[:-1])
    return re.compile(rf"\b{head}(?:{last})\b", re.I)


def unread_table(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error when the request names a table ("documents", "poker players") that the query
    never reads, although a foreign key links it to a table the query does read, and no
    table the query reads holds its key: "how many documents use each template type"
    counted from ``Templates`` alone counts templates, and "names of poker players" read from
    ``people`` alone lists every person. A mention that is the start of another table's name
    ("template type" for ``Ref_Template_Types``) is about that table."""
    info = ctx.info
    read = {t.name.lower() for t in tree.find_all(exp.Table)}
    for table in info.tables:
        if table.lower() in read:
            continue
        linked = holds_key = False
        for src, _, ref, _ in info.foreign_keys:
            if ref.lower() == table.lower() and src.lower() in read:
                holds_key = True  # e.g. countrylanguage.CountryCode for "countries"
            if {src.lower(), ref.lower()} & read and table.lower() in (src.lower(),
                                                                        ref.lower()):
                linked = True
        if holds_key or not linked:
            continue
        for m in mentions(table).finditer(ctx.request or ""):
            last = words(m.group(0).split()[-1])
            after = re.match(r"[\s_]+([A-Za-z]+)", (ctx.request or "")[m.end():])
            longer = after is not None and any(
                other != table and last & words(other) and words(after.group(1)) & words(other)
                for other in info.tables)
            if not longer:
                return tree, [Fix(SqlKind.UNREAD_TABLE, f"{m.group(0)} (table {table})")]
    return tree, []


RULE = logic_check(SqlKind.UNREAD_TABLE, unread_table, asked,
                   "the request is about {}, which the query never reads: join it through "
                   "its foreign key, and count or filter its rows")
