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
    # a query that aggregates counts the joined rows when the request names one of the
    # joined table's own columns ("ordering" starts with order_id's "order") ...
    ("SELECT c.country FROM customers c JOIN orders o ON c.customer_id = o.customer_id "
     "GROUP BY c.country ORDER BY COUNT(*) DESC LIMIT 1",
     "the country where ordering is most frequent", None),
    # ... and otherwise the join only repeats the rows it counts
    ("SELECT c.country, COUNT(c.customer_id) FROM customers c JOIN orders o "
     "ON c.customer_id = o.customer_id GROUP BY c.country",
     "the number of customers in each country", "orders"),
    ("SELECT c.country FROM orders o JOIN customers c ON o.customer_id = c.customer_id "
     "GROUP BY c.country HAVING COUNT(*) >= 2", "countries with at least two customers",
     "orders"),
    ("SELECT c.country FROM orders o JOIN customers c ON o.customer_id = c.customer_id "
     "GROUP BY c.country HAVING COUNT(*) >= 2", "countries with at least two order amounts",
     None),
    # SELECT * reads every table
    ("SELECT * FROM customers c JOIN orders o ON c.customer_id = o.customer_id",
     "everything", None),
    # the FROM table is the one only the join uses: the joined table takes its place
    ("SELECT c.name FROM orders o JOIN customers c ON o.customer_id = c.customer_id",
     "every customer name", "orders"),
    ("SELECT c.name FROM orders o JOIN customers c ON o.customer_id = c.customer_id",
     "names of customers with orders", None),
    # an outer join's FROM table decides which rows there are: kept
    ("SELECT c.name FROM orders o LEFT JOIN customers c ON o.customer_id = c.customer_id",
     "every customer name", None),
])
def test_unused_joins_are_dropped_unless_used_or_asked_for(shop, sql, request_text, dropped):
    r = validate_sql(sql, shop, request=request_text)
    assert r.ok
    if dropped is None:
        assert r.issues == [] and "JOIN" in r.sql
    else:
        assert "JOIN" not in r.sql and dropped not in r.sql.split("FROM", 1)[1]
        assert [i.kind for i in r.issues] == ["sql-fixed"] and dropped in r.issues[0].message


def test_a_table_is_named_by_the_words_its_neighbours_lack():
    # "transcripts" names Transcripts, not Transcript_Contents, which shares the word
    info = ctxmod.ConnectionInfo("conn", "sqlite", "sqlite", tables={
        "Transcripts": {"transcript_id": "INTEGER", "transcript_date": "TEXT"},
        "Transcript_Contents": {"transcript_id": "INTEGER", "course_id": "INTEGER"}})
    sql = ("SELECT T2.transcript_date FROM Transcript_Contents AS T1 "
           "JOIN Transcripts AS T2 ON T1.transcript_id = T2.transcript_id")
    r = validate_sql(sql, info, request="When were the transcripts printed?")
    assert "Transcript_Contents" not in r.sql and "FROM Transcripts AS T2" in r.sql
    r = validate_sql(sql, info, request="average date over transcript contents")
    assert "Transcript_Contents" in r.sql


def test_a_key_named_after_a_table_names_that_table():
    # "visitors" names visitor, not visit by its visitor_ID: averaging over the join would
    # weight each visitor by their visits
    info = ctxmod.ConnectionInfo("conn", "sqlite", "sqlite", tables={
        "visitor": {"ID": "INTEGER", "Age": "INTEGER", "Level_of_membership": "INTEGER"},
        "visit": {"Museum_ID": "INTEGER", "visitor_ID": "INTEGER", "Total_spent": "REAL"}})
    sql = ("SELECT AVG(T1.Age) FROM visitor AS T1 JOIN visit AS T2 ON T1.ID = T2.visitor_ID "
           "WHERE T1.Level_of_membership <= 4")
    r = validate_sql(sql, info, request="the average age of visitors with level at most 4")
    assert "visit AS" not in r.sql and "FROM visitor AS T1" in r.sql
    r = validate_sql(sql, info, request="the average age of visitors by money they spent")
    assert "JOIN visit AS T2" in r.sql  # "spent": a column of visit's own


