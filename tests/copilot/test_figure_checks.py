"""The figure checks: a chart shows what the request's words ask of it. Tests as data: what each
request asks (parsing), and each rule on figure descriptions that pass and that fail; then the
same rules on figures the real check child drew."""

import numpy as np
import pandas as pd
import pytest

from qcoder_ds.copilot.checks import Cell
from qcoder_ds.copilot.figure_checks import (
    FIGURE_RULES,
    asked_subplots,
    bold_where_asked,
    has_legend,
    log_scale,
    quoted_texts,
    shows_quoted_texts,
    subplot_layout,
)
from qcoder_ds.copilot.sandbox import Limits, RunResult, Sandbox
from qcoder_ds.copilot.tasks import Task
from qcoder_ds.copilot.validate import Kind


@pytest.mark.parametrize("request_,texts", [
    ('# Plot y over x in a line chart and label the line "y over x"', ["y over x"]),
    ('Label the x-axis as "X"', ["X"]),
    ('plot each column as a line and label them as "a" and "b"', ["a", "b"]),
    ('Set "Y and Z" as a main title above the two subplots', ["Y and Z"]),
    ("title the chart 'Revenue by region'", ["Revenue by region"]),
    # quotes that name no text of the chart
    ('Use the "Spectral" colormap and color each point by its value', []),
    ('plot "revenue" per region as bars', []),
    # code lines in the request are not its words
    ('df = pd.DataFrame({"name": ["a", "b"]})\nplot the values', []),
    ("the region's total and the city's mean", []),  # apostrophes are not quotes
])
def test_quoted_texts(request_, texts):
    assert quoted_texts(request_) == texts


@pytest.mark.parametrize("request_,asked", [
    ("Create a 4 by 4 grid of subplots with a figure size of (5,5)", (4, 4)),
    ("make a 2x3 grid of subplots", (2, 3)),
    ("plot them in subplots in a 2 by 2 layout", (2, 2)),
    ("make two side-by-side subplots and in each, plot y over x", 2),
    ("plot x vs y1 and x vs y2 in two subplots, sharing the x axis", 2),
    ("plot y over x", None),
    ("adjust the subplot padding", None),
])
def test_asked_subplots(request_, asked):
    assert asked_subplots(request_) == asked


def _axes(**kw):
    base = {"title": "", "xlabel": "", "ylabel": "", "lines": 1, "legend": None, "texts": [],
            "xticklabels": ["0", "5"], "yticklabels": ["0", "5"], "xscale": "linear",
            "yscale": "linear", "bold": [], "grid": [1, 1]}
    return {**base, **kw}


def _cell(request, axes, task=Task.PLOT, **fig):
    run = RunResult(ok=True, figures=[{"axes": axes, "suptitle": "", "suptitle_bold": False,
                                       "legends": [], **fig}])
    return Cell(request, "plt.plot(x, y)", task, {}, run=run)


_LEGEND_Y = {"title": "", "title_bold": False, "texts": ["y over x"]}
_CASES = [
    # rule, request, figure axes, figure extras, passes (None: the rule does not apply)
    (shows_quoted_texts, 'label the line "y over x"', [_axes(legend=_LEGEND_Y)], {}, True),
    (shows_quoted_texts, 'label the line "y over x"', [_axes()], {}, False),
    (shows_quoted_texts, 'label the x axis as "X"', [_axes(xlabel="x")], {}, True),
    (shows_quoted_texts, 'label the x axis as "X"', [_axes(xlabel="X values")], {}, False),
    (shows_quoted_texts, 'Set "Y and Z" as a main title', [_axes()], {"suptitle": "Y and Z"},
     True),
    (shows_quoted_texts, "plot y over x", [_axes()], {}, None),
    (subplot_layout, "a 4 by 4 grid of subplots", [_axes(grid=[4, 4])] * 16, {}, True),
    (subplot_layout, "a 4 by 4 grid of subplots", [_axes(grid=[4, 4])] * 4, {}, False),
    (subplot_layout, "a 4 by 4 grid of subplots", [_axes()], {}, False),
    (subplot_layout, "two side-by-side subplots", [_axes(grid=[1, 2])] * 2, {}, True),
    (subplot_layout, "two side-by-side subplots", [_axes()], {}, False),
    (has_legend, "plot y over x and show the legend", [_axes(legend=_LEGEND_Y)], {}, True),
    (has_legend, "plot y over x and show the legend", [_axes()], {}, False),
    (has_legend, "plot y over x and show the legend", [_axes()],
     {"legends": [_LEGEND_Y]}, True),  # a figure-level legend counts
    (has_legend, "plot y over x without a legend", [_axes()], {}, None),
    (bold_where_asked, "Bold the legend title",
     [_axes(legend={**_LEGEND_Y, "title": "L", "title_bold": True})], {}, True),
    (bold_where_asked, "Bold the legend title", [_axes(legend=_LEGEND_Y)], {}, False),
    (bold_where_asked, "give it a bold title", [_axes(title="T", bold=["title"])], {}, True),
    (bold_where_asked, "give it a bold title", [_axes(title="T")], {}, False),
    (bold_where_asked, "bold x axis label", [_axes(bold=["xlabel"])], {}, True),
    (bold_where_asked, "draw the bars in bold colours", [_axes()], {}, None),
    (log_scale, "plot y over x on a log-log plot", [_axes(xscale="log", yscale="log")], {},
     True),
    (log_scale, "plot y over x on a log-log plot", [_axes(yscale="log")], {}, False),
    (log_scale, "revenue on a log scale", [_axes(yscale="log")], {}, True),
    (log_scale, "revenue on a log scale", [_axes()], {}, False),
    (log_scale, "plot the log of revenue", [_axes()], {}, None),
]


