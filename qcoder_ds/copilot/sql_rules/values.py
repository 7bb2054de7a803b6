"""Value rules: what to do with a compared text value the column does not hold as written.

Each reads ``ctx.filter`` (the comparison looked at) and ``ctx.lookup`` (the live database);
the first rule that fires for a filter decides it (``VALUE_RULES`` order).
"""

from __future__ import annotations

import re

from sqlglot import exp

from qcoder_ds.copilot.sql_rules.base import Fix, Rule, SqlContext, SqlKind, always
from qcoder_ds.copilot.sql_rules.lookup import Filter, Lookup, is_text
from qcoder_ds.copilot.validate import Kind


def _one_spelling(ctx: SqlContext) -> tuple[Filter, str] | None:
    """The filter and the one stored spelling of its value, case and spaces ignored."""
    f, look = ctx.filter, ctx.lookup
    same = look.spellings(f.table, f.column, f.value)
    return (f, same[0]) if same and len(same) == 1 else None


def stray_spaces(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """A value stored only with surrounding spaces the query lacks (``' ATO'``): reported with
    the ``TRIM`` that would match, the query unchanged. The stray spaces are a fault of the
    data the user should see, not a slip of the model, and the query as written is what they
    asked (Spider's gold answers, too, compare exactly)."""
    found = _one_spelling(ctx)
    if found is None or found[1].strip() != found[0].value.strip():
        return tree, []
    f, stored = found
    return tree, [Fix(SqlKind.STRAY_SPACES, (
        f"{f.table}.{f.column} stores {stored!r} with surrounding spaces, so = {f.value!r} "
        f"matches no row; TRIM({f.column}) = {f.value.strip()!r} would"))]


def value_spelling(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """``'north america'`` is respelled ``'North America'`` when that is the one stored
    spelling (case and surrounding spaces ignored). Every literal of that text is respelled
    once all filters are looked up (``ctx.respell``)."""
    found = _one_spelling(ctx)
    if found is None:
        return tree, []
    f, stored = found
    ctx.respell[f.value] = stored
    return tree, [Fix(SqlKind.VALUE_SPELLING, f"value spelled as stored: {f.table}.{f.column} "
                                              f"{f.value!r} -> {stored!r}")]


def _request_phrases(request: str, most_words: int = 4) -> list[str]:
    """The request's quoted texts and its runs of up to ``most_words`` words: the values it
    may name ("the PPT template type", 'named "Robbin CV"')."""
    quoted = [a or b for a, b in re.findall(r'"([^"\n]{1,80})"|\'([^\'\n]{1,80})\'', request)]
    words = re.findall(r"[\w&.'-]+", request)
    runs = [" ".join(words[i:i + n]) for n in range(1, most_words + 1)
            for i in range(len(words) - n + 1)]
    return list(dict.fromkeys(quoted + runs))


def value_in_request(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """A value the request does not name, cut short or padded from one it does
    (``Template_Type_Code = 'PP'`` for "the PPT template type"), is respelled as the request
    names it, when exactly one phrase of the request is a stored value of that column that
    starts with the written value or with which it starts (case ignored, two letters at
    least). Also when the written value is stored too ('PP' and 'PPT' are both template
    types): the request said which."""
    f, look = ctx.filter, ctx.lookup
    if not ctx.request:
        return tree, []
    written = f.value.strip().lower()
    if len(written) < 2 or re.search(rf"(?<!\w){re.escape(written)}(?!\w)", ctx.request.lower()):
        return tree, []  # the request names the value as written
    near = [p for p in _request_phrases(ctx.request)
            if p.lower() != written and len(p) >= 2 and
            (p.lower().startswith(written) or written.startswith(p.lower()))]
    stored = {s for p in near[:40] for s in (look.spellings(f.table, f.column, p) or [])}
    if len(stored) != 1:
        return tree, []
    value = stored.pop()
    ctx.respell[f.value] = value
    return tree, [Fix(SqlKind.VALUE_IN_REQUEST, (
        f"value as the request names it: {f.table}.{f.column} {f.value!r} -> {value!r}"))]


def value_elsewhere(tree: exp.Expression, ctx: SqlContext) -> tuple[exp.Expression, list[Fix]]:
    """An error naming the other columns that hold the value (``flights.Airline = 'JetBlue
    Airways'``, where ``flights.Airline`` holds ids and ``airlines.Airline`` the name), for
    the repair prompt. A value found nowhere says nothing: an empty answer may be right."""
    f = ctx.filter
    elsewhere = _elsewhere(ctx.lookup, f)
    if not elsewhere:
        return tree, []
    return tree, [Fix(SqlKind.VALUE_ELSEWHERE, (
        f"no row of {f.table}.{f.column} is {f.value!r}; that value is in "
        f"{', '.join(elsewhere)}: filter on that column (join its table if needed)"))]


def _elsewhere(look: Lookup, f: Filter, most: int = 3) -> list[str]:
    """Other text columns holding ``f.value`` exactly (case and spaces ignored)."""
    hits = []
    for table, cols in look.info.tables.items():
        for column, typ in cols.items():
            if (table, column) == (f.table, f.column) or not is_text(typ):
                continue
            if look.spellings(table, column, f.value):
                hits.append(f"{table}.{column}")
                if len(hits) >= most:
                    return hits
    return hits


STRAY_SPACES = Rule(SqlKind.STRAY_SPACES, stray_spaces, always, issue=Kind.SQL_VALUE,
                    verify=False)
VALUE_SPELLING = Rule(SqlKind.VALUE_SPELLING, value_spelling, always, verify=False)
VALUE_IN_REQUEST = Rule(SqlKind.VALUE_IN_REQUEST, value_in_request, always, verify=False)
VALUE_ELSEWHERE = Rule(SqlKind.VALUE_ELSEWHERE, value_elsewhere, always,
                       issue=Kind.SQL_VALUE, severity="error", verify=False)
