"""Explanations: the traced facts on fixed snippets are right, and agree with the text."""

import io
import os
import sqlite3
import stat
from html.parser import HTMLParser

import nbformat
import numpy as np
import pandas as pd
import pytest

from qcoder_ds.cli import main
from qcoder_ds.lessons.errors import ExplainError
from qcoder_ds.lessons.explain import explain, explain_python, explanation_for
from qcoder_ds.lessons.explain_sql import explain_sql
from qcoder_ds.lessons.render import to_cells, to_html, to_markdown
from qcoder_ds.lessons.rephrase import contradictions, rephrase

SNIPPET = '''\
big = orders[orders["amount"] < 234]
totals = big.groupby("region")["amount"].sum()
orders["day"] = pd.to_datetime(orders["day"])
n = len(big)
print("kept", n)
missing = orders["nope"]
after = 1
'''


def _orders() -> pd.DataFrame:
    return pd.DataFrame({
        "order_id": np.arange(1000),
        "amount": np.arange(1000),
        "region": np.tile(["North", "South", "East", "West", "Central"], 200),
        "day": [f"2024-01-{1 + i % 28:02d}" for i in range(1000)],
    })


@pytest.fixture(scope="module")
def explained():
    orders = _orders()
    ex = explain_python(SNIPPET, namespace={"orders": orders, "pd": pd})
    assert not pd.api.types.is_datetime64_any_dtype(orders["day"])  # the caller's copy is safe
    return ex


def test_python_trace_states_the_right_facts(explained):
    s = explained.steps
    assert [x.line for x in s] == [1, 2, 3, 4, 5, 6, 7]
    assert "Filtered 1000 rows of `orders` to 234" in s[0].did
    assert s[0].facts["big"] == {"type": "DataFrame", "rows": 234, "cols": 4,
                                 "columns": ["order_id", "amount", "region", "day"],
                                 "from": {"name": "orders", "rows": 1000}}
    assert "Keeps the rows where `orders['amount'] < 234`" in s[0].what
    assert "aggregated 234 rows of `big` into 5" in s[1].did.lower()
    assert s[1].facts["totals"]["rows"] == 5
    docs = {c["qualname"]: c["doc"] for c in s[1].calls}
    assert docs["pandas.DataFrame.groupby"].startswith("Group DataFrame using a mapper")
    assert any(k.endswith(".sum") and v.startswith("Compute sum") for k, v in docs.items())
    assert "Changed `orders` in place" in s[2].did
    assert s[2].facts["orders"]["in_place"] is True
    assert any(c["qualname"] == "pandas.to_datetime" for c in s[2].calls)
    assert "`n` = 234." in s[3].did and s[3].facts["n"] == {"value": 234}
    assert "Printed: kept 234" in s[4].did
    assert s[5].error.startswith("KeyError") and "nope" in s[5].error
    assert s[6].did.startswith("Not run")


def test_dtype_change_is_traced():
    ex = explain_python('df["day"] = pd.to_datetime(df["day"])\ndf = df.assign(x=1)',
                        namespace={"df": _orders().head(10), "pd": pd})
    assert "added column(s) `x`" in ex.steps[1].did
    ex = explain_python('df = df.astype({"amount": "float64"})',
                        namespace={"df": _orders().head(10)})
    assert "`amount` changed type from int64 to float64" in ex.steps[0].did


def test_generated_text_never_contradicts_its_own_trace(explained):
    for s in explained.steps:
        assert contradictions(s.did, s) == [], s.did
        assert contradictions(s.what, s) == [], s.what


def test_code_that_does_not_parse_is_refused():
    with pytest.raises(ExplainError, match=r"does not parse: .*line 2"):
        explain_python("x = 1\ny = (2\n")


@pytest.fixture()
def shop():
    con = sqlite3.connect(":memory:")
    _orders().to_sql("orders", con, index=False)
    pd.DataFrame({"region": ["North", "South", "East", "West", "Central", "Nowhere"],
                  "manager": list("ABCDEF")}).to_sql("regions", con, index=False)
    return con


