"""Fixes for the small model's usual SQL slips, decided by the live schema alone.

Most of the embedded model's failing queries name a real column through the wrong alias
(``T2.Hometown`` where ``Hometown`` belongs to ``teacher AS T1``), or take every column from a
table that has none of them while another table has all of them. Asked to repair, the 0.5B
model mostly repeats itself; the schema says which fix is right, so the fix is made here and
reported. Only an unambiguous fix is made: one owner among the query's own tables, one
table holding every column of a single-table query, or one table that a query table
references by a foreign key (joined by that key). Anything else is left to the model.
"""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from qcoder_ds.copilot.context import ConnectionInfo


def _columns(info: ConnectionInfo) -> dict[str, set[str]]:
    return {t.lower(): {c.lower() for c in cols} for t, cols in info.tables.items()}


def _table_sources(scope: Scope) -> dict[str, str]:
    """alias (or name) -> real table name, lower case, for the tables this scope reads."""
    return {alias.lower(): src.name.lower() for alias, src in scope.sources.items()
            if isinstance(src, exp.Table) and src.name}


def _requalify(scope: Scope, cols: dict[str, set[str]], notes: list[str]) -> None:
    """``A.x`` where A's table has no ``x`` but exactly one other table here does: use it."""
    sources = _table_sources(scope)
    for column in scope.columns:
        qual = column.table.lower()
        name = column.name.lower()
        if not qual or not name or name == "*":
            continue
        table = sources.get(qual)
        if table is None and qual in cols and qual not in sources.values():
            table = qual  # qualified with a table that is not in FROM at all
        if table is None or name in cols.get(table, set()):
            continue
        owners = [a for a, t in sources.items() if name in cols.get(t, set())]
        if len(owners) == 1:
            alias = next(a for a in scope.sources if a.lower() == owners[0])
            notes.append(f"{column.table}.{column.name} -> {alias}.{column.name}")
            column.set("table", exp.to_identifier(alias))


def _squash(name: str) -> str:
    return re.sub(r"[_\s]", "", name.lower())


def _respell(scope: Scope, info: ConnectionInfo, cols: dict[str, set[str]],
             notes: list[str]) -> None:
    """A column that no table here has but exactly one has under another spelling of the
    same letters (``pet_type`` for ``PetType``): that column is meant."""
    sources = _table_sources(scope)
    spelling = {t.lower(): list(c) for t, c in info.tables.items()}
    for column in _own_columns(scope):
        name = column.name
        if not name or name == "*" or any(name.lower() in cols.get(t, set())
                                          for t in sources.values()):
            continue
        found = {(a, c) for a, t in sources.items() for c in spelling.get(t, [])
                 if _squash(c) == _squash(name)}
        if len(found) != 1:
            continue
        alias, real = found.pop()
        notes.append(f"{name} -> {real}")
        column.set("this", exp.to_identifier(real))
        if column.table:
            column.set("table", exp.to_identifier(_spelled(scope, alias)))


def _swap_table(scope: Scope, info: ConnectionInfo, cols: dict[str, set[str]],
                notes: list[str]) -> None:
    """A one-table query whose table lacks some of its columns, when exactly one other table
    has them all (``SELECT description FROM templates`` -> ``FROM ref_template_types``)."""
    tables = [s for s in scope.sources.values() if isinstance(s, exp.Table)]
    if len(scope.sources) != 1 or len(tables) != 1:
        return
    table = tables[0]
    used = {c.name.lower() for c in scope.columns if c.name and c.name != "*"}
    if not used or used <= cols.get(table.name.lower(), set()):
        return
    fits = [t for t in info.tables if used <= cols[t.lower()]]
    if len(fits) == 1:
        notes.append(f"FROM {table.name} -> FROM {fits[0]}")
        table.set("this", exp.to_identifier(fits[0]))


