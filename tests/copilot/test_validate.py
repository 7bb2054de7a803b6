import numpy as np
import pandas as pd
import pytest

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.safety import check_safety
from qcoder_ds.copilot.validate import (
    drop_rebinding,
    fix_old_pandas,
    fix_series_logic,
    validate_python,
)
from qcoder_ds.copilot.validate_sql import sql_cell, validate_sql


@pytest.fixture
def ns(sales):
    return {"sales": sales, "pd": pd, "limit": 3}


def kinds(issues):
    return [i.kind for i in issues]


def test_good_code_passes(ns):
    code = ("import matplotlib.pyplot as plt\n"
            "d = sales[sales['date'].dt.year == 2023]\n"
            "totals = d.groupby('region')['revenue'].sum().sort_values(ascending=False)\n"
            "sales['margin'] = sales.revenue * 0.1\n"
            "top = sales.nlargest(limit, 'units')[['region', 'margin']]\n"
            "agg = sales.groupby('product').agg(total=('revenue', 'sum')).reset_index()\n"
            "agg['total'].plot.bar()\n"
            "totals")
    assert validate_python(code, ns) == []


def test_syntax_error(ns):
    issues = validate_python("sales.groupby('region'", ns)
    assert kinds(issues) == ["syntax"] and issues[0].line == 1


def test_undefined_name_with_suggestion(ns):
    issues = validate_python("salse.head()\nnp.mean(sales.units)", ns)
    assert kinds(issues) == ["undefined-name", "undefined-name"]
    assert "did you mean 'sales'" in issues[0].message
    assert "add the import for `np`" in issues[1].message


@pytest.mark.parametrize("code,bad", [
    ("sales['Revenue'].sum()", "Revenue"),
    ("sales.groupby('regions')['revenue'].mean()", "regions"),
    ("sales.sort_values(by='price')", "price"),
    ("sales[['region', 'cost']]", "cost"),
    ("sales.loc[sales.units > 3, 'amount']", "amount"),
    ("sales.totl_revenue.sum()", "totl_revenue"),
    ("import seaborn as sns\nsns.barplot(data=sales, x='region', y='sales_amount')",
     "sales_amount"),
    ("x = sales[sales.units > 2]\nx['profit'].mean()", "profit"),
])
def test_unknown_column_is_reported_with_the_real_ones(ns, code, bad):
    issues = validate_python(code, ns)
    assert kinds(issues) == ["unknown-column"], issues
    assert repr(bad) in issues[0].message and "'revenue'" in issues[0].message


def test_case_mismatch_suggests_the_real_column(ns):
    issues = validate_python("sales['REGION']", ns)
    assert "did you mean 'region'" in issues[0].message


def test_rebinding_live_data_is_an_error_and_can_be_dropped(ns):
    code = ("import pandas as pd\n"
            "sales = pd.DataFrame({'region': ['a'], 'revenue': [1]})\n"
            "sales.groupby('region')['revenue'].sum()")
    assert kinds(validate_python(code, ns)) == ["rebinds-data"]
    kept, notes = drop_rebinding(code, ns)
    assert kept == "import pandas as pd\nsales.groupby('region')['revenue'].sum()"
    assert notes and notes[0].startswith("sales = pd.DataFrame")
    # the comment that introduced it goes too, and the blank lines around it close up
    kept, _ = drop_rebinding("import pandas as pd\n\n# Sample data\nsales = pd.DataFrame()\n\n\n"
                             "# Total per region\nsales.groupby('region').sum()", ns)
    assert kept == "import pandas as pd\n\n# Total per region\nsales.groupby('region').sum()"
    assert kinds(validate_python("sales = pd.read_csv('sales.csv')", ns)) == ["rebinds-data"]
    # transforming the live data is fine
    assert validate_python("sales = sales.dropna()", ns) == []


@pytest.mark.parametrize("line,dropped", [
    ("y = 2 * np.random.rand(10)", True),  # the user's y replaced by fresh random numbers
    ("y = -np.random.randn(10)", True),
    ("y = np.random.rand(10) * 2 + 1", True),
    ("y = y * 2", False),  # computed from the live value: a transformation
    ("y = np.cos(x)", False),
    ("y = 2 * y + np.random.rand(10)", False),  # noise added to the live data
])
def test_live_data_replaced_by_scaled_made_up_data(line, dropped):
    ns = {"y": np.arange(10.0), "x": np.arange(10.0), "np": np}
    kept, notes = drop_rebinding(line + "\nplt.plot(x, y)", ns)
    assert (kept == "plt.plot(x, y)") is dropped and bool(notes) is dropped