@pytest.mark.parametrize("sql,request_text,kept", [
    # "which ... the most": the count only ranks the rows
    ("SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY n DESC LIMIT 1",
     "Which country has the most customers?", "SELECT country FROM customers GROUP BY country "
     "ORDER BY COUNT(*) DESC LIMIT 1"),
    ("SELECT country, COUNT(*) FROM customers GROUP BY country ORDER BY COUNT(*) LIMIT 1",
     "the country with the fewest number of customers", "SELECT country FROM customers "
     "GROUP BY country ORDER BY COUNT(*) LIMIT 1"),
    # the request asks for the number: kept
    ("SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY n DESC LIMIT 1",
     "Which country has the most customers, and how many?", None),
    # no LIMIT: every group is listed with its count
    ("SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY n DESC",
     "countries by most customers", None),
    # the only column
    ("SELECT COUNT(*) AS n FROM customers GROUP BY country ORDER BY n DESC LIMIT 1",
     "the most customers in a country", None),
])
def test_an_aggregate_selected_only_to_rank_by_is_dropped(shop_db, sql, request_text, kept):
    conn, _ = shop_db
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    r = validate_sql(sql, info, request=request_text)
    if kept is None:
        assert r.issues == [] and " ".join(r.sql.split()) == sql
    else:
        assert " ".join(r.sql.split()) == kept and [i.kind for i in r.issues] == ["sql-fixed"]
        assert conn.execute(r.sql).fetchall() in ([("UK",)], [("FI",)], [("US",)])


SAME_ROWS = "SELECT c.name, o.amount FROM customers c JOIN orders o USING (customer_id)"


@pytest.mark.parametrize("sql,fixed,rows", [
    # keys of different names that no foreign key links, while orders.customer_id does
    ("SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON o.order_id = c.customer_id",
     "o.customer_id = c.customer_id", SAME_ROWS),
    # a condition that compares a column with itself pairs every row with every row
    ("SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON c.customer_id = "
     "c.customer_id", "o.customer_id = c.customer_id", SAME_ROWS),
    # a condition on two other tables leaves the joined one unlinked: the key is added
    ("SELECT c.name, o.amount, x.amount FROM customers AS c JOIN orders AS o ON "
     "c.customer_id = o.customer_id JOIN orders AS x ON o.order_id = c.customer_id",
     "o.order_id = c.customer_id AND x.customer_id = c.customer_id", "SELECT c.name, o.amount, "
     "x.amount FROM customers c JOIN orders o USING (customer_id) JOIN orders x USING "
     "(customer_id) WHERE o.order_id = c.customer_id"),
    # a condition on two columns of the joined table alone: kept, and the key added
    ("SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON o.order_id = "
     "o.customer_id", "o.order_id = o.customer_id AND o.customer_id = c.customer_id",
     SAME_ROWS + " WHERE o.order_id = o.customer_id"),
    # the foreign key itself, and a join on same-named columns: left alone
    ("SELECT c.name, o.amount FROM customers AS c JOIN orders AS o ON c.customer_id = "
     "o.customer_id", None, None),
    # a self-join: no foreign key links customers with customers
    ("SELECT a.name, b.name FROM customers AS a JOIN customers AS b ON a.country = b.country",
     None, None),
])
def test_join_conditions_that_cannot_be_meant_use_the_foreign_key(shop_db, sql, fixed, rows):
    conn, _ = shop_db
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    # the self-join reads no orders: asked for order amounts, it would fail unread_table
    request = "pairs of customers from one country" if "orders" not in sql else \
        "each customer's name and order amounts"
    r = validate_sql(sql, info, request=request)
    assert r.ok
    if fixed is None:
        assert r.issues == [] and " ".join(r.sql.split()) == sql
        return
    assert f"ON {fixed}" in " ".join(r.sql.split())
    assert [i.kind for i in r.issues] == ["sql-fixed"] and "foreign key" in r.issues[0].message
    assert sorted(conn.execute(r.sql).fetchall()) == sorted(conn.execute(rows).fetchall())


@pytest.mark.parametrize("sql,fixed", [
    # ids of different things never match: the foreign key says which column is meant
    ("SELECT name FROM customers WHERE customer_id NOT IN (SELECT order_id FROM orders "
     "WHERE amount > 50)", "SELECT customer_id FROM orders"),
    ("SELECT c.name FROM customers AS c WHERE c.customer_id IN (SELECT order_id FROM orders)",
     "SELECT customer_id FROM orders"),
    # the linked column, or one of the same name: left alone
    ("SELECT name FROM customers WHERE customer_id IN (SELECT customer_id FROM orders)", None),
    # no foreign key links customers with itself
    ("SELECT name FROM customers WHERE customer_id IN (SELECT MAX(customer_id) FROM customers)",
     None),
])
def test_in_subqueries_compare_the_keys_a_foreign_key_links(shop_db, sql, fixed):
    conn, _ = shop_db
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    r = validate_sql(sql, info)
    assert r.ok
    if fixed is None:
        assert r.issues == []
        return
    assert fixed in " ".join(r.sql.split()) and [i.kind for i in r.issues] == ["sql-fixed"]
    names = {n for (n,) in conn.execute(r.sql).fetchall()}
    assert names == ({"Ada", "Linus"} if "NOT IN" in sql else {"Ada", "Linus", "Grace"})


