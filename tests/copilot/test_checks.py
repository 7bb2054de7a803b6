"""The rules of checks.py, each with its own table: cells that must fail and honest cells that
must pass (a false alarm costs the user a right answer).

Run rules read what the check child reports. ``ran`` runs the cell with real pandas and
matplotlib on the same sample the sandbox takes, and reports it in the child's format, with the
fields this module asks the child for (``warnings``, ``bar_heights``, ``line_ys``) filled in.
"""

from __future__ import annotations

import ast
import contextlib
import io
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from qcoder_ds.copilot import sandbox_child  # noqa: E402
from qcoder_ds.copilot.checks import (  # noqa: E402
    Cell,
    assigns_result,
    computes_nothing,
    example_columns,
    filters_group,
    groupings,
    has_example_columns,
    kept_numbers,
    named_month_dates,
    named_result,
    names_each_column,
    not_all_missing,
    one_entry_per_group,
    replaced_everywhere,
    run_warnings,
    text_dates,
    uncalled_function,
    varies_where_compared,
    warning_entry,
)
from qcoder_ds.copilot.sandbox import RunResult, sample_copy  # noqa: E402
from qcoder_ds.copilot.tasks import Task  # noqa: E402
from qcoder_ds.copilot.validate import Kind  # noqa: E402


def _describe(value):
    if value is None:
        return None
    out = {"type": type(value).__name__, "repr": repr(value)[:200]}
    if isinstance(value, (pd.DataFrame, pd.Series, np.ndarray)):
        out["shape"] = list(value.shape)
    out["is_input"] = False
    return out


def _axes(ax) -> dict:
    bars = [float(p.get_height()) for c in ax.containers if isinstance(c, BarContainer)
            for p in c]
    return {"lines": len(ax.lines), "patches": len(ax.patches), "bar_heights": bars,
            "line_ys": [[float(y) for y in line.get_ydata()] for line in ax.lines]}


def ran(code: str, ns: dict, rows: int = 2000) -> RunResult:
    """The cell run like the check child runs it, reported in its format."""
    plt.close("all")
    env = {k: sample_copy(v, rows) for k, v in ns.items()}
    env.update(pd=pd, np=np, plt=plt)
    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        value = sandbox_child._run_cell(code, env)  # what the child reports as the result
    figures = [{"axes": [_axes(ax) for ax in plt.figure(n).get_axes()]}
               for n in plt.get_fignums()]
    plt.close("all")
    run = RunResult(ok=True, value=_describe(value), figures=figures)
    run.warnings = [warning_entry(w) for w in caught]
    return run


def cell(request, code, sales, task=Task.PANDAS, run=False, result_name=None):
    ns = {"sales": sales}
    return Cell(request, code, task, ns, run=ran(code, ns) if run else None,
                result_name=result_name)


def kinds(verdict):
    return [i.kind for i in verdict.issues] if verdict else None


# --------------------------------------------------------------------------- computes nothing


@pytest.mark.parametrize("code,fires", [
    ("import pandas as pd", True),
    ("import pandas as pd\n# total revenue per region\n# 'region': str, 0 nulls", True),
    ("pass", True),
    ("'''the revenue per region'''\n...", True),
    ("import numpy as np\nfrom matplotlib import pyplot as plt\n\n", True),
    ("sales['revenue'].sum()", False),
    ("import pandas as pd\nprint(sales.shape)", False),
    ("x = 1", False),
    ("def col_means(df):\n    return df.mean()", False),
])
def test_computes_nothing(sales, code, fires):
    v = computes_nothing(cell("total revenue", code, sales))
    assert kinds(v) == ([Kind.COMPUTES_NOTHING] if fires else [])
    if fires:
        assert "computes nothing" in v.issues[0].message


# --------------------------------------------------------------------------- the named result