def test_a_live_list_or_string_replaced_by_a_literal_is_dropped(ns):
    ns = dict(ns, products=[1069104, 1069105], pattern="spike")
    code = ("products = [1066490, 1077784]\n"
            "pattern = 'spike'\n"
            "limit = 5\n"
            "result = sales[sales['revenue'] > limit].head(len(products))")
    kept, notes = drop_rebinding(code, ns)
    # the list and the string are the user's data; a number is a parameter and stays
    assert kept == "limit = 5\nresult = sales[sales['revenue'] > limit].head(len(products))"
    assert [n.split(" =")[0] for n in notes] == ["products", "pattern"]
    assert "`products` already holds the user's data" in \
        validate_python("products = [1, 2]", ns)[0].message
    # built from the live value, or a new name: fine
    assert validate_python("products = products + [3]\nextra = [1, 2]", ns) == []


@pytest.mark.parametrize("code,what", [
    ("import subprocess\nsubprocess.run(['ls'])", "starts other processes"),
    ("import os\nos.system('rm -rf ~')", "shell command"),
    ("eval('1+1')", "cannot be checked"),
    ("import requests\nrequests.get('http://x')", "network"),
    ("pd.read_csv('https://example.com/a.csv')", "network"),
    ("import shutil\nshutil.rmtree('data')", "deletes"),
    ("open('/etc/passwd', 'w').write('x')", "outside the working directory"),
    ("sales.to_csv('../out.csv')", "outside the working directory"),
    ("from pathlib import Path\nPath('a.txt').unlink()", "deletes"),
    ("import ctypes\nctypes.CDLL(None).system(b'id')", "calls C libraries directly"),
    ("from cffi import FFI", "calls C libraries directly"),
])
def test_safety_flags(code, what):
    issues = check_safety(code)
    assert issues and all(i.kind == "unsafe" and i.severity == "warning" for i in issues)
    assert any(what in i.message for i in issues), issues


def test_safety_passes_ordinary_code():
    assert check_safety("import pandas as pd\nsales.to_csv('out.csv')\n"
                        "open('notes.txt').read()\nimport matplotlib.pyplot as plt") == []


@pytest.mark.parametrize("code,ok", [
    ("result = sales['revenue'].sum()", True),
    ("result, other = 1, 2", True),
    ("for result in [1]:\n    pass", True),
    ("print(sales['revenue'].sum())", False),
    ("def f(df):\n    result = df.sum()\n    return result", False),  # never called
    ("def f(df):\n    return df.sum()\nresult = f(sales)", True),
    ("answer = sales['revenue'].sum()", False),
])
def test_the_named_result_variable_must_be_assigned(ns, code, ok):
    issues = validate_python(code, ns, result_name="result")
    assert (not any(i.kind == "no-result" for i in issues)) is ok
    if not ok:
        assert "`result = ...`" in next(i for i in issues if i.kind == "no-result").message


@pytest.mark.parametrize("code,ok", [
    # the answer goes in the data itself: changing it in place puts it there
    ("sales['margin'] = sales['revenue'] * 0.1", True),
    ("sales.loc[sales['units'] > 2, 'region'] = 'big'", True),
    ("sales.dropna(inplace=True)", True),
    ("del sales['units']", True),
    ("sales = sales.sort_values('revenue')", True),
    # read, printed or copied: not there
    ("print(sales.sort_values('revenue'))", False),
    ("out = sales.copy()\nout['margin'] = 1", False),
    ("sales.dropna(inplace=False)", False),
])
def test_an_answer_in_the_data_may_change_it_in_place(ns, code, ok):
    issues = validate_python(code, ns, result_name="sales")
    assert (not any(i.kind == "no-result" for i in issues)) is ok


def test_sql_ok_and_qualified(shop):
    r = validate_sql("select c.name, sum(o.amount) from customers c join orders o "
                     "on c.customer_id = o.customer_id group by c.name", shop)
    assert r.ok and r.issues == []
    assert "GROUP BY" in r.sql


def test_sql_unknown_column_names_the_real_ones(shop):
    r = validate_sql("select name, total from customers join orders using (customer_id)", shop)
    assert not r.ok
    msg = r.issues[0].message
    assert "no column 'total'" in msg and "orders.amount" in msg


def test_sql_unknown_table(shop):
    r = validate_sql("select * from customer", shop)
    assert not r.ok and "did you mean 'customers'" in r.issues[0].message


def test_sql_syntax_error_and_not_sql(shop):
    assert "syntax" in validate_sql("select name from customers where", shop).issues[0].message
    assert "not a SQL query" in validate_sql("please list customers", shop).issues[0].message
    assert "no SQL" in validate_sql("  ", shop).issues[0].message


def test_sql_double_quoted_string_is_a_string_in_sqlite(shop):
    r = validate_sql('select name from customers where country = "UK"', shop)
    assert r.ok and "country = 'UK'" in r.sql


def test_sql_write_is_flagged(shop):
    r = validate_sql("delete from orders", shop)
    assert [i.kind for i in r.issues] == ["unsafe"]