@pytest.mark.parametrize("sql,joined,rows", [
    # the column is in the table the query's table references: joined by that key
    ("SELECT AVG(amount) FROM orders WHERE country = 'UK'", "JOIN customers AS T1 ON "
     "orders.customer_id = T1.customer_id", [(15.25,)]),
    ("SELECT o.amount, o.name FROM orders AS o WHERE o.amount > 50",
     "JOIN customers AS T1 ON o.customer_id = T1.customer_id", [(99.0, "Grace")]),
    # a name both tables have is qualified, so the added join leaves it unambiguous
    ("SELECT customer_id, amount FROM orders WHERE country = 'FI'", "SELECT orders.customer_id",
     [(2, 7.25)]),
    # against a reference (one customer, many orders) rows would repeat: left an error
    ("SELECT name FROM customers WHERE amount > 50", None, None),
])
def test_a_column_of_a_referenced_table_joins_it_by_the_key(shop_db, sql, joined, rows):
    conn, _ = shop_db
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    r = validate_sql(sql, info)
    if joined is None:
        assert not r.ok and "amount" in r.issues[0].message
        return
    assert r.ok and joined in " ".join(r.sql.split())
    assert [i.kind for i in r.issues] == ["sql-fixed"]
    assert conn.execute(r.sql).fetchall() == rows


def test_a_column_named_on_the_wrong_table_joins_the_one_its_neighbour_references(tmp_path):
    conn = sqlite3.connect(tmp_path / "pets.sqlite")
    conn.executescript("""
        CREATE TABLE people (person_id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE pets (pet_id INTEGER PRIMARY KEY, kind TEXT);
        CREATE TABLE has_pet (person_id INTEGER REFERENCES people(person_id),
                              pet_id INTEGER REFERENCES pets(pet_id));
        INSERT INTO people VALUES (1, 'Ada'), (2, 'Linus');
        INSERT INTO pets VALUES (10, 'cat'), (11, 'dog');
        INSERT INTO has_pet VALUES (1, 10), (2, 11);
    """)
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    # `p.name` on pets, which references nothing; has_pet references people
    r = validate_sql("SELECT p.name FROM has_pet AS h JOIN pets AS p ON h.pet_id = p.pet_id "
                     "WHERE p.kind = 'cat'", info)
    assert r.ok and "JOIN people AS T1 ON h.person_id = T1.person_id" in " ".join(r.sql.split())
    assert conn.execute(r.sql).fetchall() == [("Ada",)]
    # the subquery's own columns are its own: nothing of it is requalified
    r = validate_sql("SELECT name FROM has_pet WHERE pet_id IN (SELECT pet_id FROM pets "
                     "WHERE kind = 'dog')", info)
    assert r.ok and "WHERE kind = 'dog'" in " ".join(r.sql.split())
    assert conn.execute(r.sql).fetchall() == [("Linus",)]
    conn.close()


@pytest.mark.parametrize("sql,fixed,rows", [
    # the same letters spelled another way: the one column they spell
    ("SELECT orderedOn FROM orders WHERE order_id = 4", "SELECT ordered_on FROM orders",
     [("2022-12-31",)]),
    ("SELECT COUNT(DISTINCT o.customerid) FROM orders AS o", "COUNT(DISTINCT o.customer_id)",
     [(3,)]),
    # two tables spell it so: left as an error
    ("SELECT c.name FROM customers AS c JOIN orders AS o ON c.customerid = o.customer_id",
     None, None),
])
def test_a_column_spelled_another_way_is_the_one_with_the_same_letters(shop_db, sql, fixed,
                                                                        rows):
    conn, _ = shop_db
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    r = validate_sql(sql, info)
    if fixed is None:
        assert not r.ok and "customerid" in r.issues[0].message
        return
    assert r.ok and fixed in " ".join(r.sql.split())
    assert conn.execute(r.sql).fetchall() == rows