@pytest.mark.parametrize("request_,name", [
    ("total revenue per region; store it in `result`", "result"),
    ("mean units per product, put it in x", "x"),
    ("the five best-selling products as `top5`", "top5"),
    ("save the answer into a variable called summary", "summary"),
    ("revenue per region, call it by_region", "by_region"),
    ("put the revenue per region in `sales`", "sales"),  # a store verb: the answer goes there
    ("revenue per region as a bar chart", None),
    ("count the missing values in `sales`", None),  # what it works on, not where it goes
    ("save it to disk", None),
    ("put the rows in order of revenue", None),
    ("store it in a dataframe", None),
    ("total revenue per region", None),
])
def test_named_result(sales, request_, name):
    assert named_result(request_, {"sales": sales}) == name


@pytest.mark.parametrize("code,fires", [
    ("sales.groupby('region')['revenue'].sum()", True),
    ("print(sales.groupby('region')['revenue'].sum())", True),
    ("def f():\n    result = sales['revenue'].sum()", True),  # never called
    ("result = sales.groupby('region')['revenue'].sum()", False),
    ("result = sales.copy()\nresult['x'] = 1", False),
])
def test_assigns_result(sales, code, fires):
    v = assigns_result(cell("revenue per region in `result`", code, sales,
                            result_name="result"))
    assert kinds(v) == ([Kind.NO_RESULT] if fires else [])
    assert v.verified == "puts the answer in `result`"


# --------------------------------------------------------------------------- warnings on the run


@pytest.mark.parametrize("code,category", [
    ("sales['revenue'].fillna(0, inplace=True)", "ChainedAssignmentError"),
    ("sales[sales.region == 'North']['units'] = 0", "ChainedAssignmentError"),
    ("sales['revenue'].sum(0)", "Pandas4Warning"),  # positional argument: deprecated
    ("np.mean(sales[sales.units > 100]['revenue'].to_numpy())", "RuntimeWarning"),
    ("sales['revenue'] = sales['revenue'].fillna(0)", None),
    ("sales.loc[sales.region == 'North', 'units'] = 0", None),
    ("sales['revenue'].sum()", None),
    ("sales.groupby('region')['revenue'].mean()", None),
])
def test_run_warnings(sales, code, category):
    v = run_warnings(cell("anything", code, sales, run=True))
    assert v is not None and v.verified == "no pandas warnings"
    if category is None:
        assert v.issues == []
    else:
        assert kinds(v)[:1] == [Kind.RUN_WARNING]
        assert category in v.issues[0].message
        if category != "RuntimeWarning":  # numpy's point into numpy, not the cell
            assert v.issues[0].line == 1


def test_run_warnings_needs_the_child_to_report_them(sales):
    run = RunResult(ok=True)  # today's child: no warnings field, so nothing is claimed
    assert run_warnings(Cell("x", "sales.sum()", Task.PANDAS, {"sales": sales}, run)) is None


def test_a_chained_fill_is_named_with_the_way_to_write_it(sales):
    v = run_warnings(cell("fill missing revenue with 0",
                          "sales['revenue'].fillna(0, inplace=True)", sales, run=True))
    assert "assign the result back" in v.issues[0].message


# --------------------------------------------------------------------------- per group


@pytest.mark.parametrize("request_,found", [
    ("total revenue per region", [("region", None)]),
    ("mean units for each product", [("product", None)]),
    ("revenue by month", [("date", "M")]),
    ("monthly revenue per region", [("region", None), ("date", "M")]),
    ("revenue per region and product", [("region", None)]),  # "and product": not a trigger
    ("revenue per unit", []),  # units is numeric: a rate, not a grouping
    ("top 5 rows sorted by region", []),
    ("the 3 largest sales by revenue", []),
    ("total revenue", []),
])
def test_groupings(sales, request_, found):
    got = [(g.column, g.unit) for g in groupings(request_, {"sales": sales})]
    assert got == found


_BAR = "import matplotlib.pyplot as plt\n"


