"""Malformed model answers never become a traceback: every stage after generation turns them
into a failed check that says what is wrong.

The answers are the kinds a model writes when it goes wrong: unterminated strings and quotes,
code cut off mid-call, a code block that never closes, 10,000 repeated tokens, binary junk
(NUL bytes, broken Unicode), SQL in a Python block and Python in a SQL block, empty answers,
only comments, an answer cut at the token budget. Each runs through ``Copilot.ask`` (a
scripted engine stands in for the model; pandas, matplotlib and SQLite are real) for each task
kind, and each stage function is also fed the same junk directly.
"""

from __future__ import annotations

import pytest

from copilot.scripted import Cut, ScriptedEngine
from qcoder_ds.copilot.checks import (
    RUN_RULES,
    STATIC_RULES,
    Cell,
    apply,
    named_result,
)
from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.extract import drop_context_echo, extract_code, extract_sql
from qcoder_ds.copilot.pipeline import Copilot, Options
from qcoder_ds.copilot.repair import problems
from qcoder_ds.copilot.safety import check_safety
from qcoder_ds.copilot.sandbox import Limits, RunResult, Sandbox
from qcoder_ds.copilot.sql_values import check_values
from qcoder_ds.copilot.tasks import Task
from qcoder_ds.copilot.validate import (
    Kind,
    drop_rebinding,
    fix_old_pandas,
    fix_series_logic,
    validate_python,
)
from qcoder_ds.copilot.validate_sql import sql_cell, validate_sql


@pytest.fixture(scope="module")
def box():
    sb = Sandbox(Limits(timeout_s=8, sample_rows=200))
    yield sb
    sb.close()


def fence(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code}\n```"


BINARY = bytes(range(256)).decode("latin-1")

#: (name, answer, the check that fails, words of the first problem the repair is told)
PYTHON_JUNK = [
    ("unterminated string", fence("sales['region"), "parse", "unterminated string literal"),
    ("unterminated triple quote", fence('x = """abc'), "parse",
     "unterminated triple-quoted string"),
    ("truncated call", fence("sales.groupby('region')['revenue'].sum("), "parse",
     "'(' was never closed"),
    ("block never closes, code cut", "```python\nsales.groupby(", "parse",
     "'(' was never closed"),
    ("10,000 repeated words", "tok " * 10_000, "parse", "too long for Python's parser"),
    ("10,000 repeated names", fence("sales " * 10_000), "parse", "too long for Python's parser"),
    ("nesting past the parser", fence("1+" * 5_000 + "1"), "parse", "nested too deeply"),
    ("too many parentheses", fence("(" * 5_000), "parse", "too many nested parentheses"),
    ("binary junk", BINARY, "parse", "null bytes"),
    ("NUL byte in code", fence("sales\x00.sum()"), "parse", "null bytes"),
    ("lone surrogate", fence("x = '\ud800'"), "parse", "not valid text"),
    ("SQL in a Python block", fence("SELECT region, SUM(revenue) FROM sales GROUP BY region"),
     "parse", "SyntaxError: invalid syntax"),
    ("prose, no code", "I cannot help with that.", "parse", "SyntaxError: invalid syntax"),
    ("empty answer", "", "parse", "the answer contains no code"),
    ("only comments", fence("# total revenue per region\n# done"), "computes something",
     "computes nothing"),
    ("only imports and pass", fence("import pandas as pd\npass"), "computes something",
     "computes nothing"),
    ("only a string literal", fence('"""sum the revenue"""'), "computes something",
     "computes nothing"),
    ("cut at the token budget", Cut(fence("sales.groupby('region')['revenue'].sum()")),
     "complete answer", "stopped at the 384-token budget"),
]

