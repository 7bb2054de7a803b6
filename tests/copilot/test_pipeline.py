import pandas as pd
import pytest

from copilot.scripted import ScriptedEngine
from qcoder_ds.copilot.context import collect
from qcoder_ds.copilot.errors import CopilotError, DatabaseError, UnsafeCodeError
from qcoder_ds.copilot.pipeline import Copilot, Options
from qcoder_ds.copilot.sandbox import Limits, Sandbox
from qcoder_ds.copilot.tasks import Task, infer_task


@pytest.fixture(scope="module")
def box():
    sb = Sandbox(Limits(timeout_s=8, sample_rows=200))
    yield sb
    sb.close()


def fence(code, lang="python"):
    return f"Here you go:\n```{lang}\n{code}\n```\n"


def test_wrong_column_is_repaired_with_the_real_names(box, sales):
    eng = ScriptedEngine([
        fence("sales.groupby('Region')['revenue'].sum()"),
        fence("sales.groupby('region')['revenue'].sum()"),
    ])
    ans = Copilot(eng, box).ask("total revenue per region", {"sales": sales})
    assert ans.ok and ans.task is Task.PANDAS and ans.repairs == 1
    assert ans.cell == "sales.groupby('region')['revenue'].sum()"
    repair_prompt = eng.calls[1][-1]["content"]
    assert "no column 'Region'" in repair_prompt and "did you mean 'region'" in repair_prompt
    assert ans.checks["columns"] == "passed" and ans.checks["ran on sample"] == "passed"
    # the prompt carried the live context
    assert "# DataFrame `sales`: 240 rows" in eng.calls[0][1]["content"]


def test_runtime_error_goes_back_to_the_model_and_repairs_are_bounded(box, sales):
    eng = ScriptedEngine([fence("sales['revenue'] / 0 + sales['product'].sum() / 'x'")] * 3)
    ans = Copilot(eng, box).ask("something", {"sales": sales}, Options(repairs=2))
    assert not ans.ok and len(ans.attempts) == 3 and ans.checks["ran on sample"] == "failed"
    assert "running it on a sample of the data failed" in eng.calls[1][-1]["content"]
    assert "TypeError" in eng.calls[1][-1]["content"]
    # the failed code is not shown again: the small model would copy it back
    assert "/ 'x'" not in eng.calls[1][-1]["content"] and len(eng.calls[1]) == 2


def test_an_unexpected_keyword_is_repaired_with_the_arguments_the_call_takes(box, sales):
    eng = ScriptedEngine([fence("sales['revenue'].sort_values(by='revenue')"),
                          fence("sales['revenue'].sort_values(ascending=False)")])
    ans = Copilot(eng, box).ask("revenue sorted", {"sales": sales})
    assert ans.ok and ans.repairs == 1
    repair = eng.calls[1][-1]["content"]
    assert "sort_values() has no argument 'by'; its arguments are: axis, ascending" in repair


def test_recreated_data_is_dropped_before_checking(box, sales):
    code = ("import pandas as pd\nsales = pd.DataFrame({'region': ['x'], 'revenue': [1.0]})\n"
            "sales.groupby('region')['revenue'].mean()")
    ans = Copilot(ScriptedEngine([fence(code)]), box).ask("mean revenue by region",
                                                          {"sales": sales})
    assert ans.ok and "pd.DataFrame" not in ans.cell
    assert any("re-created existing data" in w for w in ans.warnings)
    assert ans.attempts[0].run.value["shape"] == [4]  # ran on the real (sampled) data


def test_sql_answer_becomes_a_cell_on_the_users_connection(box, shop_db):
    conn, _ = shop_db
    eng = ScriptedEngine([fence("SELECT name, SUM(total) FROM customers JOIN orders "
                                "USING (customer_id) GROUP BY name", "sql"),
                          fence("SELECT name, SUM(amount) AS spent FROM customers JOIN orders "
                                "USING (customer_id) GROUP BY name", "sql")])
    ans = Copilot(eng, box).ask("how much did each customer spend", {"conn": conn},
                                Options(task=Task.SQL))
    assert ans.ok and ans.repairs == 1 and ans.checks["schema"] == "passed"
    assert "no column 'total'" in eng.calls[1][-1]["content"]
    ns = {"conn": conn}
    exec(ans.cell, ns)
    assert dict(zip(ns["result"]["name"], ns["result"]["spent"], strict=True)) == {
        "Ada": 30.5, "Grace": 99.0, "Linus": 7.25}
    assert "CREATE TABLE orders" in eng.calls[0][1]["content"]