@pytest.mark.parametrize("request_,code,task,fires", [
    # one overall number, another grouping, one group, the wrong time unit
    ("total revenue per region", "sales['revenue'].sum()", Task.PANDAS, True),
    ("mean units for each product", "sales.groupby('region')['units'].mean()", Task.PANDAS,
     True),
    ("total revenue per region", "sales[sales.region == 'North'].groupby('product')"
     "['revenue'].sum()", Task.PANDAS, True),
    ("revenue by month", "sales.groupby(sales.date.dt.year)['revenue'].sum()", Task.PANDAS,
     True),
    ("mean revenue per region as a bar chart", _BAR + "plt.bar(['a', 'b', 'c'], [1, 2, 3])",
     Task.PLOT, True),
    # the overall number printed, or left in a name, is the result all the same
    ("the mean units per region", "m = sales['units'].mean()\nprint(m)", Task.PANDAS, True),
    ("the mean units per region", "print(sales['units'].mean())", Task.PANDAS, True),
    ("the mean units per region", "mean_units_per_region = sales['units'].mean()",
     Task.PANDAS, True),
    # honest answers in the shapes people write them
    ("total revenue per region", "sales.groupby('region')['revenue'].sum()", Task.PANDAS,
     False),
    ("total revenue per region", "sales.groupby('region', as_index=False)['revenue'].sum()",
     Task.PANDAS, False),
    ("total revenue per region", "t = sales.groupby('region')['revenue'].sum()\nprint(t)",
     Task.PANDAS, False),
    ("revenue per region and product", "sales.pivot_table(index='region', columns='product', "
     "values='revenue', aggfunc='sum')", Task.PANDAS, False),
    ("monthly revenue", "sales.resample('ME', on='date')['revenue'].sum()", Task.PANDAS, False),
    ("revenue by month", "sales.groupby(sales.date.dt.month)['revenue'].sum()", Task.PANDAS,
     False),
    ("top 2 products by revenue for each region", "sales.groupby(['region', 'product'])"
     "['revenue'].sum().groupby(level=0).nlargest(2)", Task.PANDAS, False),
    ("total revenue per region as a bar chart", "sales.groupby('region')['revenue'].sum()"
     ".plot.bar()", Task.PLOT, False),
    ("revenue per region and product as a bar chart", "sales.pivot_table(index='region', "
     "columns='product', values='revenue', aggfunc='sum').plot.bar()", Task.PLOT, False),
])
def test_one_entry_per_group(sales, request_, code, task, fires):
    v = one_entry_per_group(cell(request_, code, sales, task, run=True))
    assert v is not None
    assert kinds(v) == ([Kind.NOT_PER_GROUP] if fires else [])
    if fires:
        assert "per" in v.issues[0].message and "sample has" in v.issues[0].message


@pytest.mark.parametrize("request_,code,task", [
    ("total revenue per unit", "sales.revenue.sum() / sales.units.sum()", Task.PANDAS),
    ("histogram of revenue for each region", _BAR + "for r, g in sales.groupby('region'):\n"
     "    plt.hist(g.revenue, alpha=0.5)", Task.PLOT),
    ("monthly revenue as a line chart", "sales.resample('ME', on='date').revenue.sum().plot()",
     Task.PLOT),
    ("total revenue", "sales.revenue.sum()", Task.PANDAS),
    # one entry per row: a new column computed per group, not an aggregate
    ("add a column with each region's mean revenue", "sales.assign(m=sales.groupby('region')"
     "['revenue'].transform('mean'))", Task.PANDAS),
])
def test_one_entry_per_group_does_not_apply(sales, request_, code, task):
    assert one_entry_per_group(cell(request_, code, sales, task, run=True)) is None


@pytest.mark.parametrize("request_,code,fires", [
    ("total revenue per region", "sales[sales.region == 'North'].revenue.sum()", True),
    ("revenue per region", "sales[sales['region'].isin(['West'])].revenue.sum()", True),
    ("units per region", "sales.query(\"region == 'East'\").units.sum()", True),
    ("revenue per region as a bar chart", "sales.loc[sales.region == 'North', 'revenue']"
     ".plot.bar()", True),
    ("revenue per product in the North region", "sales[sales.region == 'North']"
     ".groupby('product').revenue.sum()", False),  # the request names the value
    ("revenue per region for coffee", "sales[sales['product'] == 'coffee']"
     ".groupby('region').revenue.sum()", False),  # filters another column
    ("revenue per region", "sales.groupby('region').revenue.sum()", False),
])
def test_filters_group(sales, request_, code, fires):
    v = filters_group(cell(request_, code, sales))
    assert kinds(v) == ([Kind.FILTERS_GROUP] if fires else [])
    if fires:
        assert "keeps only region ==" in v.issues[0].message


