import sqlite3

import numpy as np
import pandas as pd
import pytest

from qcoder_ds.copilot.context import ConnectionInfo


@pytest.fixture
def sales() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 240
    return pd.DataFrame({
        "date": pd.date_range("2022-01-01", periods=n, freq="3D"),
        "region": rng.choice(["North", "South", "East", "West"], n),
        "product": rng.choice(["tea", "coffee", "cocoa"], n),
        "units": rng.integers(1, 20, n),
        "revenue": rng.uniform(10, 500, n).round(2),
    })


@pytest.fixture
def shop() -> ConnectionInfo:
    """The schema of ``shop_db``, as the context would describe it (without a live link)."""
    return ConnectionInfo("conn", "sqlite", "sqlite", tables={
        "customers": {"customer_id": "INTEGER", "name": "TEXT", "country": "TEXT"},
        "orders": {"order_id": "INTEGER", "customer_id": "INTEGER", "amount": "REAL"}})


@pytest.fixture
def shop_db(tmp_path):
    """A real SQLite file with two related tables."""
    path = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name TEXT, country TEXT);
        CREATE TABLE orders (order_id INTEGER PRIMARY KEY,
                             customer_id INTEGER REFERENCES customers(customer_id),
                             amount REAL, ordered_on TEXT);
        INSERT INTO customers VALUES (1,'Ada','UK'),(2,'Linus','FI'),(3,'Grace','US');
        INSERT INTO orders VALUES (1,1,10.5,'2023-01-02'),(2,1,20.0,'2023-02-03'),
                                  (3,2,7.25,'2023-03-04'),(4,3,99.0,'2022-12-31');
    """)
    conn.commit()
    yield conn, path
    conn.close()