def test_a_value_moved_to_another_table_is_checked_again(box, shop_db):
    # 'UK' is in no ordered_on, only in customers.country: the comparison moves there, and
    # then nothing uses orders, whose join would repeat each customer once per order
    conn, _ = shop_db
    eng = ScriptedEngine([fence("SELECT c.name FROM customers AS c JOIN orders AS o ON "
                                "c.customer_id = o.customer_id WHERE o.ordered_on = 'UK'",
                                "sql")])
    ans = Copilot(eng, box).ask("names of the customers in the UK", {"conn": conn},
                                Options(task=Task.SQL))
    assert ans.ok and ans.repairs == 0
    assert "JOIN" not in ans.sql and "country = 'UK'" in " ".join(ans.sql.split())
    assert conn.execute(ans.sql).fetchall() == [("Ada",)]
    assert any("orders" in w for w in ans.warnings)


def test_plot_without_a_figure_fails_the_check(box, sales):
    eng = ScriptedEngine([fence("sales.groupby('region')['revenue'].sum()"),
                          fence("import matplotlib.pyplot as plt\n"
                                "sales.groupby('region')['revenue'].sum().plot.bar()\n"
                                "plt.title('Revenue by region')")])
    ans = Copilot(eng, box).ask("revenue per region as a bar chart", {"sales": sales})
    assert ans.task is Task.PLOT and ans.ok and ans.repairs == 1
    assert "drew no figure" in eng.calls[1][-1]["content"]


def test_safe_mode_blocks_and_default_warns(box, sales):
    code = "import os\nos.system('echo hi')\nsales.head()"
    ans = Copilot(ScriptedEngine([fence(code)]), box).ask("x", {"sales": sales},
                                                         Options(check=False))
    assert ans.checks["safety"] == "warning" and any("shell" in w for w in ans.warnings)
    with pytest.raises(UnsafeCodeError, match="os.system"):
        Copilot(ScriptedEngine([fence(code)] * 3), box).ask("x", {"sales": sales},
                                                            Options(safe=True))


def test_samples_vote_for_the_majority_output(box, sales):
    a = fence("sales['revenue'].sum()")
    b = fence("sales['revenue'].max()")
    eng = ScriptedEngine([b, a, a])
    ans = Copilot(eng, box).ask("total revenue", {"sales": sales},
                                Options(samples=3, repairs=0))
    assert ans.cell == "sales['revenue'].sum()"


def test_sql_samples_candidates_and_keeps_the_most_common_result(box, shop_db):
    conn, _ = shop_db
    total = fence("SELECT SUM(amount) FROM orders", "sql")
    eng = ScriptedEngine([fence("SELECT MAX(amount) FROM orders", "sql"), total,
                          fence("SELECT SUM(amount) AS s FROM orders", "sql"),
                          fence("SELECT nonsense FROM orders", "sql")])
    streamed: list[str] = []
    ans = Copilot(eng, box).ask("total of all orders", {"conn": conn},
                                Options(task=Task.SQL, samples=4), on_token=streamed.append)
    assert len(eng.calls) == 4  # greedy and three samples
    assert ans.ok and "SUM(amount)" in ans.sql and ans.repairs == 0
    text = "".join(streamed)
    assert "MAX(amount)" in text and "SUM(amount)" not in text  # only the first is streamed


def test_repairs_start_when_no_candidate_passes(box, shop_db):
    conn, _ = shop_db
    bad = fence("SELECT total FROM orders", "sql")
    eng = ScriptedEngine([bad, bad, fence("SELECT amount FROM orders", "sql")])
    ans = Copilot(eng, box).ask("order amounts", {"conn": conn},
                                Options(task=Task.SQL, samples=2, repairs=1))
    assert ans.ok and ans.repairs == 1 and len(eng.calls) == 3
    assert "no column 'total'" in eng.calls[2][-1]["content"]