# --------------------------------------------------------------------------- constant plots


@pytest.mark.parametrize("request_,code,fires", [
    ("compare mean revenue across regions", _BAR + "plt.bar(['North', 'South', 'East'], "
     "[sales.revenue.mean()] * 3)", True),
    ("mean revenue per region as a bar chart", _BAR + "plt.bar(['North', 'South'], "
     "sales['revenue'].mean())", True),
    ("mean revenue per region as a bar chart", _BAR + "m = sales.revenue.mean()\n"
     "plt.bar(['N', 'S', 'E', 'W'], [m, m, m, m])", True),
    ("mean revenue per region as a bar chart", _BAR + "plt.bar(['N', 'S', 'E'], [5, 5, 5])",
     True),
    ("compare units by product as a line chart", _BAR + "plt.plot([1, 2, 3], [2, 2, 2])", True),
    ("mean revenue per region as a bar chart", "sales.groupby('region')['revenue'].mean()"
     ".plot.bar()", False),
    ("compare tea and coffee revenue", _BAR + "plt.bar(['tea', 'coffee'], "
     "[sales[sales['product'] == 'tea'].revenue.sum(), "
     "sales[sales['product'] == 'coffee'].revenue.sum()])", False),
    ("monthly revenue per region", "sales.pivot_table(index='date', columns='region', "
     "values='revenue', aggfunc='sum').resample('ME').sum().plot()", False),
])
def test_varies_where_compared(sales, request_, code, fires):
    v = varies_where_compared(cell(request_, code, sales, Task.PLOT, run=True))
    assert kinds(v) == ([Kind.CONSTANT_PLOT] if fires else [])
    if fires:
        assert "compares nothing" in v.issues[0].message


def test_a_plot_that_compares_nothing_is_not_judged(sales):
    code = _BAR + "plt.plot([0, 1], [5, 5])"
    assert varies_where_compared(cell("draw a horizontal line at 5", code, sales, Task.PLOT,
                                      run=True)) is None


@pytest.mark.parametrize("request_,columns", [
    ('The resulting dataframe should look like so:\nresult = pd.DataFrame({"A": [1, 2], '
     '"B": [4, 5], "inv_A": [1/1, 1/2], "inv_B": [1/4, 1/5]})', ["A", "B", "inv_A", "inv_B"]),
    ('result = pd.DataFrame({"A": [1], "exp_A ": [e^1]})', ["A", "exp_A"]),  # not Python
    ("expected = pd.DataFrame({'city': ['x'], 'n': [2]})", ["city", "n"]),
    ('df = pd.DataFrame({"A": [1, 2, 3], "B": [4, 5, 6]})', None),  # the input, not a result
    ("result = pd.DataFrame({'A': [1]})", None),  # one column says too little
    ("total revenue per region", None),
])
def test_example_columns_are_read_from_a_result_written_as_code(request_, columns):
    assert example_columns(request_) == columns


def _ran(value):
    return RunResult(ok=True, value=value)


@pytest.mark.parametrize("value,passes", [
    ({"type": "DataFrame", "columns": ["A", "B", "inv_A", "inv_B"]}, True),
    ({"type": "DataFrame", "columns": ["A", "B"]}, False),  # the new columns only replace
    ({"type": "DataFrame", "columns": ["inv_A", "inv_B", "A", "B"]}, False),
    ({"type": "Series"}, False),
])
def test_a_result_without_the_example_columns_fails(value, passes):
    request = ('should look like so:\nresult = pd.DataFrame({"A": [1], "B": [4], '
               '"inv_A": [1/1], "inv_B": [1/4]})')
    verdict = has_example_columns(Cell(request, "result = df", Task.PANDAS, run=_ran(value)))
    assert verdict.passed is passes
    assert passes or verdict.issues[0].kind is Kind.EXAMPLE_COLUMNS