@pytest.mark.parametrize("sql,fixed,rows", [
    # the join condition never mentions the joined table: every row paired with every row
    ("SELECT COUNT(*) FROM customers AS a JOIN customers AS b ON a.customer_id = "
     "a.customer_id", "SELECT COUNT(*) FROM customers AS a", [(3,)]),
    # its condition is kept, as a filter
    ("SELECT a.name FROM customers AS a JOIN customers AS b ON a.country = 'UK'",
     "FROM customers AS a WHERE a.country = 'UK'", [("Ada",)]),
    # a joined table that the condition links, or that the query uses: kept
    ("SELECT a.name FROM customers AS a JOIN customers AS b ON a.country = b.country", None,
     None),
    ("SELECT a.name, b.name FROM customers AS a JOIN customers AS b ON a.country = 'UK'", None,
     None),
])
def test_a_join_its_condition_does_not_link_is_dropped(shop_db, sql, fixed, rows):
    conn, _ = shop_db
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    r = validate_sql(sql, info)
    assert r.ok
    if fixed is None:
        assert r.issues == [] and " ".join(r.sql.split()) == sql
        return
    assert " ".join(r.sql.split()).endswith(fixed) and "does not link" in r.issues[0].message
    assert conn.execute(r.sql).fetchall() == rows


def test_a_subquery_picking_a_column_its_table_lacks_is_fixed_or_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "world.sqlite")
    conn.executescript("""
        CREATE TABLE country (Code TEXT PRIMARY KEY, Name TEXT, Continent TEXT);
        CREATE TABLE city (Name TEXT, CountryCode TEXT REFERENCES country(Code));
        INSERT INTO country VALUES ('NOR', 'Norway', 'Europe'), ('JPN', 'Japan', 'Asia');
        INSERT INTO city VALUES ('Oslo', 'NOR'), ('Bergen', 'NOR'), ('Kyoto', 'JPN');
    """)
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    # country has no CountryCode: SQL would read the outer row's, and every city would pass
    sql = "SELECT Name FROM city WHERE CountryCode IN (SELECT CountryCode FROM country " \
          "WHERE Continent = 'Europe')"
    assert len(conn.execute(sql).fetchall()) == 3
    r = validate_sql(sql, info)
    assert r.ok and "( SELECT Code FROM country" in " ".join(r.sql.split())
    assert sorted(conn.execute(r.sql).fetchall()) == [("Bergen",), ("Oslo",)]
    r = validate_sql("SELECT Name FROM city WHERE CountryCode = (SELECT CountryCode FROM "
                     "country WHERE Name = 'Japan')", info)
    assert r.ok and conn.execute(r.sql).fetchall() == [("Kyoto",)]
    # no foreign key says which column is meant: an error that explains the trap
    r = validate_sql("SELECT Code FROM country WHERE Name IN (SELECT Continent FROM city)",
                     info)
    assert not r.ok and "from the outer row" in r.issues[0].message
    conn.close()


@pytest.mark.parametrize("sql,contradicts", [
    ("SELECT name FROM customers WHERE country = 'UK' AND country = 'US'", True),
    ("SELECT c.name FROM customers c JOIN orders o ON c.customer_id = o.customer_id "
     "WHERE o.amount > 50 AND o.amount < 10", True),
    ("SELECT name FROM customers WHERE customer_id > 2 AND customer_id <= 2", True),
    ("SELECT name FROM customers WHERE country = 'UK' OR country = 'US'", False),
    ("SELECT name FROM customers WHERE customer_id >= 2 AND customer_id <= 2", False),
    ("SELECT name FROM customers WHERE 1 < customer_id AND customer_id < 3", False),
    ("SELECT name FROM customers WHERE country = 'UK' INTERSECT "
     "SELECT name FROM customers WHERE country = 'US'", False),
])
def test_a_where_clause_that_can_never_hold_is_an_error(shop_db, sql, contradicts):
    """It runs and returns nothing, so only this check finds it; the repair is told about
    INTERSECT, since "in both X and Y" is how the small model comes to write it."""
    conn, _ = shop_db
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    r = validate_sql(sql, info)
    if contradicts:
        assert not r.ok and "can never be true" in r.issues[0].message
        assert "INTERSECT" in r.issues[0].message
        assert conn.execute(sql).fetchall() == []
    else:
        assert r.ok and not r.issues


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
    # another case (and stray spaces): respelled as stored
    ("SELECT name FROM customers WHERE country = ' uk'", "country = 'UK'", ["sql-fixed"],
     "' uk' -> 'UK'"),
    # a name compared with an id column: the column that holds it is named
    ("SELECT COUNT(*) FROM orders WHERE customer_id = 'Grace'", None, ["sql-value"],
     "that value is in customers.name"),
    # nowhere in the database: an empty answer may be right
    ("SELECT name FROM customers WHERE country = 'Mars'", None, [], None),
    # in one other column of the query's own tables: the comparison moves there
    ("SELECT name FROM customers WHERE name = 'uk'", "WHERE country = 'UK'", ["sql-fixed"],
     "compared customers.country instead"),
    ("SELECT c.name FROM orders AS o JOIN customers AS c ON o.customer_id = c.customer_id "
     "WHERE o.ordered_on = 'UK' AND o.amount < 15", "WHERE c.country = 'UK'", ["sql-fixed"],
     "o.ordered_on -> c.country"),
])
def test_filter_values_are_looked_up(shop_live, sql, fixed_sql, kinds, message):
    conn, info = shop_live
    out, issues = check_values(sql, info, conn)
    assert [i.kind for i in issues] == kinds
    if fixed_sql:
        assert fixed_sql in " ".join(out.split()) and conn.execute(out).fetchall() == [("Ada",)]
    else:
        assert out == sql
    if message:
        assert message in issues[0].message


