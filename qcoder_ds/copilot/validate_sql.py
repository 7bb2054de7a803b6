"""SQL answers checked against the live schema with sqlglot: parse, qualify, transpile.

The raw model's SQL fails mostly with "no such column" (RESEARCH.md). Qualifying every column
against the connection's real tables finds those before the query runs, and the message names
the real columns, which is what the repair prompt needs.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError, SqlglotError, TokenError
from sqlglot.optimizer.qualify import qualify

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.fix_sql import (
    compared_subqueries,
    conjuncts,
    drop_ranking_column,
    drop_unlinked_joins,
    drop_unused_joins,
    fix_in_keys,
    fix_join_keys,
    fix_sql,
)
from qcoder_ds.copilot.validate import Issue

log = logging.getLogger(__name__)

_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Drop, exp.Create, exp.Alter, exp.Merge,
           exp.TruncateTable)

_SQL_START = re.compile(r"\s*(\(|--|/\*|select|with|values|insert|update|delete|create|drop|"
                        r"alter|replace|merge|truncate|pragma|explain|show|describe|from)\b",
                        re.I)


@dataclass
class SqlCheck:
    """The query rewritten for the connection's dialect, and what is wrong with it."""

    sql: str
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(i.severity == "error" for i in self.issues)


def _close(word: str, options: list[str]) -> str:
    low = {o.lower(): o for o in options}
    hits = difflib.get_close_matches(word.lower(), list(low), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(low[h]) for h in hits)}?)" if hits else ""


def validate_sql(sql: str, info: ConnectionInfo, read: str | None = None,
                 request: str | None = None) -> SqlCheck:
    """Parse ``sql`` (in dialect ``read``, default the connection's), check every table and
    column against ``info``, and return it transpiled to the connection's dialect. With the
    ``request`` it answers, joined tables that neither the query nor the request uses, and an
    aggregate selected only to rank by, are dropped (reported as fixes)."""
    read = read or info.dialect
    if not sql.strip():
        return SqlCheck(sql, [Issue("sql", "the answer contains no SQL query")])
    if not _SQL_START.match(sql):
        return SqlCheck(sql, [Issue("sql", f"not a SQL query: {sql.strip()[:80]!r}")])
    junk = _not_text(sql)
    if junk:
        return SqlCheck(sql, [Issue("sql", f"not a SQL query: it contains {junk}")])
    statements, problem = _parse(sql, read)
    if problem is not None:
        return SqlCheck(sql, [problem])
    if len(statements) != 1:
        return SqlCheck(sql, [Issue("sql", f"expected one SQL statement, got {len(statements)}")])
    tree = statements[0]
    issues: list[Issue] = []
    if isinstance(tree, exp.Command) or not isinstance(tree, (exp.Query, *_WRITES)):
        return SqlCheck(sql, [Issue("sql", f"not a SQL query: {sql.strip()[:80]!r}")])
    if info.dialect == "sqlite":
        tree = _sqlite_quoted_strings(tree, info)
    if isinstance(tree, _WRITES):
        issues.append(Issue("unsafe", f"the query modifies the database ({tree.key.upper()}); "
                                      "the copilot only writes read-only queries",
                            severity="warning"))
    out_sql = tree.sql(dialect=info.dialect, pretty=True)
    if not isinstance(tree, (exp.Query,)):
        return SqlCheck(out_sql, issues)
    cte_names = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    tables_lower = {t.lower(): t for t in info.tables}
    unknown_tables = []
    for t in tree.find_all(exp.Table):
        name = t.name
        if name and name.lower() not in tables_lower and name.lower() not in cte_names:
            unknown_tables.append(name)
    for name in dict.fromkeys(unknown_tables):
        issues.append(Issue("sql", f"no table named {name!r}{_close(name, list(info.tables))}; "
                                   f"the tables are {sorted(info.tables)}"))
    if unknown_tables:
        return SqlCheck(out_sql, issues)
    problem = _schema_issue(tree, info)
    if problem is not None and problem.severity == "error":
        fixed, notes = _fixed(fix_sql, tree, info)
        if notes and _schema_issue(fixed, info) is None:
            tree = fixed
            out_sql = fixed.sql(dialect=info.dialect, pretty=True)
            problem = Issue("sql-fixed", "fixed from the schema: " + "; ".join(notes),
                            severity="warning")
    if problem is not None:
        issues.append(problem)
    if problem is None or problem.severity == "warning":
        for fix in (fix_join_keys, fix_in_keys):
            rejoined, changed = _fixed(fix, tree, info)
            if changed and _schema_issue(rejoined, info) is None:
                tree = rejoined
                out_sql = rejoined.sql(dialect=info.dialect, pretty=True)
                issues.append(Issue("sql-fixed", "matched keys by the foreign key: "
                                    + "; ".join(changed), severity="warning"))
    if problem is None or problem.severity == "warning":
        unlinked, dropped = _fixed(drop_unlinked_joins, tree)
        if dropped and _schema_issue(unlinked, info) is None:
            tree = unlinked
            out_sql = unlinked.sql(dialect=info.dialect, pretty=True)
            issues.append(Issue("sql-fixed", "dropped joined table(s) that the join condition "
                                "does not link, which paired every row with every row: "
                                + ", ".join(dropped), severity="warning"))
    if problem is None or problem.severity == "warning":
        never = contradiction(tree) or outer_pick(tree, info)
        if never:
            issues.append(never)
    if request and (problem is None or problem.severity == "warning"):
        trimmed, dropped = _fixed(drop_unused_joins, tree, info, request)
        if dropped and _schema_issue(trimmed, info) is None:
            tree = trimmed
            out_sql = trimmed.sql(dialect=info.dialect, pretty=True)
            issues.append(Issue("sql-fixed", "dropped joined table(s) that nothing uses and the "
                                "request does not mention: " + ", ".join(dropped),
                                severity="warning"))
        trimmed, column = _fixed(drop_ranking_column, tree, request)
        if column and _schema_issue(trimmed, info) is None:
            out_sql = trimmed.sql(dialect=info.dialect, pretty=True)
            issues.append(Issue("sql-fixed", f"dropped {column} from the result: it only ranks "
                                "the rows, and the request asks which, not how many",
                                severity="warning"))
    return SqlCheck(out_sql, issues)