@pytest.mark.parametrize("request_,ns,msg", [
    ("   ", {"df": pd.DataFrame({"a": [1]})}, "request is empty"),
    ("x" * 100_000, {"df": pd.DataFrame({"a": [1]})}, "100,000 characters"),
    ("mean of the price column", {"pd": pd, "f": print}, "no DataFrame"),
])
def test_bad_requests_are_clear_messages(request_, ns, msg):
    eng = ScriptedEngine([])
    with pytest.raises(CopilotError, match=msg):
        Copilot(eng, None).ask(request_, ns)
    assert eng.calls == []  # refused before the model was asked


def test_locked_database_is_refused_before_generation(tmp_path):
    import sqlite3

    path = tmp_path / "l.sqlite"
    sqlite3.connect(path).execute("create table t (a int)").connection.commit()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    user = sqlite3.connect(path, timeout=0.05)
    try:
        with pytest.raises(DatabaseError, match="locked"):
            Copilot(ScriptedEngine([]), None).ask("count rows in t", {"conn": user},
                                                  Options(task=Task.SQL))
    finally:
        locker.execute("ROLLBACK")


def test_fix_uses_the_last_error_and_its_cell(box, sales):
    ns = {"sales": sales, "In": ["", "sales.groupby('regio').revenue.sum()"],
          "Err": {1: "KeyError: 'regio'"}}
    eng = ScriptedEngine([fence("sales.groupby('region').revenue.sum()")])
    ans = Copilot(eng, box).ask("", ns, Options(task=Task.FIX))
    assert ans.ok and ans.task is Task.FIX
    assert "KeyError: 'regio'" in eng.calls[0][1]["content"]
    assert "sales.groupby('regio')" in eng.calls[0][1]["content"]


def test_task_inference(sales, shop_db):
    conn, _ = shop_db
    both = collect({"sales": sales, "conn": conn})
    assert infer_task("revenue per region as a bar chart", both) is Task.PLOT
    assert infer_task("mean units per product", both) is Task.PANDAS
    assert infer_task("list customers from orders table", both) is Task.SQL
    assert infer_task("which customers ordered in 2023", collect({"conn": conn})) is Task.SQL
    assert infer_task("explain this", both) is Task.EXPLAIN
    assert infer_task("fix the KeyError", both) is Task.FIX


_EXAMPLE_REQUEST = """Add a column c = a + b.
df:
   a  b
0  1  2
1  3  4
desired output:
   a  b  c
0  1  2  3
1  3  4  7
"""


def test_a_result_the_request_shows_is_preferred_and_found_by_sampling(box):
    df = pd.DataFrame({"a": [1, 3], "b": [2, 4]})
    wrong = fence("result = df.assign(c=df['a'] * df['b'])")
    unchanged = fence("result = df")
    right = fence("result = df.assign(c=df['a'] + df['b'])")
    eng = ScriptedEngine([wrong, unchanged, right])
    ans = Copilot(eng, box).ask(_EXAMPLE_REQUEST, {"df": df},
                                Options(task=Task.PANDAS, example_samples=3,
                                        result_name="result"))
    assert len(eng.calls) == 3  # stopped at the first answer that gives the example
    assert ans.ok and ans.example_matched and "+" in ans.cell
    assert ans.checks["gives the request's example"] == "passed"
    assert len(ans.candidates) == 3 and ans.attempts[0].code == ans.cell


def test_without_a_match_the_first_passing_answer_stays(box):
    df = pd.DataFrame({"a": [1, 3], "b": [2, 4]})
    wrong = fence("result = df.assign(c=df['a'] * df['b'])")
    eng = ScriptedEngine([wrong, wrong, fence("result = df.assign(c=0)")])
    ans = Copilot(eng, box).ask(_EXAMPLE_REQUEST, {"df": df},
                                Options(task=Task.PANDAS, example_samples=2, repairs=0,
                                        result_name="result"))
    assert len(eng.calls) == 3 and not ans.example_matched
    assert "*" in ans.cell  # the majority of the passing candidates
    assert ans.checks["gives the request's example"] == "not found"
    assert not ans.ok  # it ran, but it does not give what the request shows
    assert ans.summary() == "NOT passing the checks: gives the request's example"


