import sqlite3

import numpy as np
import pandas as pd
import pytest

from qcoder_ds.copilot import context as c
from qcoder_ds.copilot.errors import CopilotError, DatabaseError


def test_dataframe_description_has_columns_dtypes_stats_nulls_and_rows(sales):
    sales.loc[3, "units"] = np.nan
    text = c.describe_dataframe("sales", sales)
    assert "240 rows x 5 columns" in text
    assert "'revenue': float64, 0 nulls, min" in text
    assert "'units': float64, 1 nulls" in text
    assert "'region': object" in text or "'region': str" in text
    assert "4 distinct" in text
    assert "first rows (CSV):\ndate,region,product,units,revenue" in text


def test_collect_finds_frames_series_arrays_and_connections(sales, shop_db):
    conn, path = shop_db
    ns = {"sales": sales, "s": sales["revenue"], "arr": np.arange(6).reshape(2, 3),
          "conn": conn, "x": 3, "_hidden": sales, "In": [], "pd": pd}
    ctx = c.collect(ns, "revenue per region")
    kinds = {i.name: i.kind for i in ctx.items}
    assert kinds == {"sales": "dataframe", "s": "series", "arr": "ndarray", "conn": "sql",
                     "x": "value"}
    assert "# `x` = 3 (int)" in ctx.render(2000)
    info = ctx.connections["conn"]
    assert info.path == str(path)
    assert info.tables["orders"] == {"order_id": "INTEGER", "customer_id": "INTEGER",
                                     "amount": "REAL", "ordered_on": "TEXT"}
    assert ("orders", "customer_id", "customers", "customer_id") in info.foreign_keys
    assert ctx.items[0].name == "sales"  # the frame whose columns the request names ranks first


def test_ranking_puts_the_named_object_first_and_budget_keeps_it():
    frames = {f"t{i}": pd.DataFrame({f"c{i}_{j}": range(50) for j in range(12)})
              for i in range(8)}
    frames["orders"] = pd.DataFrame({"order_total": [1.0, 2.0], "region": ["a", "b"]})
    ctx = c.collect(frames, "average order_total by region")
    assert ctx.items[0].name == "orders"
    text = ctx.render(budget=300)
    assert "# DataFrame `orders`" in text
    assert c.approx_tokens(text) <= 330
    assert "Also in scope (not described)" in text  # the rest are named, not described


def test_request_naming_a_variable_wins_over_column_matches():
    ns = {"a": pd.DataFrame({"price": [1]}), "b": pd.DataFrame({"x": [1]})}
    ctx = c.collect(ns, "plot price from b")
    assert ctx.items[0].name == "b"


def test_interpolation_like_jupyter_ai(sales):
    ns = {"sales": sales, "thr": 42, "In": ["", "x = 1"], "Err": {1: "ZeroDivisionError"}}
    out = c.interpolate("rows of {sales} above {thr}; cell {In[1]}; {Err[1]}; {missing} {a b}",
                        ns)
    assert out == "rows of `sales` above 42; cell x = 1; ZeroDivisionError; {missing} {a b}"


def test_last_error_prefers_err_and_its_cell():
    ns = {"Err": {2: "KeyError: 'x'", 5: "NameError: name 'y' is not defined"},
          "In": ["", "", "a", "", "", "print(y)"]}
    assert c.last_error(ns) == ("NameError: name 'y' is not defined", "print(y)")


def test_locked_database_is_a_clear_message(tmp_path):
    path = tmp_path / "locked.sqlite"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE t (a INTEGER)")
    setup.commit()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    user = sqlite3.connect(path, timeout=0.1)
    try:
        ctx = c.collect({"conn": user}, "count rows of t")
        info = ctx.connections["conn"]
        assert info.error and "locked" in info.error and "`conn`" in info.error
        with pytest.raises(DatabaseError, match="locked"):
            c.require_sql(ctx)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        user.close()
        setup.close()


def test_no_connection_for_sql_is_a_clear_message(sales):
    with pytest.raises(CopilotError, match="needs a connection"):
        c.require_sql(c.collect({"sales": sales}))


def test_duckdb_and_sqlalchemy_schemas(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    sa = pytest.importorskip("sqlalchemy")
    d = duckdb.connect()
    d.execute("CREATE TABLE trips (id INTEGER, fare DOUBLE, city VARCHAR)")
    path = tmp_path / "e.sqlite"
    eng = sa.create_engine(f"sqlite:///{path}")
    with eng.begin() as con:
        con.execute(sa.text("CREATE TABLE users (uid INTEGER, email TEXT)"))
    ctx = c.collect({"d": d, "eng": eng})
    assert ctx.connections["d"].tables == {"trips": {"id": "INTEGER", "fare": "DOUBLE",
                                                     "city": "VARCHAR"}}
    assert ctx.connections["d"].dialect == "duckdb"
    assert ctx.connections["eng"].tables == {"users": {"uid": "INTEGER", "email": "TEXT"}}
    assert ctx.connections["eng"].path == str(path)
    assert "CREATE TABLE trips" in c.render_connection(ctx.connections["d"])
