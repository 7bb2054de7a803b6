import argparse

import pytest

from qcoder_ds.commands.eval import _sample_sizes
from qcoder_ds.copilot.cli_ask import namespace_for, open_database
from qcoder_ds.copilot.context import describe_dataframe
from qcoder_ds.copilot.errors import CopilotError
from qcoder_ds.copilot.extract import code_blocks, drop_context_echo, extract_code, extract_sql


def test_blocks_and_language_preference():
    text = ("Sure!\n```python\nimport pandas as pd\n```\nthen\n```python\ndf.head()\n```\n"
            "```sql\nSELECT 1\n```")
    assert [lang for lang, _ in code_blocks(text)] == ["python", "python", "sql"]
    assert extract_code(text) == "import pandas as pd\n\ndf.head()"
    assert extract_sql(text) == "SELECT 1"


def test_lines_copied_from_the_data_description_are_dropped(sales):
    context = describe_dataframe("sales", sales)
    header, first_col = context.splitlines()[1], context.splitlines()[2]
    code = ("import pandas as pd\n# DataFrame `sales`\n" + header + "\n" + first_col +
            "\nresult = sales['revenue'].sum()")
    fixed, n = drop_context_echo(code, context)
    assert n == 2 and fixed == "import pandas as pd\n# DataFrame `sales`\n" \
        "result = sales['revenue'].sum()"
    # code that parses is never touched, even where a line matches the description
    assert drop_context_echo("x = 1\nresult = x", "x = 1") == ("x = 1\nresult = x", 0)
    # a syntax error of the model's own stays for the repair
    broken = "result = sales['revenue'].sum("
    assert drop_context_echo(broken, context) == (broken, 0)


def test_unterminated_and_bare_answers():
    assert extract_code("```python\ndf.sum()") == "df.sum()"
    assert extract_code("df.sum()\nThis sums the frame.") == "df.sum()"
    assert extract_sql("The query is: SELECT a FROM t;") == "SELECT a FROM t"


def test_sql_inside_python_block():
    text = "```python\nq = '''SELECT name FROM singer'''\npd.read_sql(q, conn)\n```"
    assert extract_sql(text) == "SELECT name FROM singer"


def test_sample_sizes():
    cats = ["pandas", "spider"]
    assert _sample_sizes(None, cats) is None
    assert _sample_sizes("40", cats) == 40
    assert _sample_sizes("spider=10", cats) == {"pandas": None, "spider": 10}
    for bad, msg in [("x", "takes N"), ("0", "at least 1"), ("matplotlib=3", "not evaluated")]:
        with pytest.raises(CopilotError, match=msg):
            _sample_sizes(bad, cats)


def test_eval_cli_refuses_a_missing_data_dir(tmp_path, capsys):
    from qcoder_ds.cli import main

    assert main(["eval", "--data-dir", str(tmp_path / "nope")]) == 1
    assert "no evaluation data there" in capsys.readouterr().err


def test_eval_cli_says_what_data_it_needs(monkeypatch, capsys):
    from qcoder_ds.cli import main

    monkeypatch.delenv("QCODER_EVAL_DIR", raising=False)
    assert main(["eval"]) == 1
    err = capsys.readouterr().err
    assert "--data-dir DIR (or QCODER_EVAL_DIR)" in err
    assert "spider/database/<db_id>/<db_id>.sqlite" in err and "ds1000/pandas.jsonl.gz" in err


def test_ask_db_is_opened_read_only(shop_db, tmp_path):
    _, path = shop_db
    conn = open_database(str(path))
    with pytest.raises(Exception, match="readonly"):
        conn.execute("DELETE FROM orders")
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database at all" * 100)
    with pytest.raises(CopilotError, match="not a readable SQLite database"):
        open_database(str(bad))
    with pytest.raises(CopilotError, match="no such database file"):
        open_database(str(tmp_path / "missing.sqlite"))
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n")
    ns = namespace_for(argparse.Namespace(data=str(csv), db=str(path)))
    assert list(ns["df"].columns) == ["a", "b"] and ns["conn"].execute(
        "select count(*) from orders").fetchone() == (4,)