def test_values_stored_with_stray_spaces_are_reported_not_rewritten():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE flights (code TEXT, dest TEXT)")
    conn.executemany("INSERT INTO flights VALUES (?, ?)", [("F1", " ATO"), ("F2", " AHD"),
                                                           ("F3", "Aberdeen")])
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    sql = "SELECT COUNT(*) FROM flights WHERE dest = 'ATO'"
    out, issues = check_values(sql, info, conn)
    assert out == sql and conn.execute(out).fetchone() == (0,)  # the query as asked
    assert [(i.kind, i.severity) for i in issues] == [("sql-value", "warning")]
    assert "' ATO'" in issues[0].message and "TRIM(dest) = 'ATO'" in issues[0].message
    # a difference of case as well is still respelled to the stored value
    out, issues = check_values("SELECT code FROM flights WHERE dest = 'ahd'", info, conn)
    assert [i.kind for i in issues] == ["sql-fixed"] and conn.execute(out).fetchall() == [("F2",)]


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


def test_a_fix_that_fails_leaves_the_query_as_it_was(shop_db, monkeypatch):
    # each fix is a rule over SQL the model wrote; one that meets a query it did not foresee
    # must not cost the answer (the Spider run once stopped on such a KeyError)
    from dataclasses import replace

    from qcoder_ds.copilot import sql_rules
    from qcoder_ds.copilot.sql_rules.base import SqlKind

    def broken(tree, ctx):
        raise KeyError("pop from an empty set")

    rules = tuple(replace(r, apply=broken) if r.kind is SqlKind.JOIN_KEYS else r
                  for r in sql_rules.RULES)
    monkeypatch.setattr(sql_rules, "RULES", rules)
    conn, _ = shop_db
    info = ctxmod.collect({"conn": conn}, "").connections["conn"]
    sql = ("SELECT c.name, o.amount FROM customers AS c JOIN orders AS o "
           "ON o.order_id = c.customer_id")
    r = validate_sql(sql, info, request="each customer's name and order amounts")
    assert r.ok and r.issues == [] and " ".join(r.sql.split()) == sql


@pytest.mark.parametrize("request_text,written,fixed", [
    ("Count the documents that use the PPT template type.", "PP", "PPT"),  # both stored
    ("Count the documents that use the PP template type.", "PP", None),  # named as written
    ("Count the documents that use the PPT template type.", "PPTX", "PPT"),  # not stored
    ("Count the documents of every template type.", "PP", None),  # names no value
])
def test_a_value_is_taken_as_the_request_names_it(request_text, written, fixed):
    conn = sqlite3.connect(":memory:")
    conn.executescript("CREATE TABLE templates (id INTEGER PRIMARY KEY, type_code TEXT);"
                       "INSERT INTO templates VALUES (1, 'PP'), (2, 'PPT'), (3, 'BK');")
    info = ctxmod.describe_connection("conn", conn)
    sql = f"SELECT COUNT(*) FROM templates WHERE type_code = '{written}'"
    out, issues = check_values(sql, info, conn, request=request_text)
    if fixed is None:
        assert out == sql and not [i for i in issues if "request names" in i.message]
    else:
        assert f"type_code = '{fixed}'" in out
        assert any(f"'{written}' -> '{fixed}'" in i.message for i in issues)
