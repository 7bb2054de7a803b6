"""The kernel-side snapshot and its rebuilding in the server, without a kernel: the context is
the one the magic computes, data are sample copies, databases come back read-only."""

from __future__ import annotations

import json
import os
import sqlite3

import duckdb
import numpy as np
import pandas as pd
import pytest

from qcoder_ds.copilot import context as ctxmod
from qcoder_ds.server import context as kctx
from qcoder_ds.server.kernel_snapshot import _snapshot, snapshot


@pytest.fixture
def namespace(tmp_path):
    db = sqlite3.connect(tmp_path / "shop.sqlite")
    db.executescript("CREATE TABLE orders (id INTEGER, amount REAL);"
                     "INSERT INTO orders VALUES (1, 2.5), (2, 4.0);")
    db.commit()
    mem = sqlite3.connect(":memory:")
    mem.executescript("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (7);")
    duck = duckdb.connect()
    duck.execute("CREATE TABLE visits AS SELECT range AS id FROM range(500)")
    rng = np.random.default_rng(1)
    big = pd.DataFrame({"a": rng.integers(0, 9, 6000), "b": rng.normal(size=6000)})
    ns = {"big": big, "duck": duck, "db": db, "mem": mem, "limit": 3, "np": np,
          "fn": lambda x: x, "_hidden": 1,
          "Err": {4: "ValueError: bad"}, "In": ["", "", "", "", "int('x')"]}
    yield ns
    db.close()
    mem.close()
    duck.close()


def test_snapshot_keeps_the_full_context_and_ships_samples(namespace):
    folder = _snapshot({"request": "sum of b above {limit}", "rows": 100}, namespace)
    try:
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        snap = kctx.load(folder)
        expected = ctxmod.collect(namespace, "sum of b above 3")
        assert snap.request == "sum of b above 3"
        assert [i.full for i in snap.context.items] == [i.full for i in expected.items]
        assert "# DataFrame `big`: 6000 rows x 2 columns" in snap.context.items[0].full
        assert len(snap.namespace["big"]) == 100  # the sandbox's copy is a sample
        assert snap.namespace["limit"] == 3 and snap.namespace["np"].__name__ == "numpy"
        assert callable(snap.namespace["fn"]) and "_hidden" not in snap.namespace
        assert snap.context.last_error == "ValueError: bad"
        assert snap.context.last_error_cell == "int('x')"
        # the file database is opened in place, read-only; the in-memory one is a copy
        assert snap.context.connections["db"].path == str(namespace["db"].execute(
            "PRAGMA database_list").fetchall()[0][2])
        assert snap.namespace["db"].execute("SELECT SUM(amount) FROM orders").fetchone() == \
            (6.5,)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            snap.namespace["db"].execute("DELETE FROM orders")
        assert snap.context.connections["mem"].path.startswith(str(folder))
        assert snap.namespace["mem"].execute("SELECT x FROM t").fetchall() == [(7,)]
        # DuckDB: the kernel's file is locked by its own connection, so a sample is copied
        assert snap.namespace["duck"].execute("SELECT COUNT(*) FROM visits").fetchone() == \
            (100,)
        assert "CREATE TABLE visits" in next(i.full for i in snap.context.items
                                             if i.name == "duck")
    finally:
        snap.close()
    assert not folder.exists()
    assert namespace["db"].execute("SELECT COUNT(*) FROM orders").fetchone() == (2,)


def test_snapshot_never_raises_and_refuses_a_late_request(namespace):
    out = json.loads(snapshot(json.dumps({"request": "x", "deadline": 1.0})))
    assert out == {"error": "TimeoutError: the server stopped waiting for this snapshot"}
    out = json.loads(snapshot("{not json"))
    assert out["error"].startswith("JSONDecodeError")


def test_load_refuses_a_folder_others_can_write(namespace, tmp_path):
    folder = _snapshot({"request": ""}, namespace)
    try:
        os.chmod(folder, 0o777)
        with pytest.raises(ValueError, match="not a private snapshot folder"):
            kctx.load(folder)
        other = tmp_path / "elsewhere"
        other.mkdir(mode=0o700)
        with pytest.raises(ValueError, match="not a private snapshot folder"):
            kctx.load(other)
    finally:
        os.chmod(folder, 0o700)
        kctx.load(folder).close()
