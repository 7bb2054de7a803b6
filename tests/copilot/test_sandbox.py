import sqlite3
import tempfile

import pandas as pd
import pytest

from qcoder_ds.copilot.sandbox import Limits, Sandbox, sample_copy


@pytest.fixture(scope="module")
def box():
    sb = Sandbox(Limits(timeout_s=6, memory_mb=256, sample_rows=100))
    yield sb
    sb.close()


def test_runs_on_a_sample_copy_and_reports_the_value(box, sales):
    ns = {"sales": sales}
    r = box.run("sales['revenue'] = 0\nlen(sales)", ns)
    assert r.ok, r.error
    assert r.value["repr"] == "100"  # the child saw a 100-row sample
    assert sales["revenue"].sum() > 0  # ... and the user's frame is untouched


def test_infinite_loop_is_stopped(box):
    r = box.run("while True:\n    pass", {})
    assert not r.ok and r.timed_out and "6 s limit" in r.error


def test_memory_bomb_is_stopped(box):
    r = box.run("x = bytearray(4 * 1024**3)", {})
    assert not r.ok and "MemoryError" in r.error


def test_network_attempt_is_stopped(box):
    r = box.run("import socket\ns = socket.socket()\ns.connect(('1.1.1.1', 80))", {})
    assert not r.ok
    assert any("network" in b for b in r.blocked)


def test_write_and_delete_outside_the_temp_dir_are_stopped(box, tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    r = box.run(f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')", {})
    assert not r.ok and "outside the working directory" in r.error
    r = box.run(f"import os\nos.remove({str(target)!r})", {})
    assert not r.ok and "outside the working directory" in r.error
    assert target.read_text() == "keep me" and not (tmp_path / "new.txt").exists()
    r = box.run("open('inside.txt', 'w').write('ok')\nopen('inside.txt').read()", {})
    assert r.ok and r.value["repr"] == "'ok'"


def test_processes_are_stopped(box):
    r = box.run("import subprocess\nsubprocess.run(['true'])", {})
    assert not r.ok and any("processes" in b for b in r.blocked)


def test_plot_renders_off_screen_and_is_described(box, sales):
    code = ("import matplotlib.pyplot as plt\n"
            "sales.groupby('region')['revenue'].sum().plot.bar()\n"
            "plt.title('Revenue')\nplt.ylabel('EUR')")
    r = box.run(code, {"sales": sales})
    assert r.ok, r.error
    ax = r.figures[0]["axes"][0]
    assert ax["title"] == "Revenue" and ax["ylabel"] == "EUR" and ax["patches"] == 4
    assert r.figures[0]["png_bytes"] > 1000


def test_error_line_and_type(box, sales):
    r = box.run("x = 1\nsales['nope']", {"sales": sales})
    assert not r.ok and r.error_type == "KeyError" and r.error.startswith("line 2:")


def test_sqlite_connection_is_read_only_copy(box, shop_db):
    conn, _ = shop_db
    r = box.run("import pandas as pd\npd.read_sql_query('select count(*) n from orders', conn)"
                ".n.tolist()[0]", {"conn": conn})
    assert r.ok and r.value["repr"] == "4"
    r = box.run("conn.execute('delete from orders')", {"conn": conn})
    assert not r.ok and "readonly" in r.error.replace("-", "").lower()
    assert conn.execute("select count(*) from orders").fetchone()[0] == 4


def test_in_memory_sqlite_is_copied():
    mem = sqlite3.connect(":memory:")
    mem.execute("create table t (a int)")
    mem.executemany("insert into t values (?)", [(1,), (2,)])
    sb = Sandbox(Limits(timeout_s=6), prewarm=False)
    try:
        r = sb.run("conn.execute('select sum(a) from t').fetchone()[0]", {"conn": mem})
    finally:
        sb.close()
    assert r.ok and r.value["repr"] == "3"


def test_sample_copy_keeps_order_and_size(sales):
    s = sample_copy(sales, 50)
    assert len(s) == 50 and s.index.is_monotonic_increasing
    assert s is not sales and sample_copy(pd.Series(range(3)), 50).tolist() == [0, 1, 2]


def test_unpicklable_objects_are_reported_not_fatal(box):
    r = box.run("f(1)", {"f": lambda x: x})
    assert r.unavailable == ["f"] and not r.ok and "NameError" in r.error


def test_workdir_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's own temp folder
    sb = Sandbox(Limits(timeout_s=6))  # with a spare child, which has a folder too
    r = sb.run("open('left.txt', 'w').write('x')\n1", {})
    assert r.ok and any(p.name.startswith("qcoder-check-") for p in tmp_path.iterdir())
    sb.close()
    assert list(tmp_path.iterdir()) == []


def test_the_inputs_as_printed_come_back_so_a_shown_input_confirms_nothing(box):
    """The child reports how the input data print, taken before the cell runs (the cell may
    change them), so the example check can tell the request's input table from its result."""
    from qcoder_ds.copilot.examples import confirmed

    df = pd.DataFrame({"col1": [1, 1, 4, 5, 1, 4]})
    request = f"I have\n{df.to_string()}\nand want every 4 rows summed:\n" \
              f"{pd.DataFrame({'col1': [11, 5]}).to_string()}\n"
    head = box.run("df['col1'] = df['col1'] * 1\ndf.head(2)", {"df": df})
    assert head.ok and head.value["inputs_printed"][0] == df.to_string()
    assert not confirmed(request, head.value)
    binned = box.run("df.groupby(df.index // 4).sum()", {"df": df})
    assert confirmed(request, binned.value)