def test_sql_clause_by_clause_row_counts(shop):
    ex = explain_sql("""
        SELECT o.region, r.manager, COUNT(*) AS n, SUM(o.amount) AS total
        FROM regions AS r LEFT JOIN orders AS o ON o.region = r.region
        WHERE o.amount < 234 OR o.amount IS NULL
        GROUP BY o.region, r.manager
        HAVING COUNT(*) > 40
        ORDER BY total DESC
        LIMIT 3""", shop)
    by = {s.code.split()[0] if s.code.split()[0] != "LEFT" else "JOIN": s for s in ex.steps}
    assert by["FROM"].facts["rows"] == 6
    assert by["JOIN"].facts == {"rows_before": 6, "rows": 1001}  # 'Nowhere' has no orders
    assert by["WHERE"].facts == {"rows_before": 1001, "rows": 235}
    assert "Keeps 235 of 1001 rows." == by["WHERE"].did
    assert by["GROUP"].facts["groups"] == 6
    assert by["HAVING"].facts == {"rows_before": 6, "rows": 5}  # 46 or 47 per region; 1 NULL
    assert by["SELECT"].facts["columns"] == ["region", "manager", "n", "total"]
    assert "`total` adds up `o.amount` per group" in by["SELECT"].what
    assert "descending" in by["ORDER"].what
    assert by["LIMIT"].facts["rows"] == 3
    assert by["LIMIT"].facts["result_columns"] == ["region", "manager", "n", "total"]
    for s in ex.steps:
        assert contradictions(s.did, s) == []


def test_sql_subqueries_windows_and_ctes(shop):
    ex = explain_sql("SELECT order_id FROM orders WHERE amount > (SELECT AVG(amount) FROM orders)",
                     shop)
    assert "gives 499.5" in ex.steps[1].what and ex.steps[1].facts["rows"] == 500
    ex = explain_sql("""WITH t AS (SELECT region, SUM(amount) AS s FROM orders GROUP BY region)
        SELECT region, RANK() OVER (ORDER BY s DESC) AS r FROM t""", shop)
    assert ex.steps[0].facts == {"cte": "t", "rows": 5}
    assert "window function" in ex.steps[-1].what and ex.steps[-1].facts["rows"] == 5


def test_sql_in_another_dialect_runs_on_sqlite(shop):
    ex = explain_sql("SELECT region, COUNT(*)::TEXT AS n FROM orders WHERE amount < 234 "
                     "GROUP BY region", shop, dialect="postgres")
    assert [s.facts.get("rows") for s in ex.steps] == [1000, 234, 5, 5]


def test_bad_sql_inputs(shop):
    with pytest.raises(ExplainError, match="unknown SQL dialect 'klingon'"):
        explain_sql("SELECT 1", shop, dialect="klingon")
    with pytest.raises(ExplainError, match="does not parse"):
        explain_sql("SELECT FROM WHERE", shop)
    with pytest.raises(ExplainError, match="fails on this database: no such column"):
        explain_sql("SELECT nope FROM orders", shop)
    ex = explain_sql("DELETE FROM orders", shop)
    assert "not run" in ex.steps[0].what
    assert shop.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 1000


def test_rendering(explained):
    md = to_markdown(explained)
    assert md.count("**What it did:**") == 7 and "```python" in md
    page = to_html(explained)
    HTMLParser().feed(page)
    assert page.count("<tr>") == 8 and "Filtered 1000 rows of <code>orders</code> to 234" in page
    nb = nbformat.v4.new_notebook(cells=to_cells(explained))
    nbformat.validate(nb)
    assert nb.cells[0].metadata["qcoder"]["facts"]["big"]["rows"] == 234


