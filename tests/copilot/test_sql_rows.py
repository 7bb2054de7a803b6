"""The checks on the rows a query returned: a join that lists one row of the answer's table
more than once (the fan-out probe), and a NULL test that found nothing.

Which queries get the probe is a table of cases; whether a result's duplicate rows are one
row repeated by the join or equal values of different rows is told by the real database, in
the sandbox, through ``Copilot.check`` as ``ask`` runs it.
"""

import sqlite3

import pytest

from qcoder_ds.copilot.context import describe_connection
from qcoder_ds.copilot.pipeline import Copilot, Options
from qcoder_ds.copilot.sandbox import Limits
from qcoder_ds.copilot.sql_rows import null_test_issue, probe
from qcoder_ds.copilot.tasks import Task

DB = """
    CREATE TABLE country (Code TEXT PRIMARY KEY, Name TEXT, Region TEXT);
    CREATE TABLE language (CountryCode TEXT REFERENCES country(Code), Language TEXT);
    CREATE TABLE paragraph (id INTEGER PRIMARY KEY, doc INTEGER, text TEXT);
    CREATE TABLE document (id INTEGER PRIMARY KEY, name TEXT);
    INSERT INTO country VALUES ('NLD', 'Netherlands', 'Western Europe'),
                               ('BEL', 'Belgium', 'Western Europe'),
                               ('ABW', 'Aruba', 'Caribbean');
    INSERT INTO language VALUES ('NLD', 'Dutch'), ('NLD', 'English'), ('BEL', 'Dutch'),
                                ('ABW', 'Dutch'), ('ABW', 'English');
    INSERT INTO document VALUES (1, 'Reviews');
    INSERT INTO paragraph VALUES (1, 1, 'Korea'), (2, 1, 'Korea'), (3, 1, 'Japan');
"""

REPEATS = ("SELECT T1.Name FROM country AS T1 JOIN language AS T2 ON T1.Code = T2.CountryCode "
           "WHERE T2.Language = 'Dutch' OR T2.Language = 'English'")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "world.sqlite"
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.executescript(DB)
    conn.commit()
    yield conn
    conn.close()


@pytest.mark.parametrize("sql,table", [
    (REPEATS, "country"),
    ("SELECT T2.Language FROM country AS T1 JOIN language AS T2 ON T1.Code = T2.CountryCode",
     "language"),
    ("SELECT DISTINCT T1.Name FROM country AS T1 JOIN language AS T2 "
     "ON T1.Code = T2.CountryCode", None),
    ("SELECT Name FROM country", None),  # no join
    ("SELECT T1.Name, COUNT(*) FROM country AS T1 JOIN language AS T2 "
     "ON T1.Code = T2.CountryCode GROUP BY T1.Name", None),
    ("SELECT T1.Name, T2.Language FROM country AS T1 JOIN language AS T2 "
     "ON T1.Code = T2.CountryCode", None),  # columns of two tables: each pair is a row
    ("SELECT T1.Name FROM country AS T1 JOIN language AS T2 ON T1.Code = T2.CountryCode "
     "LIMIT 1", None),
    ("SELECT Name FROM country AS T1 JOIN language AS T2 ON T1.Code = T2.CountryCode",
     None),  # an unqualified column: its table is not read here
])
def test_which_queries_get_the_probe(world, sql, table):
    found = probe(sql, describe_connection("conn", world))
    assert (found.table if found else None) == table
    if found:
        assert "COUNT(DISTINCT T1.rowid)" in found.cell or "COUNT(DISTINCT T2.rowid)" in \
            found.cell


def test_the_probe_cell_holds_any_query_text(world):
    # a query that ends in a quote once ended the cell's string literal early
    sql = REPEATS + ' AND T1.Name <> \'say "hi"\''
    found = probe(sql, describe_connection("conn", world))
    ns = {"conn": world}
    exec(compile(found.cell, "probe", "exec"), ns)
    assert ns["result"] == (5, 3)


@pytest.fixture(scope="module")
def copilot():
    c = Copilot(None)  # no engine: a model call would fail
    yield c
    if c.sandbox is not None:
        c.sandbox.close()


def check(copilot, conn, request, sql):
    return copilot.check(request, {"conn": conn}, sql,
                         Options(task=Task.SQL, limits=Limits(timeout_s=10)))


def test_a_join_that_repeats_rows_is_not_ok(copilot, world):
    ans = check(copilot, world, "Which countries speak Dutch or English?", REPEATS)
    assert not ans.ok
    assert ans.checks["each row once"] == "failed"
    assert ans.checks["ran on sample"] == "passed"  # it runs: only the probe tells
    issue = next(i for i in ans.attempts[-1].issues if i.kind == "repeated-rows")
    assert "the join lists rows of country more than once: 5 rows come from 3 rows" in \
        issue.message


def test_distinct_rows_with_equal_values_pass(copilot, world):
    # two paragraphs say "Korea": equal values, different rows, nothing repeated by the join
    ans = check(copilot, world, "Paragraph texts of the document Reviews",
                "SELECT T1.text FROM paragraph AS T1 JOIN document AS T2 ON T1.doc = T2.id "
                "WHERE T2.name = 'Reviews'")
    assert ans.ok and ans.checks["each row once"] == "passed"


def test_distinct_fixes_it(copilot, world):
    ans = check(copilot, world, "Which countries speak Dutch or English?",
                REPEATS.replace("SELECT", "SELECT DISTINCT", 1))
    assert ans.ok and "each row once" not in ans.checks


def test_a_logic_error_is_reported_as_one_not_as_the_schema(copilot, world):
    ans = check(copilot, world, "Countries in both regions",
                "SELECT Name FROM country WHERE Region = 'Caribbean' AND "
                "Region = 'Western Europe'")
    assert not ans.ok
    assert ans.checks["query logic"] == "failed" and ans.checks["schema"] == "passed"


# --------------------------------------------------------------------------- a NULL test


NO_LANGUAGE = "SELECT Code FROM language WHERE Language IS NULL"


@pytest.mark.parametrize("sql,rows,fires", [
    (NO_LANGUAGE, 0, True),  # a country with no language has no row in language at all
    ("SELECT T1.Name FROM country AS T1 JOIN language AS T2 ON T1.Code = T2.CountryCode "
     "WHERE T2.Language IS NULL", 0, True),
    (NO_LANGUAGE, 2, False),  # it found rows: the column holds NULLs
    ("SELECT T1.Name FROM country AS T1 LEFT JOIN language AS T2 ON T1.Code = T2.CountryCode "
     "WHERE T2.CountryCode IS NULL", 0, False),  # the anti-join: an honest empty answer
    ("SELECT Code FROM language WHERE NOT Language IS NULL", 0, False),
    ("SELECT Code FROM country WHERE Region = 'Mars'", 0, False),  # no NULL test
])
def test_a_null_test_that_finds_nothing(world, sql, rows, fires):
    issue = null_test_issue(sql, describe_connection("conn", world), {"shape": [rows, 1]})
    assert (issue is not None) is fires
    assert not fires or issue.kind == "sql-logic"


def test_a_null_test_that_finds_nothing_is_sent_back(copilot, world):
    ans = check(copilot, world, "Which countries have no language?", NO_LANGUAGE)
    assert not ans.ok
    assert ans.checks["its NULL test finds rows"] == "failed"
    assert "NOT IN" in next(i.message for i in ans.attempts[-1].issues
                            if "NULL test" in i.message or "no rows" in i.message)
