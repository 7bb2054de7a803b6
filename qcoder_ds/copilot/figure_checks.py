"""Checks that a chart shows what the request's words ask of it, not only that it was drawn.

A plot cell that runs and draws a figure is not yet the plot that was asked for: the request
says 'label the line "y over x"', "a 4 by 4 grid of subplots", "show the legend", "bold the
legend title", "on a log scale", and the cell leaves one of them out. Each such kind is a rule
here, read from the request's words and from what the check child reported about every
figure (its texts, legends, scales, bold texts and subplot grid). A rule applies only when the
request asks for its feature in plain words; it never guesses at what a request might want.

The rules run after the sandbox, beside :data:`qcoder_ds.copilot.checks.RUN_RULES`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from qcoder_ds.copilot.checks import Cell, Rule, Verdict
from qcoder_ds.copilot.tasks import Task
from qcoder_ds.copilot.validate import Issue, Kind

_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
            "eight": 8, "nine": 9, "ten": 10}
_N = r"(\d+|" + "|".join(_NUMBERS) + r")"


def _number(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBERS[word.lower()]


def _axes(cell: Cell) -> list[dict[str, Any]]:
    return [a for f in (cell.run.figures if cell.run else []) for a in f.get("axes", [])]


def _applies(cell: Cell) -> bool:
    return cell.task is Task.PLOT and cell.run is not None and cell.run.ok and \
        bool(cell.run.figures)


def _clauses(request: str) -> Iterator[str]:
    """The request's prose, clause by clause: comment markers dropped, code lines skipped (a
    quoted string in ``df = pd.DataFrame({"name": ...})`` names nothing in the chart)."""
    for line in request.splitlines():
        text = line.strip()
        if text.startswith("#"):
            text = text.lstrip("#").strip()
        elif re.search(r"=|\bimport\b|\w\(|^\s*(def|for|if|print|return)\b", text):
            continue
        yield from (c for c in re.split(r"[.;!?](?:\s|$)", text) if c.strip())


# --------------------------------------------------------------------------- quoted texts

_NAMING = r"(?:label(?:s|ed)?|title[sd]?|legend|name[sd]?|call(?:ed)?|caption|annotat\w*|" \
          r"text|x-?label|y-?label)"
_QUOTED = re.compile(r"\"([^\"\n]{1,80})\"|(?<![A-Za-z])'([^'\n]{1,80})'")
_AFTER_NAMING = re.compile(rf"\b{_NAMING}\b")
_BEFORE_NAMING = re.compile(rf"^\s*(?:as|to be)\s+(?:(?:a|an|the)\s+)?(?:\w+\s+){{0,2}}"
                            rf"{_NAMING}\b", re.I)


def quoted_texts(request: str) -> list[str]:
    """The texts a request puts in quotes as a label, title, legend entry or annotation:
    quoted after a naming word in the same clause ('label the line "y over x"', 'label them
    "a" and "b"'), or followed by one ('set "Y and Z" as a main title')."""
    out: list[str] = []
    for clause in _clauses(request):
        named = _AFTER_NAMING.search(clause.lower())
        for m in _QUOTED.finditer(clause):
            text = (m.group(1) or m.group(2)).strip()
            after = named is not None and m.start() > named.start()
            if text and (after or _BEFORE_NAMING.match(clause[m.end():])):
                out.append(text)
    return list(dict.fromkeys(out))


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def figure_texts(cell: Cell) -> list[str]:
    """Every text the figures show: titles, axis labels, legend titles and entries,
    annotations, tick labels, figure titles and figure legends."""
    out: list[str] = []
    for fig in cell.run.figures if cell.run else []:
        out.append(fig.get("suptitle") or "")
        for legend in fig.get("legends") or []:
            out += [legend.get("title") or "", *(legend.get("texts") or [])]
        for ax in fig.get("axes", []):
            out += [ax.get("title") or "", ax.get("xlabel") or "", ax.get("ylabel") or ""]
            out += list(ax.get("texts") or []) + list(ax.get("xticklabels") or []) + \
                list(ax.get("yticklabels") or [])
            legend = ax.get("legend") or {}
            out += [legend.get("title") or "", *(legend.get("texts") or [])]
    return [_norm(t) for t in out if t]


def _shown(text: str, shown: list[str]) -> bool:
    """A text of one or two characters must be a whole text of the figure ("X", "a"); a longer
    one may be part of one ("y over x" in "y over x (m)")."""
    want = _norm(text)
    return any(want == t for t in shown) if len(want) <= 2 else any(want in t for t in shown)


def shows_quoted_texts(cell: Cell) -> Verdict | None:
    """Every text the request quotes as a label, title or legend entry is in the figure."""
    if not _applies(cell):
        return None
    wanted = quoted_texts(cell.request)
    if not wanted:
        return None
    shown = figure_texts(cell)
    missing = [t for t in wanted if not _shown(t, shown)]
    verified = "shows the texts the request quotes"
    if not missing:
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.PLOT_MISSING, "the request asks the chart to show "
        + ", ".join(f'"{t}"' for t in missing[:4]) + " (as a title, axis label, legend entry "
        "or annotation) but no text of the figure says so; set it with the label=, title or "
        "xlabel/ylabel the request describes")])