@pytest.mark.parametrize("code,name", [
    ("def f(df=example_df):\n    return df.sum()", "f"),
    ("def f():\n    return 1", "f"),
    ("def f(df):\n    return df", None),  # no default: nothing to call it with
    ("def f(df=example_df, *, k):\n    return df", None),
    ("def f(df=example_df):\n    return df\nresult = f()", None),  # called already
    ("x = 1", None),
])
def test_a_function_the_cell_never_calls_is_called_with_its_defaults(code, name):
    assert uncalled_function(ast.parse(code)) == name


@pytest.mark.parametrize("request_,value,passes", [
    ("turn df into a series indexed by date", {"all_missing": True}, False),
    ("turn df into a series indexed by date", {"all_missing": False}, True),
    ("set every value below 0 to NaN", {"all_missing": True}, None),
    ("add an empty column of missing values", {"all_missing": True}, None),
    ("the output is all NaN. Where does NaN come from?", {"all_missing": True}, False),
    ("turn df into a series indexed by date", {"type": "int"}, None),  # not a frame
])
def test_a_result_that_is_all_nan_fails(request_, value, passes):
    verdict = not_all_missing(Cell(request_, "ts = x", Task.PANDAS, run=_ran(value)))
    assert (verdict.passed if verdict else None) is passes
    assert passes is not False or verdict.issues[0].kind is Kind.ALL_MISSING


# --------------------------------------------------------------------------- every column

_WIDE = pd.DataFrame({"A_Name": ["AA", "BB", "CC"], "Value_B": [1.2, 0.7, -2.4],
                      "Value_C": [0.5, -1.3, 0.1], "Value_D": [-1.3, 0.8, 0.4]})
_AB = pd.DataFrame({"A": [1, 2, 3], "B": [4, 5, 6]})


@pytest.mark.parametrize("request_,code,frame,fires", [
    ("add the inverse of each existing column, named inv_A and so on",
     "result = df.assign(inv_A=1 / df['A'], inv_B=1 / df['B'])", _AB, True),
    ("add the inverse of each existing column, named inv_A and so on",
     "inv_A = 1 / df.A\ninv_B = 1 / df.B\nresult = pd.concat([df, inv_A, inv_B], axis=1)",
     _AB, True),
    ("keep the rows where the absolute value of any column prefixed with Value is over 1",
     "df = df[(abs(df['Value_B']) > 1) | (abs(df['Value_C']) > 1) | (abs(df['Value_D']) > 1)]",
     _WIDE, True),
    ("keep the rows where the absolute value of any column prefixed with Value is over 1",
     "df = df[(abs(df['Value_B']) > 1) | (abs(df['Value_C']) > 1) | (abs(df['Value_D']) > 1)]"
     "\nprint(df)", _WIDE, True),  # printing the frame does not work over its columns
    ("keep the rows where any column prefixed with Value is over 1, and drop the prefix",
     "df = df[(df['Value_B'] > 1) | (df['Value_C'] > 1) | (df['Value_D'] > 1)]\n"
     "df.columns = df.columns.str.replace('Value_', '')", _WIDE, True),  # the filter lists
    # honest: the columns come from the frame, or one operation covers them all
    ("add the inverse of each existing column, named inv_A and so on",
     "result = df.join((1 / df).add_prefix('inv_'))", _AB, None),
    ("add the inverse of each existing column, named inv_A and so on",
     "result = df.copy()\nfor c in df.columns:\n    result['inv_' + c] = 1 / df[c]", _AB, None),
    ("keep the rows where the absolute value of any column prefixed with Value is over 1",
     "v = df.filter(like='Value')\ndf = df[(v.abs() > 1).any(axis=1)]", _WIDE, None),
    ("fill the missing values in every column with 0", "df = df.fillna(0)", _AB, None),
    # not about every column, or only one column named
    ("add the ratio of A to B as a new column", "df['r'] = df['A'] / df['B']", _AB, None),
    ("add the inverse of each existing column", "df['inv_A'] = 1 / df['A']", _AB, None),
])
def test_names_each_column(request_, code, frame, fires):
    verdict = names_each_column(Cell(request_, code, Task.PANDAS, {"df": frame}))
    assert (not verdict.passed if verdict else None) is fires
    assert not fires or verdict.issues[0].kind is Kind.EVERY_COLUMN