@pytest.mark.parametrize("rule,request_,axes,fig,passes", _CASES)
def test_rules(rule, request_, axes, fig, passes):
    verdict = rule(_cell(request_, axes, **fig))
    if passes is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.passed is passes
        assert all(i.kind is Kind.PLOT_MISSING for i in verdict.issues)


def test_rules_leave_other_tasks_and_failed_runs_alone():
    for rule in FIGURE_RULES:
        assert rule(_cell('label it "X" on a log scale with a legend in 2 subplots, bold title',
                          [_axes()], task=Task.PANDAS)) is None
        failed = Cell('label it "X"', "plt.plot(x)", Task.PLOT, {},
                      run=RunResult(ok=False, error="boom"))
        assert rule(failed) is None


@pytest.fixture(scope="module")
def box():
    sb = Sandbox(Limits(timeout_s=20, memory_mb=512))
    yield sb
    sb.close()


_REQUEST = ('# Plot y over x in a line chart and label the line "y over x"\n'
            '# Show legend of the plot and give the legend box a title "Legend"\n'
            "# Bold the legend title\n# use a log scale")


@pytest.mark.parametrize("code,failing", [
    ("import matplotlib.pyplot as plt\nplt.plot(x, y, label='y over x')\n"
     "plt.legend(title='Legend', title_fontproperties={'weight': 'bold'})\nplt.yscale('log')",
     set()),
    ("import matplotlib.pyplot as plt\nplt.plot(x, y, label='y over x')\n"
     "plt.legend(title='Legend')\nplt.yscale('log')", {"the legend title is bold"}),
    ("import matplotlib.pyplot as plt\nplt.plot(x, y)\nplt.yscale('log')",
     {"the legend title is bold", "has a legend", "shows the texts the request quotes"}),
    ("import matplotlib.pyplot as plt\nplt.plot(x, y, label='y over x')\n"
     "plt.legend(title='Legend', title_fontproperties={'weight': 'bold'})", {"a log scale"}),
])
def test_on_figures_the_check_child_drew(box, code, failing):
    ns = {"x": np.arange(1, 11), "y": np.arange(1, 11), "df": pd.DataFrame({"a": [1]})}
    run = box.run(code, ns)
    assert run.ok, run.error
    verdicts = [v for v in (rule(Cell(_REQUEST, code, Task.PLOT, ns, run=run))
                            for rule in FIGURE_RULES) if v is not None]
    assert {v.verified for v in verdicts if not v.passed} == failing
    assert len(verdicts) == 4  # texts, legend, bold, log scale apply; subplots do not


def test_a_grid_of_subplots_on_a_real_figure(box):
    request = "# Create a 4 by 4 grid of subplots and plot y over x in each"
    four = "import matplotlib.pyplot as plt\nfor i in range(4):\n    plt.subplot(4, 4, i + 1)\n" \
           "    plt.plot(x, x)"
    full = "import matplotlib.pyplot as plt\nfig, axs = plt.subplots(4, 4)\n" \
           "for ax in axs.flat:\n    ax.plot(x, x)"
    verdicts = {}
    for name, code in (("four", four), ("full", full)):
        run = box.run(code, {"x": np.arange(5)})
        assert run.ok, run.error
        verdicts[name] = subplot_layout(Cell(request, code, Task.PLOT, {}, run=run))
    assert not verdicts["four"].passed and "4 of them" in verdicts["four"].issues[0].message
    assert verdicts["full"].passed