# --------------------------------------------------------------------------- subplots

_GRID = re.compile(rf"\b{_N}\s*(?:by|x|×)\s*{_N}\s+(?:grid\s+of\s+)?(?:\w+\s+)?subplots?\b|"
                   rf"\bsubplots?\s+(?:in\s+)?(?:a\s+)?{_N}\s*(?:by|x|×)\s*{_N}\b", re.I)
_COUNT = re.compile(rf"\b{_N}\s+(?:[\w-]+\s+){{0,2}}subplots\b", re.I)


def asked_subplots(request: str) -> tuple[int, int] | int | None:
    """(rows, columns) for "a 4 by 4 grid of subplots", a count for "two side-by-side
    subplots", else None."""
    for clause in _clauses(request):
        m = _GRID.search(clause)
        if m:
            a, b = [g for g in m.groups() if g]
            return _number(a), _number(b)
        m = _COUNT.search(clause)
        if m:
            return _number(m.group(1))
    return None


def subplot_layout(cell: Cell) -> Verdict | None:
    """The figure has the subplots the request asks for: an N by M grid of N×M axes, or N."""
    if not _applies(cell):
        return None
    asked = asked_subplots(cell.request)
    if asked is None:
        return None
    grids = [tuple(a["grid"]) for a in _axes(cell) if a.get("grid")]
    if isinstance(asked, tuple):
        rows, cols = asked
        verified = f"a {rows}×{cols} grid of subplots"
        count = max(grids.count((rows, cols)), grids.count((cols, rows)))
        if count >= rows * cols:
            return Verdict(verified)
        found = f"{count} of them" if count else f"{len(_axes(cell))} axes in another layout"
        return Verdict(verified, [Issue(
            Kind.PLOT_MISSING, f"the request asks for a {rows} by {cols} grid of subplots "
            f"({rows * cols} axes) but the figure has {found}; use plt.subplots({rows}, "
            f"{cols}) and draw in every axes")])
    verified = f"{asked} subplots"
    if len(grids) >= asked:
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.PLOT_MISSING, f"the request asks for {asked} subplots but the figure has "
        f"{len(grids)}; use plt.subplots with {asked} axes and draw in each")])


# --------------------------------------------------------------------------- legend

_LEGEND = re.compile(r"\b(?:show|add|put|display|include|draw|place|make|create|with|have|"
                     r"has|needs?|want)\b(?:\s+[\w-]+){0,3}\s+legends?\b|\blegends?\s+(?:in|at|on|"
                     r"to)\s+the\b", re.I)