SQL_JUNK = [
    ("unterminated string", fence("SELECT name FROM customers WHERE country = 'UK", "sql"),
     "schema", "could not be split into tokens"),
    ("unterminated quoted name", fence('SELECT "name FROM customers', "sql"), "schema",
     "could not be split into tokens"),
    ("bare unterminated string", "SELECT name FROM customers WHERE name = 'Ada", "schema",
     "could not be split into tokens"),
    ("truncated WHERE", fence("SELECT name FROM customers WHERE", "sql"), "schema",
     "SQL syntax error"),
    ("block never closes, query cut", "```sql\nSELECT name FROM", "schema",
     "SQL syntax error"),
    ("10,000 repeated keywords", "SELECT " * 10_000, "schema", "SQL syntax error"),
    ("nesting past the parser", fence("SELECT " + "(" * 3_000 + "1", "sql"), "schema",
     "nested too deeply"),
    ("binary junk", BINARY, "schema", "not a SQL query"),
    ("NUL byte in query", fence("SELECT name\x00 FROM customers", "sql"), "schema",
     "control characters"),
    ("lone surrogate", fence("SELECT '\ud800' FROM customers", "sql"), "schema",
     "not valid text"),
    ("Python in a SQL block", fence("import pandas as pd\ndf.head()", "sql"), "schema",
     "not a SQL query"),
    ("prose, no query", "The answer is 42.", "schema", "not a SQL query"),
    ("empty answer", "", "schema", "contains no SQL query"),
    ("only a comment", fence("-- all the names", "sql"), "schema", "not a SQL query"),
    ("cut at the token budget", Cut(fence("SELECT name FROM customers", "sql")),
     "complete answer", "stopped at the 384-token budget"),
]


def _ask(box, answer: str, task: Task, request: str, ns: dict):
    eng = ScriptedEngine([answer])
    return Copilot(eng, box).ask(request, ns, Options(task=task, repairs=0))


def _fails_with(ans, check: str, words: str) -> None:
    assert not ans.ok
    assert ans.checks[check] == "failed", ans.checks
    said = problems(ans.attempts[-1])
    assert said and words in said[0], said
    assert all(i.kind != Kind.CHECK_FAILED for i in ans.attempts[-1].issues)  # no bug hidden
    assert "\x00" not in ans.cell and "\ud800" not in ans.cell  # the cell can be shown
    assert ans.summary().startswith("NOT passing the checks")


@pytest.mark.parametrize("name,answer,check,words", PYTHON_JUNK, ids=[r[0] for r in PYTHON_JUNK])
def test_malformed_pandas_answers_fail_a_check(box, sales, name, answer, check, words):
    ans = _ask(box, answer, Task.PANDAS, "total revenue per region", {"sales": sales})
    _fails_with(ans, check, words)


@pytest.mark.parametrize("name,answer,check,words", PYTHON_JUNK, ids=[r[0] for r in PYTHON_JUNK])
def test_malformed_plot_answers_fail_a_check(box, sales, name, answer, check, words):
    ans = _ask(box, answer, Task.PLOT, "total revenue per region as a bar chart",
               {"sales": sales})
    _fails_with(ans, check, words)


@pytest.mark.parametrize("name,answer,check,words", SQL_JUNK, ids=[r[0] for r in SQL_JUNK])
def test_malformed_sql_answers_fail_a_check(box, shop_db, name, answer, check, words):
    conn, _ = shop_db
    ans = _ask(box, answer, Task.SQL, "names of all customers", {"conn": conn})
    _fails_with(ans, check, words)


def test_the_token_error_of_an_unterminated_sql_string_goes_to_the_repair(box, shop_db):
    """The crash seen in ``qcoder eval`` on Spider: sqlglot's TokenError, now a failed check
    whose message the repair gets, and the repaired query is served."""
    conn, _ = shop_db
    eng = ScriptedEngine([fence("SELECT name FROM customers WHERE country = 'UK", "sql"),
                          fence("SELECT name FROM customers WHERE country = 'UK'", "sql")])
    ans = Copilot(eng, box).ask("customers in the UK", {"conn": conn},
                                Options(task=Task.SQL, repairs=1))
    assert ans.ok and ans.repairs == 1
    assert "could not be split into tokens" in eng.calls[1][-1]["content"]


def test_recoverable_answers_are_served(box, sales, shop_db):
    """Malformed only on the surface: a block that never closes around complete code, and a
    query in a Python block, are read and checked like any answer."""
    ans = _ask(box, "```python\nsales.groupby('region')['revenue'].sum()", Task.PANDAS,
               "total revenue per region", {"sales": sales})
    assert ans.ok and ans.checks["one entry per region"] == "passed"
    conn, _ = shop_db
    ans = _ask(box, fence("SELECT name FROM customers"), Task.SQL, "names of all customers",
               {"conn": conn})
    assert ans.ok and "SELECT" in ans.sql