def test_names_each_column_leaves_plots_alone():
    code = "df.plot(x='A', y='B')"
    assert names_each_column(Cell("plot each column", code, Task.PLOT, {"df": _AB})) is None


# --------------------------------------------------------------------------- dates as text


@pytest.mark.parametrize("request_,code,fires", [
    ("remove the time zone from the datetime column",
     "df['datetime'] = df['datetime'].dt.strftime('%Y-%m-%d %H:%M:%S')", True),
    ("remove the time zone and sort by datetime",
     "df['t'] = pd.to_datetime(df['t']).dt.tz_localize(None).dt.strftime('%Y-%m-%d %H:%M:%S')"
     "\ndf = df.sort_values('t')", True),
    ("remove the time zone from the datetime column",
     "df['datetime'] = df['datetime'].dt.tz_localize(None)", None),
    # a format the request asks for, or one that changes what is shown
    ("write the dates as strings like 2015-12-01 00:00:00",
     "df['d'] = df['d'].dt.strftime('%Y-%m-%d %H:%M:%S')", None),
    ("show the date as 01-Dec-2015 00:00:00 (this format)",
     "df['d'] = df['d'].dt.strftime('%d-%b-%Y %H:%M:%S')", None),
    ("keep only the day of each timestamp", "df['d'] = df['d'].dt.strftime('%Y-%m-%d')", None),
])
def test_text_dates(request_, code, fires):
    verdict = text_dates(Cell(request_, code, Task.PANDAS))
    assert (not verdict.passed if verdict else None) is fires
    assert not fires or verdict.issues[0].kind is Kind.TEXT_DATES


# --------------------------------------------------------------------------- replaced everywhere

_ESCAPED = pd.DataFrame({"A": ["Good &AMP; bad", "BB", "Good &LT; bad"], "B": range(3),
                         "C": ["Good &GT; bad"] * 3})


def _shown(code: str, frame: pd.DataFrame, name: str = "df") -> RunResult:
    """``code`` run on a copy of ``frame``; the child's report of the variable ``name``."""
    env = {"df": frame.copy(), "pd": pd}
    exec(code, env)  # noqa: S102 - the test's own code
    return RunResult(ok=True, value=sandbox_child._describe(env[name]))


@pytest.mark.parametrize("request_,code,passes", [
    ("replace &AMP; with '&' from all columns where it could be in any position",
     "df['A'] = df['A'].str.replace('&AMP;', '&')", True),  # only A holds &AMP;
    ("replace &AMP;, &LT;, &GT; with '&', '<', '>' from all columns",
     "df['A'] = df['A'].str.replace('&AMP;', '&')\ndf['C'] = df['C'].str.replace('&GT;', '>')",
     False),  # &LT; is left in A
    ("replace &AMP;, &LT;, &GT; with '&', '<', '>' from all columns",
     "df = df.replace({'&AMP;': '&', '&LT;': '<', '&GT;': '>'}, regex=True)", True),
    ("replace &GT; with '>' everywhere", "df['A'] = df['A'].str.replace('&GT;', '>')", False),
    # the request names the column: the others may keep it
    ("replace &GT; with '>' in column C", "df['C'] = df['C'].str.replace('&GT;', '>')", None),
    ("replace the zeros with NaN", "df = df.replace(0, float('nan'))", None),  # not text held
])
def test_replaced_everywhere(request_, code, passes):
    verdict = replaced_everywhere(Cell(request_, code, Task.PANDAS, {"df": _ESCAPED},
                                       run=_shown(code, _ESCAPED)))
    assert (verdict.passed if verdict else None) is passes
    assert passes is not False or verdict.issues[0].kind is Kind.NOT_REPLACED


