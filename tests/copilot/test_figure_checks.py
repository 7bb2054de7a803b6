"""The figure checks: a chart shows what the request's words ask of it. Tests as data: what each
request asks (parsing), and each rule on figure descriptions that pass and that fail; then the
same rules on figures the real check child drew."""

import numpy as np
import pandas as pd
import pytest

from qcoder_ds.copilot.checks import Cell
from qcoder_ds.copilot.figure_checks import (
    FIGURE_RULES,
    annotated,
    asked_subplots,
    axis_placement,
    bold_where_asked,
    color_family,
    colors_asked,
    grid_lines,
    has_legend,
    legend_layout,
    line_style_and_marker,
    log_scale,
    minor_ticks,
    no_frames,
    one_legend,
    plotted_over,
    quoted_texts,
    reference_lines,
    shows_quoted_texts,
    subplot_layout,
    text_forms,
    tick_label_rotation,
    tick_sides,
    tick_visibility,
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


def _ticks(ticks=(True, False), labels=(True, False), minor=False, grid=False,
           minor_grid=False):
    return {"ticks": list(ticks), "labels": list(labels), "minor": minor, "grid": grid,
            "minor_grid": minor_grid}


def _axes(**kw):
    base = {"xaxis": _ticks(), "yaxis": _ticks(), "title": "", "xlabel": "", "ylabel": "",
            "lines": 1, "legend": None, "texts": [],
            "xticklabels": ["0", "5"], "yticklabels": ["0", "5"], "xscale": "linear",
            "yscale": "linear", "bold": [], "grid": [1, 1], "line_styles": ["-"],
            "markers": ["None"], "series_labels": [], "xtick_rotation": 0.0,
            "ytick_rotation": 0.0, "spines": 4, "vertical": 0, "horizontal": 0,
            "collections": 0}
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
    (legend_layout, "# Show a two columns legend of this plot",
     [_axes(legend={**_LEGEND_Y, "columns": 2})], {}, True),
    (legend_layout, "# Show a two columns legend of this plot",
     [_axes(legend={**_LEGEND_Y, "columns": 1})], {}, False),
    (legend_layout, "put the legend in 3 columns", [_axes()], {}, False),
    (legend_layout, "# Remove the border of frame of legend",
     [_axes(legend={**_LEGEND_Y, "frame": False})], {}, True),
    (legend_layout, "# Remove the border of frame of legend",
     [_axes(legend={**_LEGEND_Y, "frame": True})], {}, False),
    (legend_layout, "a legend without a frame", [_axes(legend={**_LEGEND_Y, "frame": True})],
     {}, False),
    (legend_layout, "# Hide the legend in the output figure", [_axes()], {}, True),
    (legend_layout, "# Hide the legend in the output figure", [_axes(legend=_LEGEND_Y)], {},
     False),
    (legend_layout, "# Hide the legend in the output figure",
     [_axes(legend={**_LEGEND_Y, "visible": False})], {}, True),
    (legend_layout, "plot y over x and show the legend", [_axes(legend=_LEGEND_Y)], {}, None),
    (legend_layout, "hide the legend title", [_axes(legend=_LEGEND_Y)], {}, None),
    # every feature asked is checked, not only the first
    (legend_layout, "# Show a two columns legend\n# Remove the border of frame of legend",
     [_axes(legend={**_LEGEND_Y, "columns": 2, "frame": True})], {}, False),
    (legend_layout, "# Show a two columns legend\n# Remove the border of frame of legend",
     [_axes(legend={**_LEGEND_Y, "columns": 2, "frame": False})], {}, True),
    (minor_ticks, "# how to turn on minor ticks on y axis only",
     [_axes(yaxis=_ticks(minor=True))], {}, True),
    (minor_ticks, "# how to turn on minor ticks on y axis only",
     [_axes(xaxis=_ticks(minor=True), yaxis=_ticks(minor=True))], {}, False),
    (minor_ticks, "# how to turn on minor ticks", [_axes(xaxis=_ticks(minor=True))], {}, True),
    (minor_ticks, "# how to turn on minor ticks", [_axes()], {}, False),
    (minor_ticks, "show minor ticks on the x axis", [_axes(yaxis=_ticks(minor=True))], {},
     False),
    (minor_ticks, "turn off the minor ticks", [_axes()], {}, None),
    (grid_lines, "# Turn minor ticks on and show gray dashed minor grid lines\n"
     "# Do not show any major grid lines",
     [_axes(xaxis=_ticks(minor=True, minor_grid=True))], {}, True),
    (grid_lines, "# Turn minor ticks on and show gray dashed minor grid lines\n"
     "# Do not show any major grid lines",
     [_axes(xaxis=_ticks(minor=True, minor_grid=True, grid=True))], {}, False),
    (grid_lines, "plot revenue per month with grid lines", [_axes(yaxis=_ticks(grid=True))],
     {}, True),
    (grid_lines, "plot revenue per month with grid lines", [_axes()], {}, False),
    (grid_lines, "plot revenue per month, no grid", [_axes(yaxis=_ticks(grid=True))], {},
     False),
    (grid_lines, "a 2 by 2 grid of subplots", [_axes()], {}, None),
    (tick_sides, "# Plot y over x\n# move the y axis ticks to the right",
     [_axes(yaxis=_ticks(ticks=(False, True), labels=(False, True)))], {}, True),
    (tick_sides, "# move the y axis ticks to the right",
     [_axes(yaxis=_ticks(ticks=(True, True)))], {}, False),
    (tick_sides, "# move the y axis ticks to the right", [_axes()], {}, False),
    (tick_sides, "# Show x axis tick labels on both top and bottom of the figure.",
     [_axes(xaxis=_ticks(labels=(True, True)))], {}, True),
    (tick_sides, "# Show x axis tick labels on both top and bottom of the figure.",
     [_axes()], {}, False),
    (tick_sides, "# Show y axis ticks on the left and y axis label on the right",
     [_axes()], {}, True),
    (tick_sides, "plot y over x", [_axes()], {}, None),
    (bold_where_asked, "# Bold the pie labels", [_axes(bold=["texts"])], {}, True),
    (bold_where_asked, "# Bold the pie labels", [_axes(bold=[])], {}, False),
    (bold_where_asked, "make the tick labels bold", [_axes(bold=["ticklabels"])], {}, True),
    (bold_where_asked, "make the tick labels bold", [_axes(bold=["title"])], {}, False),
    (tick_label_rotation, "# Rotate the x tick labels 45 degrees",
     [_axes(xtick_rotation=45.0)], {}, True),
    (tick_label_rotation, "# Rotate the yticklabels to -60 degree",
     [_axes(ytick_rotation=300.0)], {}, True),
    (tick_label_rotation, "# Rotate the yticklabels to -60 degree",
     [_axes(xtick_rotation=300.0)], {}, False),
    (tick_label_rotation, "rotate the labels by 90 degrees", [_axes()], {}, False),
    (tick_label_rotation, "plot y over x", [_axes()], {}, None),
    (tick_visibility, "# remove x tick labels", [_axes(xaxis=_ticks(labels=(False, False)))],
     {}, True),
    (tick_visibility, "# remove x tick labels", [_axes()], {}, False),
    (tick_visibility, "# Show x axis tick labels but hide the x axis ticks",
     [_axes(xaxis=_ticks(ticks=(False, False)))], {}, True),
    (tick_visibility, "# Show x axis tick labels but hide the x axis ticks", [_axes()], {},
     False),
    (tick_visibility, "# in each subplot, plot y over x and show axis tick labels",
     [_axes(), _axes(xaxis=_ticks(labels=(False, False)))], {}, False),
    (tick_visibility, "# in each subplot, plot y over x and show axis tick labels",
     [_axes(), _axes()], {}, True),
    (tick_visibility, "# move the y axis ticks to the right", [_axes()], {}, None),
    (tick_visibility, "plot y over x", [_axes()], {}, None),
    (line_style_and_marker, "plot a dashed line", [_axes(line_styles=["--"])], {}, True),
    (line_style_and_marker, "plot a dashed line", [_axes()], {}, False),
    (line_style_and_marker, "# How to plot a dashed line on seaborn lineplot?",
     [_axes(line_styles=["-", "--"])], {}, True),
    (line_style_and_marker, "# line plot x and y with a thin diamond marker",
     [_axes(markers=["d"])], {}, True),
    (line_style_and_marker, "# line plot x and y with a thin diamond marker",
     [_axes(markers=["o"])], {}, False),
    (line_style_and_marker, "make a scatter plot with star markers",
     [_axes(collections=1)], {}, None),  # scatter markers are not read
    (line_style_and_marker, "show gray dashed grid lines", [_axes()], {}, None),
    (reference_lines, "# draw vertical lines at [0.22058956, 0.33088437, 2.20589566]",
     [_axes(vertical=3)], {}, True),
    (reference_lines, "# draw vertical lines at [0.22058956, 0.33088437, 2.20589566]",
     [_axes(vertical=1)], {}, False),
    (reference_lines, "add a horizontal line at the mean", [_axes(horizontal=1)], {}, True),
    (reference_lines, "add a horizontal line at the mean", [_axes(vertical=1)], {}, False),
    (reference_lines, "# Use vertical line hatch for the marker", [_axes()], {}, None),
    (reference_lines, "plot a horizontal bar chart", [_axes()], {}, None),
    (annotated, "# annotate each data point with correspond numbers in c",
     [_axes(texts=["58", "651", "393"])], {}, True),
    (annotated, "# annotate each data point with correspond numbers in c", [_axes()], {},
     False),
    (annotated, "show the values on each bar", [_axes(texts=["1", "2"])], {}, True),
    (annotated, "plot y over x", [_axes()], {}, None),
    (one_legend, "# Label each line chart and put them into a single legend",
     [_axes(legend={**_LEGEND_Y, "texts": ["y", "z"]}, series_labels=["y"]),
      _axes(series_labels=["z"])], {}, True),
    (one_legend, "# Label each line chart and put them into a single legend",
     [_axes(legend={**_LEGEND_Y, "texts": ["y"]}, series_labels=["y"]),
      _axes(series_labels=["z"])], {}, False),
    (one_legend, "# Label each line chart and put them into a single legend",
     [_axes(legend=_LEGEND_Y), _axes(legend=_LEGEND_Y)], {}, False),
    (one_legend, "# make a single figure-level legend using the figlegend function",
     [_axes(legend=_LEGEND_Y)], {}, False),
    (one_legend, "# make a single figure-level legend using the figlegend function",
     [_axes(series_labels=["y over x"])], {"legends": [_LEGEND_Y]}, True),
    (one_legend, "show the legend", [_axes()], {}, None),
    (no_frames, "# remove the frames from the subplots", [_axes(spines=0)] * 2, {}, True),
    (no_frames, "# remove the frames from the subplots", [_axes(spines=0), _axes()], {},
     False),
    (no_frames, "# Remove the border of frame of legend", [_axes()], {}, None),
    (colors_asked, "make the bars green", [_axes(colors={"bars": ["#2ca02c"] * 3})], {},
     True),
    (colors_asked, "make the bars green", [_axes(colors={"bars": ["#1f77b4"] * 3})], {},
     False),
    (colors_asked, "make the bars green", [_axes(colors={"lines": ["#008000"]})], {}, False),
    (colors_asked, "plot y over x with a red dashed line",
     [_axes(colors={"lines": ["#d62728"]})], {}, True),  # tab:red is red
    (colors_asked, "# Make both the x axis ticks and the axis label red",
     [_axes(colors={"xticks": ["#ff0000"], "labels": ["#ff0000"]})], {}, True),
    (colors_asked, "# Make both the x axis ticks and the axis label red",
     [_axes(colors={"xticks": ["#000000"], "labels": ["#ff0000"]})], {}, False),
    (colors_asked, "# Make the line of the x axis red",
     [_axes(colors={"xspine": ["#000000"], "lines": ["#ff0000"]})], {}, False),
    (colors_asked, "color the bars by region", [_axes()], {}, None),
    (colors_asked, "a red line for y and a blue line for z", [_axes()], {}, None),
    (colors_asked, "use a red colormap for the heatmap", [_axes()], {}, None),
    (axis_placement, "# put the x axis label on the top",
     [_axes(xaxis={**_ticks(), "label_side": "top"})], {}, True),
    (axis_placement, "# put the x axis label on the top",
     [_axes(xaxis={**_ticks(), "label_side": "bottom"})], {}, False),
    (axis_placement, "# put the x axis label on the right", [_axes()], {}, None),  # no such side
    (text_forms, "# wrap the title", [_axes(title="a\nb")], {}, True),
    (text_forms, "# do not use scientific notation",
     [_axes(yticklabels=["0", "1e6"])], {}, False),
    (text_forms, "# do not use scientific notation",
     [_axes(yaxis={**_ticks(), "offset": "1e7"})], {}, False),
    (text_forms, "# do not use scientific notation", [_axes()], {}, True),
    (text_forms, "plot y over x", [_axes()], {}, None),
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


@pytest.mark.parametrize("request_,code,passes", [
    ("# move the y axis ticks to the right", "ax = plt.gca()\nax.yaxis.tick_right()", True),
    ("# move the y axis ticks to the right", "ax = plt.gca()", False),
    ("# Show x axis tick labels on both top and bottom",
     "plt.tick_params(axis='x', labeltop=True, labelbottom=True)", True),
    ("# how to turn on minor ticks on x axis only",
     "plt.minorticks_on()\nplt.gca().yaxis.set_minor_locator(NullLocator())", True),
    ("# how to turn on minor ticks on x axis only", "plt.minorticks_on()", False),
    ("# show gray dashed minor grid lines\n# Do not show any major grid lines",
     "plt.minorticks_on()\nplt.grid(which='minor', color='gray', linestyle='--')", True),
    ("# show gray dashed minor grid lines\n# Do not show any major grid lines",
     "plt.minorticks_on()\nplt.grid(which='both')", False),
    ("# Show a two columns legend of this plot", "plt.legend(ncol=2)", True),
    ("# Show a two columns legend of this plot", "plt.legend()", False),
    ("# Remove the border of frame of legend", "plt.legend(frameon=False)", True),
    ("# Remove the border of frame of legend",
     "plt.legend().get_frame().set_linewidth(0.0)", True),
    ("# Remove the border of frame of legend", "plt.legend()", False),
    ("# Rotate the yticklabels to -60 degree", "plt.yticks(rotation=-60)", True),
    ("# Rotate the yticklabels to -60 degree", "plt.xticks(rotation=-60)", False),
    ("# Show x axis tick labels but hide the x axis ticks",
     "plt.tick_params(axis='x', length=0)", True),
    ("# Show x axis tick labels but hide the x axis ticks", "plt.xticks([])", False),
    ("# remove x tick labels", "plt.gca().set_xticklabels([])", True),
    ("# draw a dashed line", "plt.plot(x, x + 1, linestyle='--')", True),
    ("# draw a dashed line", "plt.plot(x, x + 1, marker='d')", False),
    ("# with a thin diamond marker", "plt.plot(x, x + 1, marker='d')", True),
    ("# draw vertical lines at [0.2, 0.3, 2.2]", "plt.vlines([0.2, 0.3, 2.2], 0, 1)", True),
    ("# draw vertical lines at [0.2, 0.3, 2.2]",
     "for v in [0.2, 0.3, 2.2]:\n    plt.axvline(v)", True),
    ("# draw vertical lines at [0.2, 0.3, 2.2]", "plt.plot([0.2, 0.3, 2.2], 'r--')", False),
    ("# annotate each data point with its value",
     "for a, b in zip(x, y):\n    plt.annotate(str(b), (a, b))", True),
    ("# annotate each data point with its value", "plt.scatter(x, y)", False),
    ("# remove the frames", "plt.gca().spines[:].set_visible(False)", True),
    ("# remove the frames", "plt.gca().spines['top'].set_visible(False)", False),
    ("# put both lines into a single legend", "plt.legend()", True),
    ("# make a figure-level legend with figlegend", "plt.figlegend()", True),
    ("# make a figure-level legend with figlegend", "plt.legend()", False),
    ("# Bold the pie labels",
     "plt.figure()\nplt.pie([1, 2], labels=['a', 'b'], textprops={'weight': 'bold'})", True),
    ("# Bold the pie labels", "plt.figure()\nplt.pie([1, 2], labels=['a', 'b'])", False),
    ("# Make the line of the x axis red", "plt.gca().spines['bottom'].set_color('red')", True),
    ("# Make the line of the x axis red", "plt.plot(x, x + 1, color='red')", False),
    ("# Make both the x axis ticks and the axis label red",
     "plt.xlabel('X', color='red')\nplt.tick_params(axis='x', colors='red')", True),
    ("# Make both the x axis ticks and the axis label red", "plt.xlabel('X', color='red')",
     False),
    ("# draw green bars", "plt.figure()\nplt.bar(['a', 'b'], [1, 2], color='tab:green')", True),
    ("# draw green bars", "plt.figure()\nplt.bar(['a', 'b'], [1, 2])", False),
    ("# a scatter plot with black points", "plt.scatter(x, y, c='k')", True),
    # a polar axes has no bottom spine: reading it must not fail the cell
    ("# Show y axis ticks on the left and y axis label on the right",
     "plt.ylabel('Y')\nplt.gca().yaxis.set_label_position('right')", True),
    ("# Show y axis ticks on the left and y axis label on the right", "plt.ylabel('Y')", False),
    ("# Move the x-axis of this heatmap to the top of the plot",
     "plt.gca().xaxis.tick_top()", True),
    ("# Move the x-axis of this heatmap to the top of the plot",
     "plt.gca().set_xticks(x)", False),
    ("# fit a very long title into multiple lines", "plt.title('a long\\ntitle')", True),
    ("# fit a very long title into multiple lines", "plt.title('a long title')", False),
    ("# plot on a log-log plot, do not use scientific notation",
     "plt.loglog(x + 1, x + 1)\nfor ax in (plt.gca().xaxis, plt.gca().yaxis):\n"
     "    ax.set_major_formatter(ScalarFormatter())", True),
    ("# plot on a log-log plot, do not use scientific notation", "plt.loglog(x + 1, x + 1)",
     False),
    ("# plot big numbers, do not use scientific notation", "plt.plot(x, x * 1e7)", False),
    ("# plot big numbers, do not use scientific notation",
     "plt.plot(x, x * 1e7)\nplt.ticklabel_format(style='plain')", True),
    ("# Use polar projection and make a bar plot, show the legend",
     "plt.figure()\nplt.polar(['a', 'b'], [3, 4], label='h')\nplt.legend()", True),
])
def test_ticks_grid_and_legend_layout_on_real_figures(box, request_, code, passes):
    code = ("import matplotlib.pyplot as plt\n"
            "from matplotlib.ticker import NullLocator, ScalarFormatter\n"
            "plt.plot(x, y, label='y')\nplt.plot(y, x, label='x')\n" + code)
    run = box.run(code, {"x": np.arange(10), "y": np.arange(10)})
    assert run.ok, run.error
    verdicts = [v for v in (rule(Cell(request_, code, Task.PLOT, {}, run=run))
                            for rule in FIGURE_RULES) if v is not None]
    assert len(verdicts) >= 1 and all(v.passed for v in verdicts) is passes, \
        [(v.verified, v.issues) for v in verdicts]


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


@pytest.mark.parametrize("color,family", [
    ("red", "red"), ("tab:red", "red"), ("crimson", "red"), ("#1f77b4", "blue"),
    ("tab:green", "green"), ("orange", "orange"), ("purple", "purple"), ("black", "black"),
    ("gray", "gray"), ("white", "white"), ("yellow", "yellow"), ("cyan", "cyan"),
])
def test_color_families(color, family):
    assert color_family(color) == family


def test_rules_judge_an_axes_the_child_could_not_read_without_raising():
    """An axes reported as unread (only its counts) is judged on what is there, never a
    traceback: every rule, on a request that names every feature."""
    request = ('# label it "X" on a log scale, a 2 by 2 grid of subplots, bold title, red bars, '
               "a dashed line with star markers, vertical lines at [1, 2], annotate each point, "
               "a single legend, remove the frames, rotate the x tick labels 45 degrees, hide "
               "the y ticks, move the x-axis to the top, wrap the title, do not use scientific "
               "notation, show minor ticks and grid lines, a two columns legend")
    unread = {"title": "", "xlabel": "", "ylabel": "", "lines": 1, "patches": 0,
              "collections": 0, "images": 0, "unread": "KeyError: 'bottom'"}
    verdicts = [rule(_cell(request, [unread])) for rule in FIGURE_RULES]
    assert sum(v is not None for v in verdicts) >= 12
    assert all(not v.passed for v in verdicts if v is not None)  # nothing asked is there


@pytest.mark.parametrize("request_,code,passes", [
    ("# plot z over a", "import matplotlib.pyplot as plt\nplt.plot(a, z)", True),
    ("# plot z over a", "import matplotlib.pyplot as plt\nplt.plot(z, a)", False),
    ("# Plot z over a in a line chart",
     "import matplotlib.pyplot as plt\nplt.plot(z, a, label='Z')", False),
    ("# plot a vs z", "import matplotlib.pyplot as plt\nplt.plot(a, z)", None),  # either way
    ("# plot z over a", "import matplotlib.pyplot as plt\nplt.scatter(z, a)", None),  # no line
    ("# plot z over a", "import matplotlib.pyplot as plt\nplt.plot(a, z * 2)", None),  # unknown
    ("# plot y over x", "import matplotlib.pyplot as plt\nplt.plot(y, x)", None),  # equal data
    ("# plot sales over time", "import matplotlib.pyplot as plt\nplt.plot(z, a)", None),
])
def test_which_data_is_on_the_y_axis_on_real_figures(box, request_, code, passes):
    ns = {"a": np.arange(10), "z": np.arange(10) * 3.0 + 1, "x": np.arange(10),
          "y": np.arange(10)}
    run = box.run(code, ns)
    assert run.ok, run.error
    verdict = plotted_over(Cell(request_, code, Task.PLOT, ns, run=run))
    assert (None if verdict is None else verdict.passed) is passes
    if passes is False:
        assert "use plt.plot(a, z)" in verdict.issues[0].message