_NO_LEGEND = re.compile(r"\b(?:no|remove|hide|without|not|don't|never|turn off)\b"
                        r"(?:\s+[\w-]+){0,3}\s+legends?\b", re.I)


def has_legend(cell: Cell) -> Verdict | None:
    """A request that asks to show a legend gets a chart with one (on an axes or the figure)."""
    if not _applies(cell) or not any(_LEGEND.search(c) and not _NO_LEGEND.search(c)
                                     for c in _clauses(cell.request)):
        return None
    verified = "has a legend"
    if any(a.get("legend") for a in _axes(cell)) or \
            any(f.get("legends") for f in cell.run.figures):
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.PLOT_MISSING, "the request asks for a legend but the chart has none; give each "
        "series a label= and call plt.legend()")])


# --------------------------------------------------------------------------- bold

_BOLD_TARGETS = (("legend title", re.compile(r"\blegend\s+title\b", re.I)),
                 ("title", re.compile(r"\btitle\b", re.I)),
                 ("axis label", re.compile(r"\b(?:[xy][- ]?(?:axis\s+)?label|axis\s+labels?)\b",
                                           re.I)))


def _bold_target(request: str) -> str | None:
    for clause in _clauses(request):
        if re.search(r"\bbold\b", clause, re.I):
            for name, pattern in _BOLD_TARGETS:
                if pattern.search(clause):
                    return name
    return None


def bold_where_asked(cell: Cell) -> Verdict | None:
    """"Bold the legend title" / "a bold title" / "bold axis labels": that text is bold."""
    if not _applies(cell):
        return None
    target = _bold_target(cell.request)
    if target is None:
        return None
    axes, figs = _axes(cell), cell.run.figures
    if target == "legend title":
        bold = any((a.get("legend") or {}).get("title_bold") for a in axes) or \
            any((g or {}).get("title_bold") for f in figs for g in f.get("legends") or [])
    elif target == "title":
        bold = any("title" in (a.get("bold") or []) for a in axes) or \
            any(f.get("suptitle_bold") for f in figs)
    else:
        bold = any({"xlabel", "ylabel"} & set(a.get("bold") or []) for a in axes)
    verified = f"the {target} is bold"
    if bold:
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.PLOT_MISSING, f"the request asks for a bold {target} but it is drawn in normal "
        "weight; pass fontweight='bold' (for a legend title: "
        "title_fontproperties={'weight': 'bold'})")])


# --------------------------------------------------------------------------- log scale

_LOG = re.compile(r"\blog[- ]?log\b|\blog(?:arithmic)?[- ]scale|\blogarithmic\b|"
                  r"\blog\s+(?:[xy][- ]?)?axis\b|\bsemi-?log", re.I)


def log_scale(cell: Cell) -> Verdict | None:
    """"On a log scale" / "log-log": the axes use a logarithmic scale (both for log-log)."""
    if not _applies(cell):
        return None
    asked = [m.group(0).lower() for c in _clauses(cell.request) for m in _LOG.finditer(c)]
    if not asked:
        return None
    both = any(re.match(r"log[- ]?log", a) for a in asked)

    def logged(scale: Any) -> bool:
        return str(scale) in ("log", "symlog", "logit")

    axes = _axes(cell)
    ok = any(logged(a.get("xscale")) and logged(a.get("yscale")) for a in axes) if both else \
        any(logged(a.get("xscale")) or logged(a.get("yscale")) for a in axes)
    verified = "log-log axes" if both else "a log scale"
    if ok:
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.PLOT_MISSING, "the request asks for " + ("log-log axes" if both else
                                                      "a logarithmic scale")
        + " but the axes are linear; use plt.xscale('log') / plt.yscale('log') (or "
        "plt.loglog)")])


#: run after the sandbox, on what the check child reported about the figures
FIGURE_RULES: tuple[Rule, ...] = (shows_quoted_texts, subplot_layout, has_legend,
                                  bold_where_asked, log_scale)