def _parse(sql: str, read: str) -> tuple[list[exp.Expression], Issue | None]:
    """The statements of ``sql``, or the issue that says why it does not parse. sqlglot
    raises its base error class in several forms (``ParseError``; ``TokenError`` for an
    unterminated string or quoted name, which the model writes when it stops mid-literal),
    and a query nested past Python's limit raises ``RecursionError``: all become issues."""
    try:
        return [s for s in sqlglot.parse(sql, read=read) if s is not None], None
    except ParseError as e:
        first = e.errors[0] if e.errors else {}
        msg = first.get("description") or str(e).splitlines()[0]
        return [], Issue("sql", f"SQL syntax error: {msg}", first.get("line"))
    except TokenError as e:
        return [], Issue("sql", "SQL syntax error: the query could not be split into tokens "
                         f"(an unterminated string or quoted name?): {str(e)[:120]}")
    except SqlglotError as e:
        return [], Issue("sql", f"SQL syntax error: {str(e).splitlines()[0][:200]}")
    except RecursionError:
        return [], Issue("sql", "SQL syntax error: the query is nested too deeply to read")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _not_text(sql: str) -> str | None:
    """What makes ``sql`` binary junk rather than text: control characters (NUL bytes...)
    or broken Unicode (lone surrogates), which no database would take as a query."""
    if _CONTROL.search(sql):
        return "control characters (binary data)"
    try:
        sql.encode("utf-8")
    except UnicodeError:
        return "characters that are not valid text (broken Unicode)"
    return None


def _fixed(fix, tree: exp.Expression, *args):
    """``fix(tree, *args)``, or no change when the fix fails: each one rewrites SQL the model
    wrote by a rule, and a query its rule did not foresee must be left as it was, not cost
    the user the answer."""
    try:
        return fix(tree, *args)
    except Exception:  # noqa: BLE001 - any failure of a rewrite means "no rewrite"
        log.debug("%s failed on %s", fix.__name__, tree.sql(), exc_info=True)
        return tree, []