# --------------------------------------------------------------------------- dates by name

_STAMPS = pd.DataFrame({"datetime": pd.to_datetime(["2015-12-01 00:00:00",
                                                    "2015-12-02 00:01:00"])})


@pytest.mark.parametrize("request_,code,passes", [
    ("Desired output\n01-Dec-2015 00:00:00",
     "df['datetime'] = df['datetime'].dt.strftime('%d-%m-%Y %H:%M:%S')", False),
    ("Desired output\n01-Dec-2015 00:00:00", "pass", False),  # still datetimes, in digits
    ("Desired output\n01-Dec-2015 00:00:00",
     "df['datetime'] = df['datetime'].dt.strftime('%d-%b-%Y %H:%M:%S')", True),
    ("show dates like Dec 1, 2015", "df['datetime'] = df['datetime'].dt.strftime('%b %-d, %Y')",
     True),
    ("remove the time zone", "pass", None),  # no date shown by name
])
def test_named_month_dates(request_, code, passes):
    verdict = named_month_dates(Cell(request_, code, Task.PANDAS, {"df": _STAMPS},
                                     run=_shown(code, _STAMPS)))
    assert (verdict.passed if verdict else None) is passes
    assert passes is not False or verdict.issues[0].kind is Kind.DATE_FORM


def test_named_month_dates_the_data_holds_are_inputs_not_examples():
    frame = pd.DataFrame({"d": ["01-Dec-2015", "02-Dec-2015"]})
    code = "df['d'] = pd.to_datetime(df['d'], format='%d-%b-%Y')"
    verdict = named_month_dates(Cell("parse dates like 01-Dec-2015 into datetimes", code,
                                     Task.PANDAS, {"df": frame}, run=_shown(code, frame)))
    assert verdict is None


# --------------------------------------------------------------------------- numbers kept


@pytest.mark.parametrize("request_,code,passes", [
    ("replace &LT; with '<' in all columns",
     "import re\ndf = df.map(lambda x: re.sub('&LT;', '<', str(x)))", False),  # B: text now
    ("replace &LT; with '<' in all columns",
     "df = df.replace('&LT;', '<', regex=True)", True),
    ("replace &LT; with '<' in every column, where it is in any position in a string",
     "import re\ndf = df.map(lambda x: re.sub('&LT;', '<', str(x)))", False),
    ("turn every value into a string", "df = df.astype(str)", None),  # asked for text
    ("count the rows", "n = len(df)", None),  # not a frame
])
def test_kept_numbers(request_, code, passes):
    name = "n" if code.startswith("n =") else "df"
    verdict = kept_numbers(Cell(request_, code, Task.PANDAS, {"df": _ESCAPED},
                                run=_shown(code, _ESCAPED, name)))
    assert (verdict.passed if verdict else None) is passes
    assert passes is not False or verdict.issues[0].kind is Kind.NUMBERS_AS_TEXT


def test_a_cell_ending_in_an_assignment_into_a_frame_is_checked_on_that_frame():
    """``df['A'] = ...`` as the last line shows ``df`` (a notebook user looks at it next), so
    the value rules see it; an assignment into something that holds no data shows nothing."""
    env = {"df": _ESCAPED.copy()}
    value = sandbox_child._run_cell("df['A'] = df['A'].str.upper()", env)
    assert value is env["df"] and value["A"].iloc[0] == "GOOD &AMP; BAD"
    assert sandbox_child._run_cell("import matplotlib\n"
                                   "matplotlib.rcParams['font.size'] = 9", {}) is None
    code = "df['A'] = df['A'].str.replace('&GT;', '>')"
    run = RunResult(ok=True, value=sandbox_child._describe(
        sandbox_child._run_cell(code, {"df": _ESCAPED.copy()})))
    verdict = replaced_everywhere(Cell("replace &GT; with '>' everywhere", code, Task.PANDAS,
                                       {"df": _ESCAPED}, run=run))
    assert verdict is not None and not verdict.passed  # &GT; is left in C