def test_a_repair_told_the_result_it_gave_can_reach_the_example(box):
    """No candidate gives the example: a repair round is told the result the cell gave (as
    pandas prints it); the repair that gives the example becomes the answer."""
    df = pd.DataFrame({"a": [1, 3], "b": [2, 4]})
    wrong = fence("result = df.assign(c=df['a'] * df['b'])")
    right = fence("result = df.assign(c=df['a'] + df['b'])")
    eng = ScriptedEngine([wrong, wrong, right])
    ans = Copilot(eng, box).ask(_EXAMPLE_REQUEST, {"df": df},
                                Options(task=Task.PANDAS, example_samples=1, repairs=2,
                                        result_name="result"))
    assert len(eng.calls) == 3 and ans.ok and ans.example_matched and "+" in ans.cell
    told = eng.calls[2][-1]["content"]
    assert "its result is not the one the request shows" in told
    assert "0  1  2   2" in told and "1  3  4  12" in told  # the product it computed
    assert ans.repairs == 1 and not ans.example_repairs


def test_a_failing_answer_repaired_into_the_example_is_ok(box):
    """No candidate runs; the repair that runs gives the example: ok, example matched."""
    df = pd.DataFrame({"a": [1, 3], "b": [2, 4]})
    broken = fence("result = df.assign(c=df['a'] + df['z'])")
    right = fence("result = df.assign(c=df['a'] + df['b'])")
    eng = ScriptedEngine([broken, broken, right])
    ans = Copilot(eng, box).ask(_EXAMPLE_REQUEST, {"df": df},
                                Options(task=Task.PANDAS, example_samples=1, repairs=2,
                                        result_name="result"))
    assert ans.repairs == 1 and ans.example_matched and ans.ok
    assert ans.checks["gives the request's example"] == "passed"


def test_repairs_that_miss_the_example_leave_the_chosen_answer(box):
    df = pd.DataFrame({"a": [1, 3], "b": [2, 4]})
    wrong = fence("result = df.assign(c=df['a'] * df['b'])")
    other = fence("result = df.assign(c=df['a'] - df['b'])")
    eng = ScriptedEngine([wrong, wrong, other, fence("result = df.assign(c=1 +)")])
    ans = Copilot(eng, box).ask(_EXAMPLE_REQUEST, {"df": df},
                                Options(task=Task.PANDAS, example_samples=1, repairs=2,
                                        result_name="result"))
    assert len(eng.calls) == 4 and not ans.ok and "*" in ans.cell
    assert ans.repairs == 0 and len(ans.example_repairs) == 2
    # the second round is told the first repair's result; a failing one, its error
    assert "0  1  2 -1" in eng.calls[3][-1]["content"]


def test_a_request_without_an_example_draws_no_extra_candidates(box, sales):
    eng = ScriptedEngine([fence("sales['revenue'].sum()")])
    ans = Copilot(eng, box).ask("total revenue", {"sales": sales}, Options(task=Task.PANDAS))
    assert ans.ok and len(eng.calls) == 1 and "gives the request's example" not in ans.checks


def test_a_plot_of_values_the_request_gives_needs_no_data_in_scope(box):
    eng = ScriptedEngine([fence("import matplotlib.pyplot as plt\nplt.plot([0, 1], [0, 2])")])
    ans = Copilot(eng, box).ask("draw a line segment from (0,0) to (1,2)", {},
                                Options(task=Task.PLOT))
    assert ans.ok and ans.checks["ran on sample"] == "passed"
    with pytest.raises(CopilotError, match="no DataFrame"):  # no values given: no data
        Copilot(ScriptedEngine([]), box).ask("revenue per region as a bar chart", {},
                                             Options(task=Task.PLOT))