def test_junk_repairs_that_stay_junk_end_in_a_failed_answer(box, sales):
    eng = ScriptedEngine([BINARY, "tok " * 10_000, fence("sales['region")])
    ans = Copilot(eng, box).ask("total revenue per region", {"sales": sales},
                                Options(task=Task.PANDAS, repairs=2))
    assert not ans.ok and len(ans.attempts) == 3 and ans.checks["parse"] == "failed"


# --------------------------------------------------------------------------- stage by stage

STAGE_JUNK = [
    "", "   ", "```", "```python", "```sql\n", "```python\nx = 1", "'", '"', "'''", "`",
    "sales['region", "SELECT 'abc FROM customers", 'SELECT "abc FROM customers',
    "SELECT [name FROM customers", "SELECT x'zz'", "SELECT * FROM customers WHERE x = `y",
    "tok " * 10_000, "sales " * 10_000, "(" * 10_000, "[" * 5_000, "1+" * 5_000 + "1",
    "SELECT " + "(" * 3_000 + "1", "x.y" * 3_000, BINARY, "a\x00b", "\x00" * 100,
    "x = '\ud800'", "\udfff", "SELECT '\ud800' FROM customers", "# comment\n# other",
    "-- only a comment", "/* c */", "```sql\nimport pandas as pd\n```",
    "```python\nSELECT name FROM customers\n```", "def f(:\n", "lambda: (yield)", "f'{'",
    "match x:\n case", "x: int = ", "\t\tsales.head()\n  x=1", "sales.query('region == \"x')",
    "SELECT name FROM customers UNION", "WITH", "SELECT", "SELECT * FROM",
]
SCHEMA = ConnectionInfo("conn", "sqlite", "sqlite", tables={
    "customers": {"customer_id": "INTEGER", "name": "TEXT", "country": "TEXT"}})


@pytest.mark.parametrize("junk", STAGE_JUNK, ids=range(len(STAGE_JUNK)))
def test_every_stage_takes_junk_without_raising(sales, shop_db, junk):
    conn, _ = shop_db
    ns = {"sales": sales}
    context = "# DataFrame `sales`: 240 rows x 5 columns"
    for text in (junk, extract_code(junk, "python"), extract_sql(junk)):
        assert isinstance(drop_context_echo(text, context)[0], str)
        issues = validate_python(text, ns, "result")
        assert all(isinstance(i.message, str) and i.message for i in issues)
        assert isinstance(drop_rebinding(text, ns)[0], str)
        assert isinstance(fix_series_logic(text, ns)[0], str)
        assert isinstance(fix_old_pandas(text)[0], str)
        assert isinstance(check_safety(text), list)
        checked = validate_sql(text, SCHEMA, request="names of all customers")
        assert checked.ok or checked.issues[0].message
        assert isinstance(check_values(text, SCHEMA, conn)[0], str)
        assert isinstance(sql_cell(text, SCHEMA), str)
        named_result(text, ns)
        for task in (Task.PANDAS, Task.PLOT):
            cell = Cell(text, text, task, ns, run=RunResult(ok=True, value={"type": "x"}))
            apply(STATIC_RULES + RUN_RULES, cell)


@pytest.mark.parametrize("code,words", [
    ("sales['region", "unterminated string literal"),
    ("sales.groupby(", "'(' was never closed"),
    (BINARY, "null bytes"),
    ("tok " * 10_000, "too long for Python's parser"),
    ("1+" * 5_000 + "1", "nested too deeply"),
    ("x = '\ud800'", "not valid text"),
])
def test_validate_python_says_why_junk_does_not_parse(sales, code, words):
    issues = validate_python(code, {"sales": sales})
    assert [i.kind for i in issues] == [Kind.SYNTAX] and words in issues[0].message


@pytest.mark.parametrize("sql,words", [
    ("SELECT name FROM customers WHERE country = 'UK", "could not be split into tokens"),
    ('SELECT "name FROM customers', "could not be split into tokens"),
    ("SELECT x'zz'", "could not be split into tokens"),
    ("SELECT " + "(" * 3_000 + "1", "nested too deeply"),
    ("SELECT name\x00 FROM customers", "control characters"),
    ("SELECT '\ud800' FROM customers", "not valid text"),
    ("-- only a comment", "not a SQL query"),
])
def test_validate_sql_says_why_junk_is_no_query(sql, words):
    checked = validate_sql(sql, SCHEMA)
    assert not checked.ok and words in checked.issues[0].message
