"""Replay the copilot's SQL rules on Spider's dev questions, to show a refactor changes nothing.

Each gold query, and mechanical corruptions of it that the rules exist for (aliases dropped,
swapped or wrong, columns misspelled, text values in another case or with a stray space, a
wrong join key, a join removed or added, a key compared with another key through
``IN (SELECT ...)``, double-quoted strings, a ranking aggregate selected, a contradictory
filter, a value compared with the wrong column, the wrong table), goes through the public
entry points the way ``pipeline.Copilot._check_sql`` calls them: ``validate_sql`` with the
question as the request, then ``check_values`` on the real SQLite database, then
``validate_sql`` again when a value fix changed the query, then ``sql_cell``. The final SQL, the
cell and the issues (kind, severity, message) of each input are written as JSON lines.

    python benchmarks/sql_rules_replay.py --data-dir DIR --out /tmp/before.jsonl
    python benchmarks/sql_rules_replay.py --data-dir DIR --out /tmp/after.jsonl \
        --compare /tmp/before.jsonl

The value lookups run with a 60 s budget instead of the pipeline's 2 s, so that a busy machine
does not make the lookups, and with them the replay, differ from run to run.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlglot
from sqlglot import exp

from qcoder_ds.copilot.context import ConnectionInfo, describe_connection
from qcoder_ds.copilot.sql_values import check_values
from qcoder_ds.copilot.validate_sql import sql_cell, validate_sql

BUDGET_S = 60.0

# --------------------------------------------------------------------------- corruptions

Corruption = Callable[[exp.Expression, ConnectionInfo, random.Random], "exp.Expression | None"]


def _columns(tree: exp.Expression) -> list[exp.Column]:
    return [c for c in tree.find_all(exp.Column) if c.name and c.name != "*"]


def _aliases(tree: exp.Expression) -> list[str]:
    return [t.alias_or_name for t in tree.find_all(exp.Table)]


def drop_alias(tree, info, rng):
    cols = [c for c in _columns(tree) if c.table]
    for c in cols:
        c.set("table", None)
    return tree if cols else None


def swap_alias(tree, info, rng):
    names = list(dict.fromkeys(_aliases(tree)))
    cols = [c for c in _columns(tree) if c.table in names]
    if len(names) < 2 or not cols:
        return None
    swap = {names[0]: names[1], names[1]: names[0]}
    for c in cols:
        if c.table in swap and c.find_ancestor(exp.Join) is None:
            c.set("table", exp.to_identifier(swap[c.table]))
    return tree


def wrong_alias(tree, info, rng):
    names = list(dict.fromkeys(_aliases(tree)))
    cols = [c for c in _columns(tree) if c.table]
    if len(names) < 2 or not cols:
        return None
    c = rng.choice(cols)
    c.set("table", exp.to_identifier(rng.choice([n for n in names if n != c.table])))
    return tree


def _respelled(name: str, rng: random.Random) -> str:
    if "_" in name:
        parts = name.split("_")
        return rng.choice(["".join(parts), parts[0] + "".join(p.title() for p in parts[1:])])
    spaced = "".join(f"_{ch.lower()}" if ch.isupper() and i else ch.lower()
                     for i, ch in enumerate(name))
    return spaced if spaced != name.lower() else name.upper()


def misspell(tree, info, rng):
    cols = _columns(tree)
    if not cols:
        return None
    c = rng.choice(cols)
    c.set("this", exp.to_identifier(_respelled(c.name, rng)))
    return tree


def _text_literals(tree: exp.Expression) -> list[exp.Literal]:
    return [lit for lit in tree.find_all(exp.Literal) if lit.is_string and lit.this.strip()
            and isinstance(lit.parent, (exp.EQ, exp.NEQ, exp.In))]


def value_case(tree, info, rng):
    lits = _text_literals(tree)
    if not lits:
        return None
    lit = rng.choice(lits)
    text = lit.this.lower() if lit.this != lit.this.lower() else lit.this.upper()
    lit.replace(exp.Literal.string(text))
    return tree


def value_space(tree, info, rng):
    lits = _text_literals(tree)
    if not lits:
        return None
    lit = rng.choice(lits)
    lit.replace(exp.Literal.string(rng.choice([" ", ""]) + lit.this + rng.choice([" ", ""])
                                   or lit.this + " "))
    return tree


def double_quotes(tree, info, rng):
    lits = [lit for lit in tree.find_all(exp.Literal) if lit.is_string]
    if not lits:
        return None
    for lit in lits:
        lit.replace(exp.column(exp.to_identifier(lit.this, quoted=True)))
    return tree


def _table_cols(info: ConnectionInfo, name: str) -> list[str]:
    return next((list(c) for t, c in info.tables.items() if t.lower() == name.lower()), [])


def wrong_join_key(tree, info, rng):
    joins = [j for j in tree.find_all(exp.Join) if isinstance(j.args.get("on"), exp.EQ)]
    if not joins:
        return None
    on = rng.choice(joins).args["on"]
    side = rng.choice([on.this, on.expression])
    if not isinstance(side, exp.Column):
        return None
    if rng.random() < 0.4:  # a column compared with itself
        other = on.expression if side is on.this else on.this
        other.replace(side.copy())
        return tree
    table = next((t for t in tree.find_all(exp.Table)
                  if t.alias_or_name.lower() == side.table.lower()), None)
    cols = [c for c in _table_cols(info, table.name) if c.lower() != side.name.lower()] \
        if table is not None else []
    if not cols:
        return None
    side.set("this", exp.to_identifier(rng.choice(cols)))
    return tree


def remove_join(tree, info, rng):
    select = tree if isinstance(tree, exp.Select) else None
    joins = select.args.get("joins") if select else None
    if not joins:
        return None
    rng.choice(joins).pop()
    return tree


def add_join(tree, info, rng):
    if not isinstance(tree, exp.Select) or not isinstance(
            (tree.args.get("from_") or exp.From()).this, exp.Table):
        return None
    first = tree.args["from_"].this
    links = [(t, c, rc) for t, c, rt, rc in info.foreign_keys
             if rt.lower() == first.name.lower() and t.lower() not in
             {x.name.lower() for x in tree.find_all(exp.Table)} and rc]
    if not links:
        return None
    t, c, rc = rng.choice(links)
    here = first.alias_or_name
    tree.append("joins", exp.Join(this=exp.table_(t, alias="X9"), on=exp.EQ(
        this=exp.column(rc, table=here), expression=exp.column(c, table="X9"))))
    return tree


def in_other_key(tree, info, rng):
    subs = [s for s in tree.find_all(exp.In) if isinstance(s.args.get("query"), exp.Subquery)]
    if subs:
        inner = subs[0].args["query"].this
        if isinstance(inner, exp.Select) and len(inner.expressions) == 1 and \
                isinstance(inner.args.get("from_"), exp.From) and \
                isinstance(inner.args["from_"].this, exp.Table):
            cols = [c for c in _table_cols(info, inner.args["from_"].this.name)
                    if c.lower() != inner.expressions[0].name.lower()]
            if cols:
                inner.set("expressions", [exp.column(rng.choice(cols))])
                return tree
    if not isinstance(tree, exp.Select) or not isinstance(
            (tree.args.get("from_") or exp.From()).this, exp.Table):
        return None
    first = tree.args["from_"].this
    links = [(c, rt) for t, c, rt, rc in info.foreign_keys if t.lower() == first.name.lower()]
    if not links:
        return None
    c, rt = rng.choice(links)
    cols = _table_cols(info, rt)
    if not cols:
        return None
    pick = rng.choice(cols + [c])
    cond = exp.In(this=exp.column(c, table=first.alias_or_name if first.alias else None),
                  query=exp.Subquery(this=sqlglot.select(pick).from_(rt)))
    return tree.where(cond, copy=False)


def rank_column(tree, info, rng):
    if not isinstance(tree, exp.Select) or not tree.args.get("limit") or \
            not tree.args.get("order"):
        return None
    key = tree.args["order"].expressions[0].this
    if not isinstance(key, exp.AggFunc):
        return None
    tree.select(exp.alias_(key.copy(), "n") if rng.random() < 0.5 else key.copy(), copy=False)
    return tree


def contradict(tree, info, rng):
    eqs = [e for e in tree.find_all(exp.EQ) if isinstance(e.expression, exp.Literal)
           and isinstance(e.this, exp.Column) and isinstance(e.parent, (exp.Where, exp.And))]
    if not eqs:
        return None
    e = rng.choice(eqs)
    other = exp.Literal.string(e.expression.this + "x") if e.expression.is_string else \
        exp.Literal.number(1 + float(e.expression.this))
    e.replace(exp.and_(e.copy(), exp.EQ(this=e.this.copy(), expression=other)))
    return tree


def wrong_value_column(tree, info, rng):
    lits = [lit for lit in _text_literals(tree) if isinstance(lit.parent, (exp.EQ, exp.NEQ))]
    cols = [lit.parent.this for lit in lits if isinstance(lit.parent.this, exp.Column)]
    if not cols:
        return None
    col = rng.choice(cols)
    table = next((t for t in tree.find_all(exp.Table)
                  if not col.table or t.alias_or_name.lower() == col.table.lower()), None)
    others = [c for c, typ in next((cs for t, cs in info.tables.items()
                                    if table is not None and t.lower() == table.name.lower()),
                                   {}).items()
              if c.lower() != col.name.lower() and ("char" in typ.lower() or
                                                    "text" in typ.lower())]
    if not others:
        return None
    col.set("this", exp.to_identifier(rng.choice(others)))
    return tree


def wrong_table(tree, info, rng):
    tables = list(tree.find_all(exp.Table))
    if len(tables) != 1:
        return None
    tables[0].set("this", exp.to_identifier(rng.choice(list(info.tables))))
    return tree


def remove_join_bare(tree, info, rng):
    tree = remove_join(tree, info, rng)
    return drop_alias(tree, info, rng) if tree is not None else None


def add_unlinked_join(tree, info, rng):
    if not isinstance(tree, exp.Select) or not isinstance(
            (tree.args.get("from_") or exp.From()).this, exp.Table):
        return None
    first = tree.args["from_"].this
    cols = _table_cols(info, first.name)
    if not cols:
        return None
    key = exp.column(rng.choice(cols), table=first.alias_or_name)
    tree.append("joins", exp.Join(this=exp.table_(rng.choice(list(info.tables)), alias="X9"),
                                  on=exp.EQ(this=key, expression=key.copy())))
    return tree


def outer_column_in_subquery(tree, info, rng):
    if not isinstance(tree, exp.Select) or not isinstance(
            (tree.args.get("from_") or exp.From()).this, exp.Table):
        return None
    first = tree.args["from_"].this
    cols = _table_cols(info, first.name)
    col = rng.choice(cols) if cols else None
    others = [t for t, cs in info.tables.items() if col and col not in cs]
    if not others:
        return None
    sub = sqlglot.select(col).from_(rng.choice(others))
    return tree.where(exp.In(this=exp.column(col), query=exp.Subquery(this=sub)), copy=False)


def value_other_table(tree, info, rng):
    lits = _text_literals(tree)
    texts = [(t, c) for t, cs in info.tables.items() for c, typ in cs.items()
             if "char" in typ.lower() or "text" in typ.lower()]
    if not lits or not texts:
        return None
    table, col = rng.choice(texts)
    return sqlglot.select("COUNT(*)").from_(table).where(
        exp.EQ(this=exp.column(col), expression=rng.choice(lits).copy()))


CORRUPTIONS: dict[str, Corruption] = {f.__name__: f for f in (
    drop_alias, swap_alias, wrong_alias, misspell, value_case, value_space, double_quotes,
    wrong_join_key, remove_join, add_join, in_other_key, rank_column, contradict,
    wrong_value_column, wrong_table, remove_join_bare, add_unlinked_join,
    outer_column_in_subquery, value_other_table)}
SEEDS = 2  # each corruption twice per question, with different random choices


def inputs(question: dict, info: ConnectionInfo, index: int) -> Iterator[tuple[str, str]]:
    """(variant, SQL) for the gold query and each corruption that applies to it."""
    yield "gold", question["query"]
    try:
        gold = sqlglot.parse_one(question["query"], read="sqlite")
    except Exception:  # noqa: BLE001 - a gold query sqlglot cannot read has only itself
        return
    seen = {question["query"]}
    for n, (name, corrupt) in enumerate(CORRUPTIONS.items()):
        for seed in range(SEEDS):
            rng = random.Random(index * 1000 + n * 10 + seed)
            try:
                tree = corrupt(gold.copy(), info, rng)
                sql = tree.sql(dialect="sqlite") if tree is not None else None
            except Exception:  # noqa: BLE001 - a corruption that does not apply is skipped
                sql = None
            if sql and sql not in seen:
                seen.add(sql)
                yield f"{name}.{seed}", sql


# --------------------------------------------------------------------------- the replay


def _issues(issues) -> list[list]:
    return [[str(i.kind), i.severity, i.message] for i in issues]


def check(sql: str, info: ConnectionInfo, conn: sqlite3.Connection, request: str) -> dict:
    """What ``Copilot._check_sql`` does with ``sql`` (opts.check on), recorded."""
    result = validate_sql(sql, info, request=request)
    first = {"sql": result.sql, "issues": _issues(result.issues), "ok": result.ok}
    if result.ok:
        looked_up, found = check_values(result.sql, info, conn, budget_s=BUDGET_S,
                                        request=request)
        result.issues += found
        if looked_up != result.sql:
            again = validate_sql(looked_up, info, request=request)
            if again.ok:
                looked_up = again.sql
                result.issues += [i for i in again.issues if i.kind == "sql-fixed"]
        result.sql = looked_up
    return {"validate": first, "sql": result.sql, "issues": _issues(result.issues),
            "ok": result.ok, "cell": sql_cell(result.sql, info)}


def replay(data_dir: Path, limit: int | None) -> Iterator[dict]:
    questions = json.loads((data_dir / "spider" / "questions.json").read_text())[:limit]
    conns: dict[str, tuple[sqlite3.Connection, ConnectionInfo]] = {}
    for index, q in enumerate(questions):
        db = q["db_id"]
        if db not in conns:
            path = data_dir / "spider" / "database" / db / f"{db}.sqlite"
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            conns[db] = conn, describe_connection("conn", conn)
            _NAMES[db] = {c.lower() for cols in conns[db][1].tables.values() for c in cols}
        conn, info = conns[db]
        for variant, sql in inputs(q, info, index):
            yield {"id": f"{index}:{variant}", "db": db, "request": q["question"], "input": sql,
                   **check(sql, info, conn, q["question"])}


#: which rule wrote a message (the fix notes of the schema rules are told apart by shape)
_RULE_OF = (("value spelled as stored", "value-spelling"),
            ("with surrounding spaces", "stray-spaces"),
            ("instead, which holds it", "value-holder"),
            ("that value is in", "value-elsewhere"),
            ("matched keys by the foreign key: ON", "join-keys"),
            ("matched keys by the foreign key: (SELECT", "in-keys"),
            ("the join condition does not link", "unlinked-joins"),
            ("nothing uses and the request", "unused-joins"),
            ("it only ranks the rows", "ranking-column"),
            ("the WHERE clause can never be true", "contradiction"),
            ("picks a column", "outer-pick"))


def rules_fired(record: dict) -> set[str]:
    """The rules whose message is among the record's issues (the schema fixes, one message
    for up to four rules, by the shape of each note; quoted strings by the input)."""
    fired = set()
    for _, _, message in record["issues"]:
        fired |= {rule for text, rule in _RULE_OF if text in message}
        if message.startswith("fixed from the schema: "):
            for note in message.split(": ", 1)[1].split("; "):
                fired.add("swap-table" if note.startswith("FROM ") else
                          "join-referenced" if note.startswith("JOIN ") else
                          "requalify" if "." in note.split(" -> ")[0] else "respell")
    if _reads_quoted_strings(record["input"], record["db"]):
        fired.add("quoted-strings")
    return fired


_NAMES: dict[str, set[str]] = {}


def _reads_quoted_strings(sql: str, db: str) -> bool:
    """Whether ``sql`` has a double-quoted name that no column has (a string to SQLite)."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except Exception:  # noqa: BLE001 - not read, not rewritten
        return False
    return any(isinstance(c.this, exp.Identifier) and c.this.quoted and not c.table
               and c.name.lower() not in _NAMES[db] for c in tree.find_all(exp.Column))


def compare(before: Path, records: list[dict]) -> list[str]:
    old = {r["id"]: r for r in map(json.loads, before.read_text().splitlines())}
    keys = ("validate", "sql", "issues", "ok", "cell")
    diffs = [r["id"] for r in records if r["id"] not in old
             or any(old[r["id"]][k] != r[k] for k in keys)]
    return diffs + [i for i in old if i not in {r["id"] for r in records}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True,
                    help="folder holding spider/questions.json and spider/database/")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines to write")
    ap.add_argument("--compare", type=Path, help="an earlier --out to compare with")
    ap.add_argument("--limit", type=int, help="only the first N questions")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    records = list(replay(args.data_dir, args.limit))
    args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    fires = collections.Counter(rule for r in records for rule in rules_fired(r))
    variants = collections.Counter(r["id"].split(":")[1].split(".")[0] for r in records)
    print(f"{len(records)} inputs in {time.perf_counter() - t:.0f} s; variants {dict(variants)}")
    print("inputs where each rule fired:", json.dumps(dict(sorted(fires.items())), indent=1))
    if args.compare:
        diffs = compare(args.compare, records)
        print(f"{len(diffs)} differences from {args.compare}: {diffs[:20]}")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