def contradiction(tree: exp.Expression) -> Issue | None:
    """An error when a WHERE clause can never hold: one column equal to two different values
    (``Year = 2014 AND Year = 2015``), or a range that is empty (``Age > 40 AND Age < 30``).
    The small model writes this for "in both 2014 and 2015", which a row cannot be; the query
    runs and returns nothing, so the execution check alone would pass it."""
    for where in tree.find_all(exp.Where):
        equal: dict[str, set[str]] = {}
        low: dict[str, tuple[float, bool]] = {}  # the tightest bound, and whether it is strict
        high: dict[str, tuple[float, bool]] = {}
        shown: dict[str, list[str]] = {}
        for c in conjuncts(where.this):
            if not isinstance(c, (exp.EQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
                continue
            col, lit, flip = c.this, c.expression, False
            if isinstance(col, exp.Literal) and isinstance(lit, exp.Column):
                col, lit, flip = lit, col, True
            if not isinstance(col, exp.Column) or not isinstance(lit, exp.Literal):
                continue
            key = col.sql().lower()
            shown.setdefault(key, []).append(c.sql())
            if isinstance(c, exp.EQ):
                equal.setdefault(key, set()).add(lit.name)
                continue
            try:
                bound = (float(lit.name), isinstance(c, (exp.GT, exp.LT)))
            except ValueError:
                continue
            if isinstance(c, (exp.GT, exp.GTE)) != flip:
                low[key] = max(low.get(key, bound), bound)
            else:
                high[key] = min(high.get(key, bound), bound, key=lambda b: (b[0], not b[1]))
        for key in shown:
            empty_range = key in low and key in high and (
                low[key][0] > high[key][0] or
                (low[key][0] == high[key][0] and (low[key][1] or high[key][1])))
            if len(equal.get(key, ())) > 1 or empty_range:
                return Issue("sql", "the WHERE clause can never be true: "
                             + " AND ".join(shown[key]) + " (a row holds one value). For rows "
                             "matching either, use OR or IN; for what has both, INTERSECT two "
                             "queries")
    return None


def outer_pick(tree: exp.Expression, info: ConnectionInfo) -> Issue | None:
    """An error when ``x IN (SELECT y FROM t)`` (or ``x = (SELECT y ...)``) picks a ``y`` that
    ``t`` does not have: SQL then reads ``y`` from the outer query's row, so the subquery
    returns that row's own value and the test holds for every row (or, with NOT, none). The
    schema check passes it, since ``y`` is a column of the outer query."""
    cols = {t.lower(): {c.lower() for c in cs} for t, cs in info.tables.items()}
    for _, inner in compared_subqueries(tree):
        picked = inner.expressions[0]
        table = inner.args["from_"].this if inner.args.get("from_") else None
        if not isinstance(table, exp.Table) or table.name.lower() not in cols or \
                picked.name.lower() in cols[table.name.lower()] or \
                (picked.table and picked.table.lower() != table.alias_or_name.lower()):
            continue
        real = next(t for t in info.tables if t.lower() == table.name.lower())
        return Issue("sql", f"the subquery SELECT {picked.sql()} FROM {table.name} picks a "
                     f"column {real} does not have, so SQL takes {picked.name} from the outer "
                     f"row and the comparison holds for every row; {real}'s columns are "
                     f"{sorted(info.tables[real])}")
    return None


def _schema_issue(tree: exp.Expression, info: ConnectionInfo) -> Issue | None:
    """None when every column of ``tree`` resolves against the schema."""
    try:
        qualify(tree.copy(), schema=info.schema(), dialect=info.dialect,
                validate_qualify_columns=True, quote_identifiers=False)
    except OptimizeError as e:
        return _column_issue(str(e), tree, info)
    except (SqlglotError, RecursionError) as e:  # exotic syntax: report, do not crash
        return Issue("sql", f"could not check the query against the schema: {e}",
                     severity="warning")
    return None


def _sqlite_quoted_strings(tree: exp.Expression, info: ConnectionInfo) -> exp.Expression:
    """SQLite reads ``"France"`` as a string when no column has that name; so do we."""
    names = {c.lower() for cols in info.tables.values() for c in cols}

    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and not node.table:
            ident = node.this
            if isinstance(ident, exp.Identifier) and ident.quoted and \
                    ident.name.lower() not in names:
                return exp.Literal.string(ident.name)
        return node

    return tree.transform(fix)


def _column_issue(message: str, tree: exp.Expression, info: ConnectionInfo) -> Issue:
    """Turn sqlglot's message into one naming the real columns of the tables in the query."""
    used = {t.name.lower() for t in tree.find_all(exp.Table)}
    cols = {f"{t}.{c}" for t, cs in info.tables.items() if t.lower() in used for c in cs}
    bare = sorted({c.split(".", 1)[1] for c in cols})
    missing = None
    for prefix in ("Column '", "column '"):
        if prefix in message:
            missing = message.split(prefix, 1)[1].split("'", 1)[0]
    m = re.search(r"Unknown column: (\w+)", message)
    if missing is None and m:
        missing = m.group(1)
    owners = sorted(t for t, cs in info.tables.items()
                    if missing and missing.lower() in {c.lower() for c in cs})
    if owners:
        real = next(c for c in info.tables[owners[0]] if c.lower() == missing.lower())
        head = (f"column {real!r} is not in the table it is taken from; it is a column of "
                f"{', '.join(owners)} (join that table or use its alias)")
    elif missing:
        head = f"no column {missing!r}{_close(missing, bare)}"
    else:
        head = message.splitlines()[0]
    return Issue("sql", f"{head}; the tables used have columns {sorted(cols)[:60]}")


def sql_cell(sql: str, info: ConnectionInfo) -> str:
    """A notebook cell that runs ``sql`` on the user's connection and shows a DataFrame."""
    body = sql.strip().rstrip(";")
    quoted = '"""\n' + body.replace('"""', '\\"\\"\\"') + '\n"""'
    if info.kind == "duckdb":
        return f"query = {quoted}\nresult = {info.name}.execute(query).df()\nresult"
    return (f"import pandas as pd\n\nquery = {quoted}\n"
            f"result = pd.read_sql_query(query, {info.name})\nresult")