def test_a_function_takes_its_data_as_an_argument_and_needs_none_in_scope(box):
    eng = ScriptedEngine([fence("def col_means(df):\n    return df.mean()")])
    ans = Copilot(eng, box).ask("write a function that returns the mean of each column of a "
                                "DataFrame", {}, Options(task=Task.PANDAS))
    assert ans.ok and "def col_means(df)" in ans.cell and len(eng.calls) == 1


def test_a_result_typed_in_by_hand_goes_back_to_the_model(box, sales):
    """The cell must compute from the user's data: one that types the answer in is right only
    for the example it copied."""
    typed = fence("import pandas as pd\nresult = pd.DataFrame({'region': ['North', 'South'], "
                  "'revenue': [10.0, 20.0]})")
    computed = fence("result = sales.groupby('region', as_index=False)['revenue'].sum()")
    eng = ScriptedEngine([typed, computed])
    ans = Copilot(eng, box).ask("total revenue per region", {"sales": sales},
                                Options(result_name="result"))
    assert ans.ok and ans.repairs == 1 and "sales.groupby" in ans.cell
    assert ans.checks["reads the data"] == "passed"
    assert "never reads the data in the kernel (`sales`)" in eng.calls[1][-1]["content"]


@pytest.mark.parametrize("request_text,code", [
    # a request to make data: typing it in is the point
    ("create a small example DataFrame of three cities", "import pandas as pd\n"
     "pd.DataFrame({'city': ['Oslo', 'Rome', 'Lima']})"),
    # code that reads the data may also type a small table (a lookup to merge with)
    ("add each region's manager", "import pandas as pd\nsales.merge(pd.DataFrame({'region': "
     "['North'], 'manager': ['Ann']}), on='region', how='left')"),
    # nothing typed in: a setting, not an answer about the data
    ("show all columns when printing", "import pandas as pd\n"
     "pd.set_option('display.max_columns', None)"),
])
def test_typed_values_are_fine_where_they_are_the_point(box, sales, request_text, code):
    eng = ScriptedEngine([fence(code)])
    ans = Copilot(eng, box).ask(request_text, {"sales": sales}, Options(task=Task.PANDAS))
    assert ans.ok and len(eng.calls) == 1 and ans.checks["reads the data"] == "passed"


# --------------------------------------------------------------------------- cells that run wrong

_GROUPED = "sales.groupby('region')['revenue'].sum()"


def test_the_demo_request_with_one_region_kept_goes_back_and_the_header_says_what_held(
        box, sales):
    """`make demo`'s wrong cell: it keeps one region and plots one bar per row."""
    one_region = fence("import matplotlib.pyplot as plt\n"
                       "sales[sales['region'] == 'North'].plot.bar(x='date', y='revenue')")
    right = fence(f"import matplotlib.pyplot as plt\n{_GROUPED}.plot.bar()")
    eng = ScriptedEngine([one_region, right])
    ans = Copilot(eng, box).ask("total revenue per region as a bar chart", {"sales": sales})
    assert ans.ok and ans.repairs == 1
    assert "keeps only region == 'North'" in eng.calls[1][-1]["content"]
    assert ans.checks["one bar per region"] == "passed"
    # the child reports the bar heights: that they differ is claimed, not that they are right
    assert ans.summary() == ("checked: ran on a sample; keeps every region; no pandas "
                             "warnings; one bar per region; the chart's values differ; not "
                             "verified: the values")


def test_equal_bars_where_the_request_compares_go_back(box, sales):
    """Bars drawn from the data but all the same height (one overall total per group)."""
    flat = fence("import matplotlib.pyplot as plt\n"
                 "totals = sales.groupby('region')['revenue'].sum()\n"
                 "totals[:] = totals.mean()\n"
                 "totals.plot.bar()")
    right = fence(f"import matplotlib.pyplot as plt\n{_GROUPED}.plot.bar()")
    eng = ScriptedEngine([flat, right])
    ans = Copilot(eng, box).ask("compare total revenue across regions in a bar chart",
                                {"sales": sales})
    assert ans.ok and ans.repairs == 1
    assert ans.checks["the chart's values differ"] == "passed"
    assert len(eng.calls) == 2 and "compares nothing" in eng.calls[1][-1]["content"]


