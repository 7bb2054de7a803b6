"""SQL explained clause by clause, in the order the database applies them, with row counts.

sqlglot parses the query (in the dialect given) into a tree; from it we build the query
one clause at a time (FROM, each JOIN, WHERE, GROUP BY, HAVING, SELECT, ORDER BY, LIMIT),
transpile each partial query to the connection's dialect and count its rows, so every step
says how many rows it started from and left ("WHERE status = 'returned' keeps 31 of 220
rows"). Only queries that read are run; anything that would write is explained, not run.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from qcoder_ds.lessons.errors import ExplainError
from qcoder_ds.lessons.explanation import Explanation, Step

TIMEOUT_S = 20.0
_AGG_WORDS = {"count": "counts", "sum": "adds up", "avg": "averages", "min": "takes the minimum of",
              "max": "takes the maximum of"}


def _dialect(name: str) -> str:
    try:
        sqlglot.Dialect.get_or_raise(name)
    except (ValueError, KeyError) as e:
        known = ", ".join(sorted(d.value for d in sqlglot.Dialects if d.value)[:30])
        raise ExplainError(f"unknown SQL dialect {name!r}; known dialects: {known}") from e
    return name


def connect(db: Any) -> tuple[Any, str]:
    """A DB-API connection and its sqlglot dialect, from a connection, a path or DataFrames."""
    if isinstance(db, sqlite3.Connection):
        return db, "sqlite"
    if isinstance(db, (str, Path)):
        path = Path(db)
        if not path.is_file():
            raise ExplainError(f"no database file at {path}")
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True), "sqlite"
    if isinstance(db, dict):
        con = sqlite3.connect(":memory:")
        for name, df in db.items():
            df.to_sql(name, con, index=False)
        return con, "sqlite"
    if type(db).__module__.startswith("duckdb"):
        return db, "duckdb"
    raise ExplainError(f"cannot run SQL on a {type(db).__name__}; give a sqlite3 connection, "
                       "a .sqlite file, a DuckDB connection or a dict of DataFrames")


class _Runner:
    def __init__(self, con: Any, dialect: str, timeout: float) -> None:
        self.con, self.dialect, self.timeout = con, dialect, timeout

    def rows(self, query: exp.Expression) -> list[tuple]:
        sql = query.sql(dialect=self.dialect)
        if isinstance(self.con, sqlite3.Connection):
            deadline = time.monotonic() + self.timeout
            self.con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10000)
            try:
                cur = self.con.execute(sql)
                return [tuple(r) for r in cur.fetchall()]
            except sqlite3.OperationalError as e:
                if "interrupted" in str(e):
                    raise ExplainError(f"the query ran longer than {self.timeout:g} s") from e
                raise
            finally:
                self.con.set_progress_handler(None, 0)
        return [tuple(r) for r in self.con.execute(sql).fetchall()]

    def count(self, query: exp.Select) -> int:
        inner = query.copy()
        if isinstance(inner, exp.Select) and not inner.expressions:
            inner = inner.select("1")
        outer = exp.select("COUNT(*)").from_(inner.subquery("q"))
        return int(self.rows(outer)[0][0])

    def columns(self, query: exp.Expression) -> tuple[list[str], list[tuple]]:
        sql = query.sql(dialect=self.dialect)
        cur = self.con.execute(sql)
        cols = [d[0] for d in cur.description or []]
        return cols, [tuple(r) for r in cur.fetchmany(3)]


def _partial(select: exp.Select, upto: str, joins: int = 0) -> exp.Select:
    """The query with only the clauses up to ``upto`` (projections replaced by ``*``)."""
    order = ["from", "joins", "where", "group", "having"]
    q = exp.Select()
    if select.args.get("with_"):
        q.set("with_", select.args["with_"].copy())
    q.set("from_", select.args["from_"].copy())
    keep = order[: order.index(upto) + 1]
    if "joins" in keep and select.args.get("joins"):
        n = joins if upto == "joins" else len(select.args["joins"])
        q.set("joins", [j.copy() for j in select.args["joins"][:n]])
    for key in ("where", "group", "having"):
        if key in keep and select.args.get(key):
            q.set(key, select.args[key].copy())
    q.set("expressions", [exp.Literal.number(1)] if "group" in keep and select.args.get("group")
          else [exp.Star()])
    return q


def _describe_projection(e: exp.Expression) -> str:
    alias = e.alias_or_name
    inner = e.this if isinstance(e, exp.Alias) else e
    if inner.find(exp.Window):
        w = inner.find(exp.Window)
        return (f"`{alias}` = `{w.sql()}` (a window function: computed for every row over its "
                "partition, without merging rows)")
    agg = inner.find(exp.AggFunc)
    if agg is not None:
        word = _AGG_WORDS.get(agg.key, f"applies {agg.key.upper()} to")
        return f"`{alias}` {word} `{agg.this.sql() if agg.this else '*'}` per group"
    return f"`{alias}` = `{inner.sql()}`" if inner.sql() != alias else f"`{alias}`"


def _subquery_notes(node: exp.Expression | None, run: _Runner) -> list[str]:
    notes = []
    for sub in (node.find_all(exp.Subquery) if node is not None else []):
        inner = sub.this
        try:
            rows = run.rows(exp.select(sub.copy()))
            value = rows[0][0] if rows else None
            notes.append(f"the subquery `{inner.sql()}` gives {value!r}")
        except Exception:  # noqa: BLE001 - correlated or multi-row: described, not valued
            notes.append(f"the subquery `{inner.sql()}` is evaluated for each row (it refers "
                         "to the outer query)")
    for e in (node.find_all(exp.Exists) if node is not None else []):
        notes.append(f"`{e.sql()}` tests, for each row, whether the subquery finds a match")
    return notes


def _plural(n: int, word: str = "row") -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def explain_sql(sql: str, db: Any, dialect: str = "sqlite",
                timeout: float = TIMEOUT_S) -> Explanation:
    """Explain one SQL query clause by clause, with the row count after each clause."""
    _dialect(dialect)
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except sqlglot.errors.ParseError as e:
        raise ExplainError(f"the SQL does not parse ({dialect}): {str(e).splitlines()[0]}") from e
    if len(statements) != 1:
        raise ExplainError(f"give one SQL statement; found {len(statements)}")
    tree = statements[0]
    con, con_dialect = connect(db)
    run = _Runner(con, con_dialect, timeout)
    steps: list[Step] = []

    def add(clause: exp.Expression | None, what: str, did: str, facts: dict) -> None:
        code = clause.sql(dialect=dialect) if clause is not None else ""
        steps.append(Step(line=len(steps) + 1, end_line=len(steps) + 1, code=code, what=what,
                          did=did, facts=facts))

    if not isinstance(tree, (exp.Select, exp.Union, exp.Intersect, exp.Except)):
        add(tree, f"A `{tree.key.upper()}` statement: it changes the database, so it is "
                  "explained but not run.", "Not run.", {})
        return Explanation(language="sql", source=sql, steps=steps)
    try:
        if not isinstance(tree, exp.Select) or not tree.args.get("from_"):
            n = run.count(tree)
            add(tree, "Combines query results." if not isinstance(tree, exp.Select)
                else "Computes values without reading a table.",
                f"Returns {_plural(n)}.", {"rows": n})
            return Explanation(language="sql", source=sql, steps=steps)
        for cte in (tree.args["with_"].expressions if tree.args.get("with_") else []):
            q = exp.select("*").from_(cte.alias)
            q.set("with_", tree.args["with_"].copy())
            n = run.count(q)
            add(cte, f"Defines `{cte.alias}`, a named intermediate result used below.",
                f"`{cte.alias}` has {_plural(n)}.", {"cte": cte.alias, "rows": n})
        src = tree.args["from_"].this
        n_from = run.count(_partial(tree, "from"))
        label = src.sql(dialect=dialect)
        add(tree.args["from_"], f"Reads the rows of `{label}`.",
            f"Starts from {_plural(n_from)}.", {"rows": n_from})
        prev = n_from
        for k, j in enumerate(tree.args.get("joins") or [], start=1):
            n = run.count(_partial(tree, "joins", k))
            side = (j.side or j.kind or "INNER").upper()
            on = j.args.get("on")
            kind = {"LEFT": "keeping every row on the left even without a match",
                    "RIGHT": "keeping every row on the right even without a match",
                    "FULL": "keeping unmatched rows of both sides",
                    "CROSS": "pairing every row with every row"}.get(
                side, "keeping only rows that have a match")
            add(j, f"Joins `{j.this.sql(dialect=dialect)}` ({side} JOIN, {kind})"
                   + (f" on `{on.sql(dialect=dialect)}`" if on is not None else "") + ".",
                f"{_plural(prev)} become {_plural(n)}.", {"rows_before": prev, "rows": n})
            prev = n
        where = tree.args.get("where")
        if where is not None:
            n = run.count(_partial(tree, "where"))
            notes = _subquery_notes(where, run)
            add(where, f"Keeps only the rows where `{where.this.sql(dialect=dialect)}`."
                + (" Here " + "; ".join(notes) + "." if notes else ""),
                f"Keeps {n} of {_plural(prev)}.", {"rows_before": prev, "rows": n})
            prev = n
        group = tree.args.get("group")
        if group is not None:
            n = run.count(_partial(tree, "group"))
            keys = ", ".join(f"`{g.sql(dialect=dialect)}`" for g in group.expressions)
            add(group, f"Groups the rows by {keys}: one output row per distinct value"
                + ("s" if len(group.expressions) > 1 else "") + ".",
                f"{_plural(prev)} form {_plural(n, 'group')}.",
                {"rows_before": prev, "rows": n, "groups": n})
            prev = n
        having = tree.args.get("having")
        if having is not None:
            n = run.count(_partial(tree, "having"))
            add(having, f"Keeps only the groups where `{having.this.sql(dialect=dialect)}`.",
                f"Keeps {n} of {_plural(prev, 'group')}.", {"rows_before": prev, "rows": n})
            prev = n
        core = tree.copy()
        for key in ("order", "limit", "offset"):
            core.set(key, None)
        n_sel = run.count(core)
        cols, _ = run.columns(core)
        proj = "; ".join(_describe_projection(e) for e in tree.expressions)
        distinct = " Removes duplicate rows (DISTINCT)." if tree.args.get("distinct") else ""
        notes = []
        for e in tree.expressions:
            notes += _subquery_notes(e, run)
        add(exp.select(*[e.copy() for e in tree.expressions]),
            f"Chooses the output columns: {proj}.{distinct}"
            + (" Here " + "; ".join(notes) + "." if notes else ""),
            f"{_plural(n_sel)} with the columns {', '.join(cols)}.",
            {"rows_before": prev, "rows": n_sel, "columns": cols})
        prev = n_sel
        order = tree.args.get("order")
        if order is not None:
            keys = ", ".join(f"`{o.this.sql(dialect=dialect)}` "
                             f"{'descending' if o.args.get('desc') else 'ascending'}"
                             for o in order.expressions)
            add(order, f"Sorts the rows by {keys}.", f"Still {_plural(prev)}, now in order.",
                {"rows": prev})
        limit = tree.args.get("limit")
        if limit is not None:
            n = run.count(tree)
            add(limit, f"Keeps the first {limit.expression.sql()} rows.",
                f"Keeps {n} of {_plural(prev)}.", {"rows_before": prev, "rows": n})
            prev = n
        final_cols, head = run.columns(tree)
        steps[-1].facts["result_columns"] = final_cols
        steps[-1].facts["first_rows"] = [list(r) for r in head]
    except (sqlite3.Error, RuntimeError) as e:
        raise ExplainError(f"the query fails on this database: {e}") from e
    except Exception as e:  # duckdb and other drivers raise their own error classes
        if isinstance(e, ExplainError):
            raise
        raise ExplainError(f"the query fails on this database: {e}") from e
    return Explanation(language="sql", source=sql, steps=steps)
