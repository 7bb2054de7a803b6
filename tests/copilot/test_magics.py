"""The magic in a real IPython InteractiveShell, with a real DataFrame and SQLite database."""

import ast

import pytest

pytest.importorskip("IPython")
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from copilot.scripted import ScriptedEngine  # noqa: E402


@pytest.fixture
def shell(sales, shop_db):
    sh = InteractiveShell.instance()
    sh.reset(new_session=False)  # one shell per process: start each test from a clean namespace
    sh.run_line_magic("load_ext", "qcoder_ds")
    sh.user_ns.setdefault("Err", {})
    sh.user_ns["sales"] = sales
    sh.user_ns["conn"] = shop_db[0]
    sh.payload_manager.clear_payload()  # drop anything earlier tests left
    yield sh
    sh.user_ns.pop("sales", None)
    sh.user_ns.pop("conn", None)
    sh._qcoder_magics.state.engines.clear()
    sh._qcoder_magics.state.copilots.clear()


def engine(shell, replies):
    eng = ScriptedEngine(replies)
    shell._qcoder_magics.use_engine(eng)
    return eng


def inserted(shell):
    payloads = shell.payload_manager.read_payload()
    shell.payload_manager.clear_payload()  # as the kernel does after each execute request
    nexts = [p for p in payloads if p["source"] == "set_next_input"]
    assert len(nexts) == 1
    return nexts[0]


def test_cell_magic_inserts_a_checked_cell_with_provenance(shell, capsys):
    engine(shell, ["```python\nsales.groupby('region')['revenue'].sum()"
                   ".sort_values(ascending=False)\n```"])
    shell.run_cell_magic("qcoder", "--pandas", "revenue per region, largest first")
    out = capsys.readouterr().out
    assert "sales.groupby('region')" in out  # streamed
    assert "✓ ran on sample" in out
    p = inserted(shell)
    code = p["text"]
    ast.parse(code)
    header = code.splitlines()[0]  # says what was verified, and what was not
    assert header.startswith("# qcoder (") and header.endswith(
        ", pandas, checked: ran on a sample; keeps every region; no pandas warnings; one entry "
        "per region; not verified: the values)")
    meta = p["metadata"]["qcoder"]
    assert meta["model"] == "qwen2.5-coder-0.5b-instruct" and meta["ok"] is True
    assert meta["checks"]["columns"] == "passed" and meta["task"] == "pandas"
    # the inserted cell runs in the user's namespace
    assert shell.run_cell(code).success


def test_sql_flag_writes_a_query_cell_on_the_users_connection(shell):
    engine(shell, ["```sql\nSELECT country, COUNT(*) AS n FROM customers GROUP BY country\n```"])
    shell.run_cell_magic("qcoder", "--sql", "customers per country")
    code = inserted(shell)["text"]
    res = shell.run_cell(code)
    assert res.success and sorted(shell.user_ns["result"]["country"]) == ["FI", "UK", "US"]


def test_run_flag_runs_the_checked_cell(shell):
    engine(shell, ["```python\ntop_units = int(sales['units'].max())\n```"])
    shell.run_cell_magic("qcoder", "--run", "largest number of units")
    assert shell.user_ns["top_units"] == int(shell.user_ns["sales"]["units"].max())


def test_show_prompt_and_no_check(shell, capsys):
    engine(shell, ["```python\nsales.head()\n```"])
    shell.run_cell_magic("qcoder", "--show-prompt --no-check", "first rows")
    out = capsys.readouterr().out
    assert "----- prompt -----" in out and "# DataFrame `sales`" in out
    assert "- ran on sample" in out
    assert inserted(shell)["metadata"]["qcoder"]["checks"]["ran on sample"] == "skipped"


def test_fix_uses_the_recorded_error(shell):
    res = shell.run_cell("sales.groupby('regio').revenue.sum()")
    assert not res.success
    n = res.execution_count
    assert "KeyError" in shell.user_ns["Err"][n]
    eng = engine(shell, ["```python\nsales.groupby('region').revenue.sum()\n```"])
    shell.run_line_magic("qcoder", "fix")
    assert "KeyError" in eng.calls[0][1]["content"]
    assert "sales.groupby('region')" in inserted(shell)["text"]


def test_explain_previous_cell_line_by_line_from_the_trace(shell, capsys):
    shell.run_cell("x = sales['revenue'].mean()", store_history=True)
    eng = engine(shell, [])
    shell.run_cell("%qcoder explain", store_history=True)
    out = capsys.readouterr().out
    expected = round(float(shell.user_ns["sales"]["revenue"].mean()), 1)
    assert "x = sales['revenue'].mean()" in out and str(expected)[:4] in out
    assert eng.calls == []  # facts come from running the code, not from the model
    assert not [p for p in shell.payload_manager.read_payload()
                if p["source"] == "set_next_input"]


def test_explain_with_a_question_asks_the_model(shell, capsys):
    shell.run_cell("y = sales['units'].sum()", store_history=True)
    eng = engine(shell, ["It adds up the units column of `sales`."])
    shell.run_cell("%qcoder explain what does sum skip", store_history=True)
    assert "adds up the units" in capsys.readouterr().out
    assert "y = sales['units'].sum()" in eng.calls[0][1]["content"]


def test_config_shows_and_sets(shell, capsys):
    shell.run_line_magic("qcoder", "config repairs=1 safe=true")
    shell.run_line_magic("qcoder", "config")
    out = capsys.readouterr().out
    assert "repairs = 1" in out and "safe = True" in out
    shell.run_line_magic("qcoder", "config nonsense=3")
    assert "unknown setting 'nonsense'" in capsys.readouterr().out
    shell.run_line_magic("qcoder", "config repairs=2 safe=false")


def test_bad_requests_print_a_clear_message(shell, capsys):
    engine(shell, [])
    shell.run_line_magic("qcoder", "")
    assert "request is empty" in capsys.readouterr().out
    shell.run_cell_magic("qcoder", "", "x" * 100_000)
    assert "100,000 characters" in capsys.readouterr().out


def test_no_dataframe_in_scope(shell, capsys):
    del shell.user_ns["sales"]
    del shell.user_ns["conn"]
    engine(shell, [])
    shell.run_cell_magic("qcoder", "--pandas", "average price per category")
    assert "no DataFrame" in capsys.readouterr().out


def test_engine_is_loaded_once_and_reused(shell):
    eng = engine(shell, ["```python\nsales.head(1)\n```", "```python\nsales.tail(1)\n```"])
    m = shell._qcoder_magics
    first = m.copilot()
    shell.run_cell_magic("qcoder", "", "first row")
    shell.run_cell_magic("qcoder", "", "last row")
    assert m.copilot() is first and len(eng.calls) == 2
