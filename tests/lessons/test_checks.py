"""The checks inside generated test cells, and the worker's nbgrader-like cell semantics."""

import sqlite3

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from qcoder_ds.lessons.cells import stub_of  # noqa: E402
from qcoder_ds.lessons.checks import (  # noqa: E402
    check_figure,
    check_form,
    check_frame,
    check_query,
    check_series,
    figure_summary,
)
from qcoder_ds.lessons.worker import run_cell, score  # noqa: E402


def test_frames_compare_order_insensitively_unless_asked():
    e = pd.DataFrame({"region": ["N", "S", "E"], "total": [3.0, 1.0, 2.0]})
    shuffled = e.iloc[[2, 0, 1]][["total", "region"]]
    check_frame(shuffled, e, check_index=False)
    with pytest.raises(AssertionError, match="not the right values"):
        check_frame(shuffled, e, ordered=True, check_index=False)
    with pytest.raises(AssertionError, match="should have 3 rows; it has 2"):
        check_frame(e.head(2), e)
    with pytest.raises(AssertionError, match="not the right values"):
        check_frame(e.assign(total=[3.0, 1.0, 2.5]), e)
    check_frame(e.assign(total=[3, 1, 2]), e)  # int vs float: dtype is not graded


def test_series_keep_their_index_as_data():
    e = pd.Series([5, 7], index=pd.Index(["a", "b"], name="k"))
    check_series(e.iloc[::-1].rename("whatever"), e)
    with pytest.raises(AssertionError):
        check_series(pd.Series([5, 7]), e)  # the group keys are lost
    with pytest.raises(AssertionError, match="should be a Series, not DataFrame"):
        check_series(e.to_frame(), e)


def test_sql_results_are_multisets_ordered_only_when_asked():
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (a INT, b REAL)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(1, 0.5), (2, 1.5), (2, 1.5)])
    expected = {"type": "rows", "columns": ["a", "b"], "rows": [(2, 1.5), (2, 1.5), (1, 0.5)]}
    check_query(con, "SELECT a, b FROM t", expected)
    with pytest.raises(AssertionError, match="not in the order asked for"):
        check_query(con, "SELECT a, b FROM t ORDER BY a", expected, ordered=True)
    check_query(con, "SELECT a, b FROM t ORDER BY a DESC", expected, ordered=True)
    with pytest.raises(AssertionError, match="should return 3 row"):
        check_query(con, "SELECT DISTINCT a, b FROM t", expected)
    with pytest.raises(AssertionError, match="does not run: no such column"):
        check_query(con, "SELECT nope FROM t", expected)


def _bar(values, horizontal=False, title=""):
    fig, ax = plt.subplots()
    (ax.barh if horizontal else ax.bar)(list(values), list(values.values()))
    ax.set_title(title)
    return fig


def test_figures_are_compared_by_content():
    e = figure_summary(_bar({"a": 1, "b": 3}, title="Totals"))
    check_figure(_bar({"b": 3, "a": 1}, title="totals "), e)
    with pytest.raises(AssertionError, match="bars of the plot do not have the right heights"):
        check_figure(_bar({"a": 1, "b": 2}, title="Totals"), e)
    with pytest.raises(AssertionError, match="title of the plot should be 'Totals'"):
        check_figure(_bar({"a": 1, "b": 3}), e)
    h = figure_summary(_bar({"a": 1, "b": 3}, horizontal=True))
    assert h["axes"][0]["bar_heights"] == [1.0, 3.0]  # a horizontal bar's value is its width
    assert h["axes"][0]["xticklabels"] == ["a", "b"]
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [3, 2, 1], label="down")
    ax.plot([1, 2, 3], [1, 2, 3], label="up")
    ax.legend()
    s = figure_summary(fig)
    assert s["axes"][0]["lines"] == 2 and s["axes"][0]["legend"] == ["down", "up"]
    fig2, ax2 = plt.subplots()
    ax2.plot([1, 2, 3], [1, 2, 3], label="up")
    ax2.plot([1, 2, 3], [3, 2, 1], label="down")
    ax2.legend()
    check_figure(fig2, s)  # the order the lines were drawn in does not matter
    with pytest.raises(AssertionError, match="should have a legend"):
        fig3, ax3 = plt.subplots()
        ax3.plot([1, 2, 3], [1, 2, 3])
        ax3.plot([1, 2, 3], [3, 2, 1])
        check_figure(fig3, s)
    with pytest.raises(AssertionError, match="should have 2 line"):
        check_form(_bar({"a": 1}), {"type": "Figure", "axes": [
            {"lines": 2, "bars": 0, "points": 0}]}, name="fig")


def test_cells_score_like_nbgrader():
    ns = {}
    assert score(run_cell("x = 1\nassert x == 1", ns, 5))
    ending_in_number = run_cell("x + 1", ns, 5)
    assert ending_in_number["value"] == "2" and not score(ending_in_number)
    assert score(run_cell("None", ns, 5))
    warned = run_cell("import warnings\nwarnings.warn('careful')", ns, 5)
    assert warned["ok"] and "UserWarning: careful" in warned["stderr"] and not score(warned)
    slow = run_cell("while True:\n    pass", ns, 0.3)
    assert not slow["ok"] and "TimeoutError" in slow["error"]
    err = run_cell("y = 1\nraise KeyError('k')", ns, 5)
    assert err["error"] == "KeyError (line 2): 'k'"


def test_stub_matches_nbgraders_clear_solutions():
    src = "import x\n### BEGIN SOLUTION\nresult = 1\n### END SOLUTION\nprint(result)"
    assert stub_of(src) == "import x\n# YOUR CODE HERE\nraise NotImplementedError()\nprint(result)"
    assert stub_of("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION") == (
        "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError()")