def _join_referenced(scope: Scope, info: ConnectionInfo, cols: dict[str, set[str]],
                     notes: list[str]) -> None:
    """A column that no table of the query has, but exactly one table that a query table
    references by a foreign key does (``SELECT AVG(Earnings) FROM poker_player WHERE Height >
    200``, where ``poker_player.People_ID`` references ``people``): that table is joined by
    the key. Only along a reference, many rows to one, so no row of the query is repeated."""
    select = scope.expression
    from_ = select.args.get("from_") if isinstance(select, exp.Select) else None
    if from_ is None or not isinstance(from_.this, exp.Table):
        return
    sources = _table_sources(scope)
    if not sources or len(sources) != len(scope.sources):
        return
    missing = [c for c in _own_columns(scope) if c.name and c.name != "*"
               and not any(c.name.lower() in cols.get(t, set()) for t in sources.values())]
    if not missing:
        return
    added: dict[tuple[str, str], str] = {}  # (query alias, referenced table) -> new alias
    used = {a.lower() for a in scope.sources} | set(sources.values())
    for column in missing:
        name, qual = column.name.lower(), column.table.lower()
        if qual and qual not in sources:
            continue
        # a wrong qualifier (``T2.fname`` on pets, where has_pet references student) is a slip
        links = _references(info, sources, [qual], name, cols) if qual else []
        links = links or _references(info, sources, list(sources), name, cols)
        if len({(a, rt.lower()) for a, rt, _, _ in links}) != 1 or len(links) != 1:
            continue
        a, rt, c, rc = links[0]
        key = (a, rt.lower())
        if key not in added:
            alias = next(f"T{i}" for i in range(1, 100) if f"t{i}" not in used)
            used.add(alias.lower())
            added[key] = alias
            for other in _own_columns(scope):  # the new table may share names: qualify them
                if not other.table and other.name and other.name != "*":
                    owners = [s for s, t in sources.items() if other.name.lower() in cols[t]]
                    if len(owners) == 1:
                        other.set("table", exp.to_identifier(_spelled(scope, owners[0])))
            here = _spelled(scope, a)
            select.append("joins", exp.Join(
                this=exp.table_(rt, alias=alias),
                on=exp.EQ(this=exp.column(c, table=here), expression=exp.column(rc, table=alias))))
            notes.append(f"JOIN {rt} AS {alias} ON {here}.{c} = {alias}.{rc} (for {column.name})")
        column.set("table", exp.to_identifier(added[key]))


def _references(info: ConnectionInfo, sources: dict[str, str], froms: list[str], name: str,
                cols: dict[str, set[str]]) -> list[tuple[str, str, str, str]]:
    """(alias, referenced table, key, referenced key) for each foreign key from a table of
    ``froms`` to a table outside the query that has the column ``name``."""
    return [(a, rt, c, rc) for a in froms for t, c, rt, rc in info.foreign_keys
            if t.lower() == sources[a] and rt.lower() not in sources.values()
            and name in cols.get(rt.lower(), set())]


def _own_columns(scope: Scope) -> list[exp.Column]:
    """The scope's columns without those of its subqueries (which sqlglot lists too, as
    possible outer references)."""
    return [c for c in scope.columns if c.find_ancestor(exp.Select) is scope.expression]


def _spelled(scope: Scope, alias_lower: str) -> str:
    return next(a for a in scope.sources if a.lower() == alias_lower)


def fix_sql(tree: exp.Expression, info: ConnectionInfo) -> tuple[exp.Expression, list[str]]:
    """A copy of ``tree`` with the unambiguous column/table slips fixed, and what was changed
    (``[]`` when nothing was)."""
    fixed = tree.copy()
    cols = _columns(info)
    notes: list[str] = []
    try:
        for scope in traverse_scope(fixed):
            _respell(scope, info, cols, notes)
            _requalify(scope, cols, notes)
            _swap_table(scope, info, cols, notes)
            _join_referenced(scope, info, cols, notes)
    except SqlglotError:
        return tree, []
    return (fixed, list(dict.fromkeys(notes))) if notes else (tree, [])


# --------------------------------------------------------------------------- needless joins

_STOP = {"a", "an", "the", "of", "in", "on", "and", "or", "to", "for", "by", "with", "is",
         "are", "has", "have", "id", "ids", "info", "details", "list", "all", "each"}