def test_one_overall_mean_drawn_per_group_goes_back(box, sales):
    constant = fence("import matplotlib.pyplot as plt\n"
                     "plt.bar(['North', 'South', 'East', 'West'], [sales['revenue'].mean()] * 4)")
    right = fence("import matplotlib.pyplot as plt\n"
                  "sales.groupby('region')['revenue'].mean().plot.bar()")
    eng = ScriptedEngine([constant, right])
    ans = Copilot(eng, box).ask("compare mean revenue across regions in a bar chart",
                                {"sales": sales})
    assert ans.ok and ans.repairs == 1
    assert "compares nothing" in eng.calls[1][-1]["content"]


def test_one_number_for_a_per_group_request_goes_back(box, sales):
    eng = ScriptedEngine([fence("sales['revenue'].sum()"), fence(_GROUPED)])
    ans = Copilot(eng, box).ask("total revenue per region", {"sales": sales})
    assert ans.ok and ans.repairs == 1 and ans.cell == _GROUPED
    assert "the result has 1 entry where the sample has 4 region value(s)" in \
        eng.calls[1][-1]["content"]


def test_the_variable_the_request_names_must_be_assigned(box, sales):
    eng = ScriptedEngine([fence(_GROUPED), fence(f"by_region = {_GROUPED}")])
    ans = Copilot(eng, box).ask("total revenue per region, store it in `by_region`",
                                {"sales": sales})
    assert ans.ok and ans.repairs == 1
    assert "never assigns it: end with `by_region = ...`" in eng.calls[1][-1]["content"]
    assert ans.checks["puts the answer in `by_region`"] == "passed"
    assert ans.attempts[-1].run.value["shape"] == [4]  # the named result is what was checked


def test_a_description_copied_as_comments_until_the_budget_is_no_answer(box, sales):
    """Seen with the 1.5B: the kernel's description copied back as comments, cut at 384
    tokens. The copies are dropped and the answer fails as cut and as computing nothing."""
    from copilot.scripted import Cut
    from qcoder_ds.copilot.context import describe_dataframe

    lines = describe_dataframe("sales", sales).splitlines()
    echo = "import pandas as pd\n" + "\n".join(f"# {line}" for line in lines * 3)
    eng = ScriptedEngine([Cut("```python\n" + echo[:-7])])
    ans = Copilot(eng, box).ask("total revenue per region", {"sales": sales},
                                Options(repairs=0))
    assert not ans.ok and ans.cell == "import pandas as pd"
    assert ans.checks["complete answer"] == "failed"
    assert ans.checks["computes something"] == "failed"
    assert any("copied from the data description" in i.message and i.kind == "python-fixed"
               for i in ans.attempts[0].issues)


@pytest.mark.parametrize("request_,code", [
    ("total revenue per region", _GROUPED),
    ("total revenue per region", "sales.groupby('region', as_index=False)['revenue'].sum()"),
    ("mean units for each product, largest first", "sales.groupby('product')['units'].mean()"
     ".sort_values(ascending=False)"),
    ("revenue by month", "sales.groupby(sales['date'].dt.to_period('M'))['revenue'].sum()"),
    ("revenue per product in the North", "sales[sales['region'] == 'North']"
     ".groupby('product')['revenue'].sum()"),
    ("fill missing revenue with 0", "sales['revenue'] = sales['revenue'].fillna(0)\nsales"),
    ("total revenue per region as a bar chart", "import matplotlib.pyplot as plt\n"
     f"{_GROUPED}.plot.bar()\nplt.title('Revenue by region')"),
    ("revenue per region and product as a bar chart", "sales.pivot_table(index='region', "
     "columns='product', values='revenue', aggfunc='sum').plot.bar()"),
    ("monthly revenue as a line chart", "sales.resample('ME', on='date')['revenue'].sum()"
     ".plot()"),
    ("total revenue per region; put it in result", f"result = {_GROUPED}"),
])
def test_honest_cells_pass_the_new_checks_at_once(box, sales, request_, code):
    eng = ScriptedEngine([fence(code)])
    ans = Copilot(eng, box).ask(request_, {"sales": sales})
    assert ans.ok and len(eng.calls) == 1, ans.checks
    assert ans.summary().startswith("checked: ran on a sample")