def test_sql_transpiles_to_the_connection_dialect():
    duck = ConnectionInfo("d", "duckdb", "duckdb", tables={"t": {"a": "INTEGER", "s": "TEXT"}})
    r = validate_sql("SELECT TOP 2 a FROM t", duck, read="tsql")
    assert r.ok and "LIMIT 2" in r.sql
    assert sql_cell(r.sql, duck).splitlines()[-2] == "result = d.execute(query).df()"


def test_sql_cell_runs_on_sqlite(shop_db, shop):
    conn, _ = shop_db
    cell = sql_cell(validate_sql("select count(*) as n from orders", shop).sql, shop)
    ns = {"conn": conn}
    exec(cell, ns)
    assert ns["result"]["n"].tolist() == [4]


@pytest.mark.parametrize("sql,expect,note", [
    # a real column through the wrong alias: the one table in the query that has it
    ("SELECT o.name FROM customers c JOIN orders o ON c.customer_id = o.customer_id",
     "c.name", "o.name -> c.name"),
    # qualified with a table that is not in FROM
    ("SELECT orders.country FROM customers", "customers.country",
     "orders.country -> customers.country"),
    # a one-table query whose columns all live in exactly one other table
    ("SELECT name, country FROM orders WHERE country = 'UK'", "FROM customers",
     "FROM orders -> FROM customers"),
])
def test_sql_unambiguous_slips_are_fixed_from_the_schema(shop, sql, expect, note):
    r = validate_sql(sql, shop)
    assert r.ok and expect in r.sql
    assert [i.kind for i in r.issues] == ["sql-fixed"] and note in r.issues[0].message
    assert validate_sql(r.sql, shop).issues == []  # the fixed query checks clean


@pytest.mark.parametrize("sql,message", [
    # the owner is not in the query: joining it is the model's job
    ("SELECT o.country, o.amount FROM orders o",
     "column 'country' is not in the table it is taken from; it is a column of customers"),
    # two tables could own it: no guess
    ("SELECT x.customer_id FROM orders o JOIN customers c ON o.customer_id = c.customer_id "
     "JOIN orders x2 ON 1", "customer_id"),
])
def test_sql_ambiguous_or_unjoined_columns_are_left_to_the_model(shop, sql, message):
    r = validate_sql(sql, shop)
    assert not r.ok and message in r.issues[0].message


@pytest.mark.parametrize("code,fixed", [
    ("result = sales[99 <= sales['units'] <= 101]",
     "result = sales[(99 <= sales['units']) & (sales['units'] <= 101)]"),
    ("r = sales[sales.units > 1 and sales['revenue'] < 5]",
     "r = sales[(sales.units > 1) & (sales['revenue'] < 5)]"),
    ("r = sales[(sales.units == 2) or (sales.units == 3)]",
     "r = sales[(sales.units == 2) | (sales.units == 3)]"),
    # plain Python logic and already-correct pandas are left alone
    ("x = 1 if 2 > 1 and 3 > 2 else 0", None),
    ("r = sales[sales.units.between(1, 2)]", None),
    ("n = 0 < len(sales) < 10", None),
])
def test_series_logic_is_rewritten_with_bitwise_operators(ns, code, fixed):
    out, notes = fix_series_logic(code, ns)
    if fixed is None:
        assert (out, notes) == (code, [])
    else:
        assert out == fixed and len(notes) == 1
        exec(out, dict(ns))  # the rewritten code runs on the real frame


@pytest.mark.parametrize("code,fixed", [
    # a tuple of columns on a GroupBy is refused since pandas 2.0: a list is meant
    ("r = df.groupby('k')['a', 'b'].sum()", "r = df.groupby('k')[['a', 'b']].sum()"),
    # a single column, or a tuple key on a DataFrame (a MultiIndex column): left alone
    ("r = df.groupby('k')['a'].sum()", None),
    ("r = df['a', 'b']", None),
] + ([
    # removed in pandas 3.0 (renamed in 2.1) and 2.0: the new names mean the same
    ("r = df.applymap(lambda v: v * 2)", "r = df.map(lambda v: v * 2)"),
    ("r = [k for k, _ in df['a'].iteritems()]", "r = [k for k, _ in df['a'].items()]"),
    ("r = df.groupby('k')['a', 'b'].sum().applymap(str)",
     "r = df.groupby('k')[['a', 'b']].sum().map(str)"),
] if not hasattr(pd.DataFrame, "applymap") else []))
def test_pandas_calls_removed_from_the_installed_pandas_are_rewritten(code, fixed):
    df = pd.DataFrame({"k": ["x", "x", "y"], "a": [1, 2, 3], "b": [4, 5, 6]})
    out, notes = fix_old_pandas(code)
    if fixed is None:
        assert (out, notes) == (code, [])
        return
    assert out == fixed and notes
    ns = {"df": df}
    exec(out, ns)  # noqa: S102 - the rewritten code runs on the installed pandas
    assert len(ns["r"]) > 0
