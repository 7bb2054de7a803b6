"""SQL answers checked against the live schema with sqlglot: parse, check, fix, transpile.

``validate_sql`` reads the model's text as one SQL statement, refuses what is not a query or
names tables that do not exist, and runs the SQL rules (``sql_rules.RULES``, one module each)
on the rest: they check every column against the connection's real tables, fix the slips the
schema or the request settles, and report each fix. The query comes back transpiled to the
connection's dialect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError, TokenError

from qcoder_ds.copilot import sql_rules
from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.sql_rules.base import SqlContext
from qcoder_ds.copilot.sql_rules.engine import run
from qcoder_ds.copilot.validate import Issue, did_you_mean

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


def validate_sql(sql: str, info: ConnectionInfo, read: str | None = None,
                 request: str | None = None) -> SqlCheck:
    """Parse ``sql`` (in dialect ``read``, default the connection's), check every table and
    column against ``info``, fix what the rules can, and return it transpiled to the
    connection's dialect. With the ``request`` it answers, joined tables that neither the
    query nor the request uses, and an aggregate selected only to rank by, are dropped
    (reported as fixes)."""
    tree, refused = _statement(sql, read or info.dialect)
    if tree is None:
        return SqlCheck(sql, refused)
    issues = _statement_issues(tree, info)
    blocked = bool(issues) or not isinstance(tree, exp.Query)
    state = run(sql_rules.RULES, tree, SqlContext(info, request), blocked=blocked)
    return SqlCheck(state.sql, issues + state.issues)


def _statement(sql: str, read: str) -> tuple[exp.Expression | None, list[Issue]]:
    """The one query or write statement of ``sql``, or the issue that says why there is none."""
    if not sql.strip():
        return None, [Issue("sql", "the answer contains no SQL query")]
    if not _SQL_START.match(sql):
        return None, [Issue("sql", f"not a SQL query: {sql.strip()[:80]!r}")]
    junk = _not_text(sql)
    if junk:
        return None, [Issue("sql", f"not a SQL query: it contains {junk}")]
    statements, problem = _parse(sql, read)
    if problem is not None:
        return None, [problem]
    if len(statements) != 1:
        return None, [Issue("sql", f"expected one SQL statement, got {len(statements)}")]
    tree = statements[0]
    if isinstance(tree, exp.Command) or not isinstance(tree, (exp.Query, *_WRITES)):
        return None, [Issue("sql", f"not a SQL query: {sql.strip()[:80]!r}")]
    return tree, []


def _statement_issues(tree: exp.Expression, info: ConnectionInfo) -> list[Issue]:
    """A write, reported as unsafe; or the tables of a query that do not exist. Either stops
    the rules that check columns (only the reading of the text as its dialect still runs)."""
    if isinstance(tree, _WRITES):
        return [Issue("unsafe", f"the query modifies the database ({tree.key.upper()}); "
                                "the copilot only writes read-only queries", severity="warning")]
    cte_names = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    tables_lower = {t.lower(): t for t in info.tables}
    unknown = [t.name for t in tree.find_all(exp.Table)
               if t.name and t.name.lower() not in tables_lower and t.name.lower() not in cte_names]
    hint = lambda name: did_you_mean(name, list(info.tables), ignore_case=True)  # noqa: E731
    return [Issue("sql", f"no table named {name!r}{hint(name)}; "
                         f"the tables are {sorted(info.tables)}")
            for name in dict.fromkeys(unknown)]


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


def sql_cell(sql: str, info: ConnectionInfo) -> str:
    """A notebook cell that runs ``sql`` on the user's connection and shows a DataFrame."""
    body = sql.strip().rstrip(";")
    quoted = '"""\n' + body.replace('"""', '\\"\\"\\"') + '\n"""'
    if info.kind == "duckdb":
        return f"query = {quoted}\nresult = {info.name}.execute(query).df()\nresult"
    return (f"import pandas as pd\n\nquery = {quoted}\n"
            f"result = pd.read_sql_query(query, {info.name})\nresult")
