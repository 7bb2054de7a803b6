"""The magic with the real embedded model (slow: minutes on two shared cores; CI runs them)."""

import ast
import os
import sqlite3

import pandas as pd
import pytest

from qcoder_ds.copilot.validate import check_columns, check_names

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shell():
    IPython = pytest.importorskip("IPython")
    from qcoder_ds.engine import Engine

    sh = IPython.core.interactiveshell.InteractiveShell.instance()
    sh.reset(new_session=False)
    sh.run_line_magic("load_ext", "qcoder_ds")
    sh._qcoder_magics.use_engine(Engine.load(threads=min(2, os.cpu_count() or 1),
                                             progress=False))
    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "data", "sales.csv")
    sales = pd.read_csv(root, parse_dates=["order_date"])
    conn = sqlite3.connect(":memory:")
    sales.to_sql("orders", conn, index=False)
    sh.user_ns.update(sales=sales, conn=conn)
    yield sh
    sh._qcoder_magics.state.engines.clear()
    sh._qcoder_magics.state.copilots.clear()


def inserted(shell):
    payloads = shell.payload_manager.read_payload()
    shell.payload_manager.clear_payload()
    cells = [p for p in payloads if p["source"] == "set_next_input"]
    assert cells, "no cell was inserted"
    return cells[-1]


@pytest.mark.parametrize("flags,request_", [
    ("--pandas", "total revenue per region"),
    # the 0.5B model's first answer filters dates as `a >= x & a <= y` (operator precedence);
    # the sandbox catches it and a repair fixes it (greedy first answer, seeded repairs)
    ("--plot", "revenue per region as a bar chart"),
    ("--sql", "number of orders per sales_rep"),
])
def test_inserted_cell_parses_names_real_columns_and_runs(shell, flags, request_):
    shell.run_cell_magic("qcoder", flags, request_)
    payload = inserted(shell)
    code = payload["text"]
    tree = ast.parse(code)
    ns = shell.user_ns
    assert check_names(tree, ns) == [] and check_columns(tree, ns) == []
    assert payload["metadata"]["qcoder"]["ok"] is True
    before = ns["sales"].copy()
    import matplotlib

    matplotlib.use("Agg")
    assert shell.run_cell(code, store_history=False).success
    pd.testing.assert_frame_equal(ns["sales"], before)  # the user's data is untouched