def test_rephrasing_keeps_only_sentences_that_agree_with_the_trace(explained):
    replies = iter([
        "This keeps the 234 cheapest orders out of 1000. It uses the `amount` column.",
        "It sums `amount` per region, giving 7 groups. It also sorts by `price`.",
    ])
    out, stats = rephrase(explained, "beginner", lambda prompt: next(replies, "Fine."))
    assert out.steps[0].what == ("This keeps the 234 cheapest orders out of 1000. "
                                 "It uses the `amount` column.")
    assert out.steps[1].what == explained.steps[1].what  # both sentences rejected
    reasons = " ".join(w for r in stats["reasons"] for w in r["why"])
    assert "'7 groups'" in reasons and "'price' is not a name" in reasons
    assert stats["rejected"] == 2
    assert out.steps[0].did == explained.steps[0].did  # the facts themselves are kept


def test_cli_explain_python_from_stdin_and_sql_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO("x = [3, 1, 2]\ny = sorted(x)\n"))
    assert main(["explain", "-"]) == 0
    out = capsys.readouterr().out
    assert "`y` is a list of 3 item(s)." in out and "builtins.sorted" in out
    db = tmp_path / "shop.sqlite"
    con = sqlite3.connect(db)
    _orders().to_sql("orders", con, index=False)
    con.close()
    q = tmp_path / "q.sql"
    q.write_text("SELECT region FROM orders WHERE amount < 234")
    html_out = tmp_path / "q.html"
    assert main(["explain", str(q), "--db", str(db), "--format", "html", "-o",
                 str(html_out)]) == 0
    assert "Keeps 234 of 1000 rows." in html_out.read_text()
    assert main(["explain", str(tmp_path / "none.py")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_explain_entry_point_picks_the_language(shop):
    ex = explanation_for("SELECT region FROM orders WHERE amount < 234", {"con": shop, "n": 3})
    assert ex.language == "sql" and ex.steps[1].facts["rows"] == 234
    assert explanation_for("y = sorted([3, 1, 2])").language == "python"
    with pytest.raises(ExplainError, match="no database connection"):
        explanation_for("SELECT 1 FROM t WHERE", {})


def test_explain_is_the_text_a_front_end_prints(shop):
    md = explain("y = sorted([3, 1, 2])")
    assert "`y` is a list of 3 item(s)." in md
    page = explain("SELECT region FROM orders WHERE amount < 234", fmt="html", connection=shop)
    assert page.startswith("<!doctype html>") and "Keeps 234 of 1000 rows." in page


@pytest.mark.slow
def test_the_embedded_model_rephrases_without_contradicting_the_trace(explained):
    from qcoder_ds.engine import Engine
    from qcoder_ds.runtime.sampler import SamplingParams

    engine = Engine.load()
    params = SamplingParams(max_new_tokens=96, temperature=0.0)
    out, stats = rephrase(explained, "beginner",
                          lambda p: engine.generate([{"role": "user", "content": p}], params))
    print(f"\nsentences accepted {stats['accepted']}, rejected {stats['rejected']}")
    for r in stats["reasons"]:
        print(r)
    for s in out.steps:  # whatever is shown agrees with the trace
        assert contradictions(s.what, s) == []
        assert s.did == explained.steps[s.line - 1].did


def test_cli_explain_output_is_written_atomically(monkeypatch, tmp_path):
    """``-o`` goes through paths.atomic_write_text: the folder is made, the mode is what the
    umask gives (not mkstemp's private 0600), and a failed write leaves no file behind."""
    src = tmp_path / "a.py"
    src.write_text("x = 1\n")
    out = tmp_path / "new" / "deeper" / "a.md"
    old_umask = os.umask(0o027)
    try:
        assert main(["explain", str(src), "--no-run", "-o", str(out)]) == 0
    finally:
        os.umask(old_umask)
    assert "x = 1" in out.read_text() and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in out.parent.iterdir()] == ["a.md"]

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        main(["explain", str(src), "--no-run", "-o", str(tmp_path / "b.md")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py", "new"]