def _words(text: str) -> set[str]:
    """Lower-case words of ``text`` (``Has_Pet``, ``hasPet`` and ``has pet`` alike), each also
    in a crude singular, so ``visitors`` matches ``visitor`` but not ``visit``."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    out = set()
    for w in re.findall(r"[a-z0-9]+", spaced.lower()):
        out.add(w)
        for suffix in ("ies", "es", "s"):
            if w.endswith(suffix) and len(w) > len(suffix) + 2:
                out.add(w[: -len(suffix)] + ("y" if suffix == "ies" else ""))
    return out


def _mentioned(table: str, request_words: set[str], others: list[str]) -> bool:
    """Whether the request names ``table`` by a significant word of its name that the
    query's ``others`` tables do not share: "transcripts" names ``Transcripts``, not
    ``Transcript_Contents``. A name with no word of its own counts with all its words."""
    words = _words(table) - _STOP
    own = words.difference(*(_words(o) for o in others)) or words
    return bool(own & request_words)


def drop_unused_joins(tree: exp.Expression, info: ConnectionInfo, request: str
                      ) -> tuple[exp.Expression, list[str]]:
    """A copy of ``tree`` without the joined tables that nothing but their own join condition
    uses and that ``request`` does not mention, and the tables dropped.

    The small model joins a neighbouring table "to be safe" (``visitor JOIN visit`` for a
    filter on visitors); the join repeats or loses rows and the answer is wrong while it runs.
    A table the request names is kept: there the join is the point ("players who have won").
    In a query that groups or aggregates, the join decides what is counted, so a table is
    also kept when the request names one of its own columns ("the most frequent destination
    airport" counts ``flights`` by ``DestAirport``); otherwise it only repeats the rows that
    are counted ("the number of teachers from each hometown" over ``teacher JOIN
    course_arrange``)."""
    asked = _words(request)
    try:
        qualified = qualify(tree.copy(), schema=info.schema(), dialect=info.dialect,
                            validate_qualify_columns=False, quote_identifiers=False)
        plain = tree.copy()
        pairs = list(zip(traverse_scope(qualified), traverse_scope(plain), strict=True))
    except (SqlglotError, ValueError):
        return tree, []
    dropped: list[str] = []
    for q_scope, p_scope in pairs:
        counts = _aggregates(q_scope.expression)
        q_joins = q_scope.expression.args.get("joins") or []
        p_joins = p_scope.expression.args.get("joins") or []
        if len(q_joins) != len(p_joins) or not q_joins or \
                any(isinstance(s, exp.Star) for s in q_scope.expression.expressions):
            continue
        names = [t.name for t in q_scope.expression.find_all(exp.Table)]
        for q_join, p_join in reversed(list(zip(q_joins, p_joins, strict=True))):
            table = q_join.this
            others = [n for n in names if n != table.name]
            if not isinstance(table, exp.Table) or q_join.args.get("using") or \
                    _mentioned(table.name, asked, others) or \
                    counts and _column_named(table.name, asked, others, info):
                continue
            alias = table.alias_or_name
            on = q_join.args.get("on")
            in_on = {id(c) for c in on.find_all(exp.Column)} if on else set()
            used = [c for c in q_scope.columns if c.table == alias and id(c) not in in_on]
            if used or on is None or not any(c.table == alias for c in on.find_all(exp.Column)):
                continue
            p_join.pop()
            dropped.append(table.name)
        first = _drop_from_table(q_scope.expression, p_scope.expression, asked, names,
                                 info if counts else None)
        if first:
            dropped.append(first)
    return (plain, dropped) if dropped else (tree, [])


def _scoped_copy(tree: exp.Expression) -> tuple[exp.Expression, list[Scope]]:
    """A copy of ``tree`` to edit and its scopes (none when sqlglot cannot scope it)."""
    fixed = tree.copy()
    try:
        return fixed, list(traverse_scope(fixed))
    except SqlglotError:
        return fixed, []


def drop_unlinked_joins(tree: exp.Expression) -> tuple[exp.Expression, list[str]]:
    """A copy of ``tree`` without the inner-joined tables that their own join condition does
    not mention and nothing else uses, and the tables dropped (``teacher AS T1 JOIN course
    AS T2 ON T1.Teacher_ID = T1.Teacher_ID``): such a join pairs every row with every row of
    the table, which is never meant. Its condition stays, in the WHERE clause, unless it
    compares a column with itself."""
    fixed, scopes = _scoped_copy(tree)
    dropped: list[str] = []
    for scope in scopes:
        select = scope.expression
        if not isinstance(select, exp.Select):
            continue
        for join in list(select.args.get("joins") or []):
            table, on = join.this, join.args.get("on")
            if not isinstance(table, exp.Table) or on is None or join.side or \
                    join.args.get("using") or join.kind.upper() not in ("", "INNER"):
                continue
            alias = table.alias_or_name.lower()
            mentions = [c for c in scope.columns if c.table.lower() == alias]
            if mentions or any(c.table.lower() == alias for c in on.find_all(exp.Column)) or \
                    not all(c.table for c in _own_columns(scope)):
                continue
            kept = [c for c in conjuncts(on) if not _self_equal(c)]
            join.pop()
            dropped.append(table.name)
            if kept:
                select.where(exp.and_(*[c.copy() for c in kept]), copy=False)
    return (fixed, dropped) if dropped else (tree, [])


def conjuncts(cond: exp.Expression) -> list[exp.Expression]:
    """The parts of ``a AND b AND ...``."""
    cond = cond.unnest()
    if isinstance(cond, exp.And):
        return conjuncts(cond.this) + conjuncts(cond.expression)
    return [cond]


def _self_equal(cond: exp.Expression) -> bool:
    return isinstance(cond, exp.EQ) and isinstance(cond.this, exp.Column) and \
        cond.this == cond.expression


def _column_named(table: str, asked: set[str], others: list[str], info: ConnectionInfo
                  ) -> bool:
    """Whether the request names a column of ``table`` by a word that the ``others`` lack in
    their names and columns, or by a longer word that starts with one (``DestAirport``:
    "destination")."""
    def columns(name: str) -> list[str]:
        return next((list(c) for t, c in info.tables.items() if t.lower() == name.lower()), [])

    # a key named after another table (``visitor_ID`` beside ``visitor``) names that table
    theirs = set().union(*(_words(c) for o in others for c in columns(o) + [o]))
    own = {w for c in columns(table) for w in _words(c) - theirs - _STOP if len(w) > 2}
    return any(a == w or len(w) >= 4 and a.startswith(w) for a in asked for w in own)


def _aggregates(select: exp.Expression) -> bool:
    """Whether ``select`` groups or aggregates its own rows: then a join decides what is
    counted ("the most frequent destination airport" counts flights), and stays."""
    if select.args.get("group") or select.args.get("having"):
        return True
    return any(agg.find_ancestor(exp.Select) is select for agg in select.find_all(exp.AggFunc))


def _drop_from_table(q_select: exp.Expression, p_select: exp.Expression, asked: set[str],
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
    others = [n for n in names if n != table.name]
    if not isinstance(table, exp.Table) or not isinstance(join.this, exp.Table) or \
            on is None or join.args.get("using") or join.side or \
            join.kind.upper() not in ("", "INNER") or _mentioned(table.name, asked, others) or \
            counts_in is not None and _column_named(table.name, asked, others, counts_in):
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


# --------------------------------------------------------------------------- ranking columns

_SUPERLATIVE = re.compile(r"\b(?:the )?(?:most|greatest|largest|highest|biggest|fewest|least|"
                          r"smallest|lowest)(?: (?:number|amount|count))?(?: of)?\b", re.I)
_ASKS_AMOUNT = re.compile(r"\b(?:how many|how much|count|counts|number|numbers|amount|total|"
                          r"sum|average|mean|maximum|minimum|max|min)\b", re.I)


def drop_ranking_column(tree: exp.Expression, request: str) -> tuple[exp.Expression, str | None]:
    """``SELECT grade, COUNT(*) AS n ... ORDER BY n DESC LIMIT 1`` for "which grade has the most
    students?" becomes ``SELECT grade ... ORDER BY COUNT(*) DESC LIMIT 1``; returns the column
    dropped (None when nothing was).

    The small model adds the aggregate it ranks by to the result although the question asks
    which, not how many. In Spider's gold queries that rank by an aggregate with LIMIT, the
    aggregate is selected in 4 of 70, each time the question asks for the number itself; so it
    is kept whenever the request asks for an amount other than as "the most/fewest (number of)"."""
    if not isinstance(tree, exp.Select) or not tree.args.get("limit") or \
            not tree.args.get("order") or len(tree.expressions) < 2 or \
            _ASKS_AMOUNT.search(_SUPERLATIVE.sub(" ", request)):
        return tree, None
    keys = [o.this for o in tree.args["order"].expressions]
    ranking = []
    for i, column in enumerate(tree.expressions):
        inner, alias = column.unalias(), column.alias
        if isinstance(inner, exp.AggFunc) and any(
                k == inner or (alias and isinstance(k, exp.Column) and not k.table and
                               k.name.lower() == alias.lower()) for k in keys):
            ranking.append(i)
    if len(ranking) != 1:
        return tree, None
    out = tree.copy()
    gone = out.expressions[ranking[0]]
    inner, alias = gone.unalias(), gone.alias
    for ordered in out.args["order"].expressions:
        key = ordered.this
        if alias and isinstance(key, exp.Column) and not key.table and \
                key.name.lower() == alias.lower():
            ordered.set("this", inner.copy())
    out.set("expressions", [e for i, e in enumerate(out.expressions) if i != ranking[0]])
    return out, gone.sql()


# --------------------------------------------------------------------------- join keys


def _links(fks: list[tuple[str, str, str, str]], a: str, b: str) -> list[tuple[str, str]]:
    """The (column of a, column of b) pairs that a foreign key between tables a and b (lower
    case) joins, spelled as the schema does."""
    out = [(c, rc) for t, c, rt, rc in fks if t.lower() == a and rt.lower() == b]
    out += [(rc, c) for t, c, rt, rc in fks if t.lower() == b and rt.lower() == a]
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for pair in out:
        seen.setdefault((pair[0].lower(), pair[1].lower()), pair)
    return list(seen.values())


def fix_join_keys(tree: exp.Expression, info: ConnectionInfo) -> tuple[exp.Expression, list[str]]:
    """A copy of ``tree`` whose join conditions that cannot be meant are replaced by the
    foreign key between the two tables, and what was changed (``[]`` when nothing was).

    Three slips of the small model, each running without error and returning wrong rows:
    a condition that compares a column with itself (``JOIN stadium AS T3 ON T2.Singer_ID =
    T2.Singer_ID``: every row pairs with every stadium); one on two other tables, which
    leaves the joined one unlinked (the foreign key is added to it); and keys of different
    names that no foreign key links while one does
    (``Documents.Document_ID = Templates.Template_ID`` where ``Documents.Template_ID``
    references ``Templates``). Only when exactly one foreign key links the tables; a join on
    columns of the same name is left alone, since shared keys are often not declared."""
    fks = info.foreign_keys
    if not fks:
        return tree, []
    fixed, scopes = _scoped_copy(tree)
    notes: list[str] = []
    for scope in scopes:
        select = scope.expression
        sources = _table_sources(scope)
        from_ = select.args.get("from_")
        joins = select.args.get("joins") or []
        if from_ is None or not isinstance(from_.this, exp.Table) or not joins:
            continue
        seen = [from_.this.alias_or_name]
        for join in joins:
            table, on = join.this, join.args.get("on")
            if not isinstance(table, exp.Table):
                break
            alias = table.alias_or_name
            if isinstance(on, exp.EQ):
                note = _fix_one_join(on, alias, seen, sources, fks)
                if note:
                    notes.append(note)
            seen.append(alias)
    return (fixed, notes) if notes else (tree, [])


def _fix_one_join(on: exp.EQ, alias: str, earlier: list[str], sources: dict[str, str],
                  fks: list[tuple[str, str, str, str]]) -> str | None:
    left, right = on.this, on.expression
    if not isinstance(left, exp.Column) or not isinstance(right, exp.Column) or \
            not left.table or not right.table:
        return None
    quals = {left.table.lower(), right.table.lower()}
    if not quals <= set(sources):
        return None
    joined = alias.lower()
    one_table = len(quals) == 1
    itself = one_table and left.name.lower() == right.name.lower()
    if one_table or joined not in quals:  # one table's own columns, or never the joined table
        others = [a for a in earlier if a.lower() != joined]
    else:
        other = (quals - {joined}).pop()
        this_col, other_col = (left, right) if left.table.lower() == joined else (right, left)
        linked = {(m.lower(), t.lower()) for m, t in _links(fks, sources[joined], sources[other])}
        if this_col.name.lower() == other_col.name.lower() or \
                (this_col.name.lower(), other_col.name.lower()) in linked:
            return None
        others = [a for a in earlier if a.lower() == other]
    found = [(a, pair) for a in others for pair in _links(fks, sources[joined], sources[a.lower()])]
    tables = [sources[a.lower()] for a in others]
    if len(found) != 1 or tables.count(sources[found[0][0].lower()]) != 1:
        return None
    other_alias, (mine, theirs) = found[0]
    key = exp.EQ(this=exp.column(mine, table=alias),
                 expression=exp.column(theirs, table=other_alias))
    # a condition on two other tables is kept: only the joined table's link is missing
    new = key if itself or joined in quals and not one_table else exp.and_(on.copy(), key)
    before = on.sql()
    on.replace(new)
    return f"ON {before} -> ON {new.sql()}"


def fix_in_keys(tree: exp.Expression, info: ConnectionInfo) -> tuple[exp.Expression, list[str]]:
    """A copy of ``tree`` whose ``x IN (SELECT y FROM t ...)`` (or ``x = (SELECT y ...)``)
    compares ``x`` with the column of ``t`` that a foreign key links to it, when ``y`` is
    another key that nothing links to ``x`` (``Stadium_ID NOT IN (SELECT concert_ID FROM
    concert ...)`` where ``concert.Stadium_ID`` references ``stadium``): ids of different
    things never match, so the query runs and is wrong. The same when ``t`` has no ``y`` at
    all (``CountryCode IN (SELECT CountryCode FROM country)``, where the key is ``Code``):
    SQL then reads ``y`` from the outer row, and the test holds for every row. Only when
    exactly one such foreign key exists; a same-named column of ``t`` is left alone."""
    fks = info.foreign_keys
    cols = _columns(info)
    if not fks:
        return tree, []
    fixed = tree.copy()
    notes: list[str] = []
    for outer, inner in compared_subqueries(fixed):
        picked = inner.expressions[0]
        from_ = inner.args.get("from_")
        select = outer.find_ancestor(exp.Select)
        if from_ is None or not isinstance(from_.this, exp.Table) or select is None:
            continue
        sub_table = from_.this.name.lower()
        owner = _owner(outer, select, cols)
        absent = picked.name.lower() not in cols.get(sub_table, set())
        if owner is None or (picked.name.lower() == outer.name.lower() and not absent):
            continue
        links = [(mine, theirs) for mine, theirs in _links(fks, sub_table, owner)
                 if theirs.lower() == outer.name.lower()]
        linked = {(m.lower(), t.lower()) for m, t in _links(fks, sub_table, owner)}
        if len(links) != 1 or (picked.name.lower(), outer.name.lower()) in linked:
            continue
        before = picked.sql()
        picked.set("this", exp.to_identifier(links[0][0]))
        if picked.table and absent:
            picked.set("table", None)
        notes.append(f"(SELECT {before} ...) -> (SELECT {picked.sql()} ...)")
    return (fixed, notes) if notes else (tree, [])


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


def _owner(column: exp.Column, select: exp.Select, cols: dict[str, set[str]]) -> str | None:
    """The table (lower case) of ``select``'s own FROM and JOINs that ``column`` belongs to."""
    tables = {}
    from_ = select.args.get("from_")
    for t in ([from_.this] if from_ is not None else []) + \
            [j.this for j in select.args.get("joins") or []]:
        if isinstance(t, exp.Table):
            tables[t.alias_or_name.lower()] = t.name.lower()
    if column.table:
        return tables.get(column.table.lower())
    owners = [t for t in tables.values() if column.name.lower() in cols.get(t, set())]
    return owners[0] if len(owners) == 1 else None
