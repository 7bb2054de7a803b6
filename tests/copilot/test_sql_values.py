"""Needless joins dropped, and filter values looked up in a real SQLite and DuckDB database."""

import sqlite3

import pytest
import sqlglot

from qcoder_ds.copilot import context as ctxmod
from qcoder_ds.copilot.sql_values import check_values, filters
from qcoder_ds.copilot.validate_sql import validate_sql


@pytest.mark.parametrize("sql,request_text,dropped", [
    # the joined table is used only to join, and the request does not name it: dropped
    ("SELECT c.name FROM customers c JOIN orders o ON c.customer_id = o.customer_id "
     "WHERE c.country = 'UK'", "names of UK customers", "orders"),
    # unqualified columns are resolved against the schema first
    ("SELECT name FROM customers JOIN orders ON customers.customer_id = orders.customer_id",
     "every customer name", "orders"),
    # the request names the table: the join is the point (customers who have orders)
    ("SELECT c.name FROM customers c JOIN orders o ON c.customer_id = o.customer_id",
     "names of customers with orders", None),
    # the joined table's columns are used: kept
    ("SELECT c.name, o.amount FROM customers c JOIN orders o ON c.customer_id = o.customer_id",
     "name and amount", None),
    ("SELECT c.name FROM customers c JOIN orders o ON c.customer_id = o.customer_id "
     "WHERE o.amount > 10", "who spent over 10", None),
    # SELECT * reads every table
    ("SELECT * FROM customers c JOIN orders o ON c.customer_id = o.customer_id",
     "everything", None),
])
def test_unused_joins_are_dropped_unless_used_or_asked_for(shop, sql, request_text, dropped):
    r = validate_sql(sql, shop, request=request_text)
    assert r.ok
    if dropped is None:
        assert r.issues == [] and "JOIN" in r.sql
    else:
        assert "JOIN" not in r.sql and dropped not in r.sql.split("FROM", 1)[1]
        assert [i.kind for i in r.issues] == ["sql-fixed"] and dropped in r.issues[0].message


def test_without_the_request_no_join_is_dropped(shop):
    sql = "SELECT c.name FROM customers c JOIN orders o ON c.customer_id = o.customer_id"
    assert "JOIN" in validate_sql(sql, shop).sql


@pytest.fixture
def shop_live(shop_db):
    conn, _ = shop_db
    return conn, ctxmod.collect({"conn": conn}, "").connections["conn"]


def test_filters_find_each_compared_text_with_its_table(shop_live):
    _, info = shop_live
    tree = sqlglot.parse_one("SELECT c.name FROM customers c JOIN orders o "
                             "ON c.customer_id = o.customer_id WHERE c.country IN ('UK', 'FI') "
                             "AND ordered_on <> '2023-01-02' AND o.amount > 3", read="sqlite")
    got = {(f.table, f.column, f.value) for f in filters(tree, info)}
    assert got == {("customers", "country", "UK"), ("customers", "country", "FI"),
                   ("orders", "ordered_on", "2023-01-02")}


@pytest.mark.parametrize("sql,fixed_sql,kinds,message", [
    # present as written: nothing to say
    ("SELECT name FROM customers WHERE country = 'UK'", None, [], None),
    # another case or stray spaces: respelled as stored
    ("SELECT name FROM customers WHERE country = ' uk'", "country = 'UK'", ["sql-fixed"],
     "' uk' -> 'UK'"),
    # a name compared with an id column: the column that holds it is named
    ("SELECT COUNT(*) FROM orders WHERE customer_id = 'Grace'", None, ["sql-value"],
     "that value is in customers.name"),
    # nowhere in the database: an empty answer may be right
    ("SELECT name FROM customers WHERE country = 'Mars'", None, [], None),
])
def test_filter_values_are_looked_up(shop_live, sql, fixed_sql, kinds, message):
    conn, info = shop_live
    out, issues = check_values(sql, info, conn)
    assert [i.kind for i in issues] == kinds
    if fixed_sql:
        assert fixed_sql in out and conn.execute(out).fetchall() == [("Ada",)]
    else:
        assert out == sql
    if message:
        assert message in issues[0].message


def test_value_lookup_on_duckdb():
    duckdb = pytest.importorskip("duckdb")
    conn = duckdb.connect()
    conn.execute("CREATE TABLE cities (name VARCHAR, country VARCHAR); "
                 "INSERT INTO cities VALUES ('Oslo', 'Norway'), ('Bergen', 'Norway')")
    info = ctxmod.collect({"db": conn}, "").connections["db"]
    out, issues = check_values("SELECT name FROM cities WHERE country = 'norway'", info, conn)
    assert [i.kind for i in issues] == ["sql-fixed"]
    assert sorted(conn.execute(out).fetchall()) == [("Bergen",), ("Oslo",)]


def test_value_lookup_stops_at_its_time_budget(shop_live):
    conn, info = shop_live
    out, issues = check_values("SELECT name FROM customers WHERE country = 'uk'", info, conn,
                               budget_s=0.0)
    assert issues == [] and out.endswith("'uk'")  # out of time: left as written


def test_value_lookup_leaves_the_users_connection_usable(shop_live):
    conn, info = shop_live
    check_values("SELECT COUNT(*) FROM orders WHERE customer_id = 'Grace'", info, conn)
    assert conn.execute("SELECT COUNT(*) FROM orders").fetchone() == (4,)
    assert isinstance(conn, sqlite3.Connection) and conn.in_transaction is False