def test_a_chained_inplace_fill_that_pandas_ignores_goes_back(box, sales):
    """pandas 3 ignores ``df[col].fillna(..., inplace=True)`` and warns: the check child
    reports the warning, and the repair is told how to write it."""
    eng = ScriptedEngine([fence("sales['revenue'].fillna(0, inplace=True)\nsales"),
                          fence("sales['revenue'] = sales['revenue'].fillna(0)\nsales")])
    ans = Copilot(eng, box).ask("fill missing revenue with 0", {"sales": sales})
    assert ans.ok and ans.repairs == 1
    assert "ChainedAssignmentError" in eng.calls[1][-1]["content"]
    assert "assign the result back" in eng.calls[1][-1]["content"]
    assert ans.checks["no pandas warnings"] == "passed"


def test_check_gives_the_verdict_ask_would_without_a_model(box, sales):
    """`Copilot.check`: the same fixes, run and rules as `ask`, on a cell it is handed."""
    copilot = Copilot(None, box)  # no engine: a model call would fail
    one_region = ("import matplotlib.pyplot as plt\n"
                  "sales[sales['region'] == 'North'].plot.bar(x='date', y='revenue')")
    ans = copilot.check("total revenue per region as a bar chart", {"sales": sales}, one_region)
    assert not ans.ok and ans.checks["keeps every region"] == "failed"
    right = f"import matplotlib.pyplot as plt\n{_GROUPED}.plot.bar()"
    ans = copilot.check("total revenue per region as a bar chart", {"sales": sales}, right)
    assert ans.ok and ans.checks["one bar per region"] == "passed"
    # ask's fixes apply: the made-up copy of the data is dropped before the run
    ans = copilot.check("total revenue per region", {"sales": sales},
                        "sales = pd.DataFrame({'region': ['a'], 'revenue': [1]})\n"
                        "result = sales.groupby('region')['revenue'].sum()",
                        Options(task=Task.PANDAS))
    assert ans.ok and "sales = pd.DataFrame" not in ans.cell


def test_a_function_answer_is_called_with_its_defaults_when_checked(box, sales):
    """A cell that only defines `f(df=...)` tested nothing: the check calls it, so an error in
    its body goes back to the model instead of being called ok."""
    ns = {"sales": sales, "example_df": sales}
    broken = fence("def f(df=example_df):\n    return df['revenue'].str.upper()")
    right = fence("def f(df=example_df):\n    return df.groupby('region')['revenue'].sum()")
    eng = ScriptedEngine([broken, right])
    ans = Copilot(eng, box).ask("write a function f(df) that sums revenue per region", ns,
                                Options(task=Task.PANDAS))
    assert ans.ok and ans.repairs == 1
    assert "calling f() with its default arguments failed" in eng.calls[1][-1]["content"]
    assert ans.checks["called f() with its defaults"] == "passed"
    assert ans.cell.rstrip().endswith("sum()")  # the call is the check's, not the cell's


def test_a_series_that_lost_its_values_to_the_index_is_not_ok(box):
    """`pd.Series(df['Value'], index=df['Date'])` reindexes by the dates: every value NaN."""
    df = pd.DataFrame({"Date": pd.date_range("2016-01-01", periods=5), "Value": range(5)})
    copilot, ns = Copilot(None, box), {"df": df, "pd": pd}
    opts = Options(task=Task.PANDAS, result_name="ts")
    ans = copilot.check("convert df into a series ts of Value indexed by Date", ns,
                        "ts = pd.Series(df['Value'], index=df['Date'])", opts)
    assert not ans.ok and ans.checks["the result has values (not all NaN)"] == "failed"
    ans = copilot.check("convert df into a series ts of Value indexed by Date", ns,
                        "ts = pd.Series(df['Value'].values, index=df['Date'])", opts)
    assert ans.ok and "not all NaN" not in ans.summary()  # implied by any result: not listed
