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
                 ("tick labels", re.compile(r"\btick\s*labels?\b", re.I)),
                 ("axis label", re.compile(r"\b(?:[xy][- ]?(?:axis\s+)?label|axis\s+labels?)\b",
                                           re.I)),
                 ("labels", re.compile(r"\b(?:labels?|annotations?|texts?)\b", re.I)))


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
    elif target == "tick labels":
        bold = any("ticklabels" in (a.get("bold") or []) for a in axes)
    elif target == "axis label":
        bold = any({"xlabel", "ylabel"} & set(a.get("bold") or []) for a in axes)
    else:  # pie labels, annotations, any labels: some text of the chart is bold
        bold = any(a.get("bold") for a in axes)
    verified = f"the {target} {'are' if target.endswith('s') else 'is'} bold"
    if bold:
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.PLOT_MISSING, f"the request asks for bold {target} but the chart draws them in "
        "normal weight; pass fontweight='bold' (pie labels: textprops={'weight': 'bold'}; "
        "a legend title: "
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


# --------------------------------------------------------------------------- legend layout

_NEGATE = r"\b(?:no|remove[sd]?|hide|hidden|without|not|don't|never|turn\s+off|get\s+rid\s+of)\b"
_LEGEND_COLUMNS = re.compile(rf"\b{_N}[- ]columns?\s+legend\b|\blegends?\b(?:\s+[\w-]+){{0,4}}?"
                             rf"\s+(?:in|with|of|into|having)\s+{_N}\s+columns?\b", re.I)
_LEGEND_FRAME = re.compile(rf"{_NEGATE}(?:\s+[\w-]+){{0,5}}?\s+(?:frame|border|box|edge)s?\b"
                           rf"(?:\s+[\w-]+){{0,3}}?\s+legends?\b|\blegends?\b(?:\s+[\w-]+){{0,3}}?"
                           rf"\s+(?:without|with\s+no|no)\s+(?:\w+\s+)?(?:frame|border|box)\b|"
                           rf"\bframeless\s+legend\b", re.I)
_HIDE_LEGEND = re.compile(rf"{_NEGATE}(?:\s+(?:the|a|any|its|this))?\s+legends?\b(?!\s+"
                          rf"(?:frame|border|box|title|edge))", re.I)


def _legends(cell: Cell) -> list[dict[str, Any]]:
    return [a["legend"] for a in _axes(cell) if a.get("legend")] + \
        [g for f in cell.run.figures for g in f.get("legends") or [] if g]


def legend_layout(cell: Cell) -> Verdict | None:
    """"A two columns legend" / "remove the legend's frame" / "hide the legend": the legend
    the chart draws has that many columns, has no frame, or is not shown at all (each one
    the request asks for)."""
    if not _applies(cell):
        return None
    legends = [g for g in _legends(cell) if g.get("visible", True)]
    found = "the chart has no legend" if not legends else ""
    verified: list[str] = []
    issues: list[Issue] = []
    for clause in _clauses(cell.request):
        m = _LEGEND_COLUMNS.search(clause)
        if m:
            n = _number(next(g for g in m.groups() if g))
            verified.append(f"a legend in {n} columns")
            if not any(g.get("columns") == n for g in legends):
                issues.append(Issue(
                    Kind.PLOT_MISSING, f"the request asks for a legend in {n} columns but "
                    + (found or f"its legend has {legends[0].get('columns', 1)}")
                    + f"; use plt.legend(ncol={n})"))
        elif _LEGEND_FRAME.search(clause):
            verified.append("a legend without a frame")
            if not legends or any(g.get("frame", True) for g in legends):
                issues.append(Issue(
                    Kind.PLOT_MISSING, "the request asks for a legend without its frame but "
                    + (found or "the legend's frame is drawn")
                    + "; use plt.legend(frameon=False)"))
        elif _HIDE_LEGEND.search(clause):
            verified.append("no legend")
            if legends:
                issues.append(Issue(
                    Kind.PLOT_MISSING, "the request asks for no legend but the chart shows "
                    "one; remove it (ax.get_legend().remove(), or legend=False in "
                    "pandas/seaborn)"))
    return Verdict("; ".join(verified), issues) if verified else None


# --------------------------------------------------------------------------- ticks and grid

_AXIS = re.compile(r"\b([xy])[- ]?ax[ie]s\b|\b([xy])ticks?\b|\b([xy])tick\s*labels?\b", re.I)
_MINOR_TICKS = re.compile(r"\bminor\s+ticks?\b", re.I)
_GRID_WORDS = re.compile(r"\bgrid(?:\s*lines?)?\b", re.I)
_NOT_A_GRID = re.compile(r"subplot|gridspec|layout|\d\s*(?:x|by|×)\s*\d|grid\s+of", re.I)


def _named_axes(clause: str) -> set[str]:
    return {next(g for g in m.groups() if g).lower() for m in _AXIS.finditer(clause)}


def minor_ticks(cell: Cell) -> Verdict | None:
    """"Turn on minor ticks (on the y axis only)": the axes show minor ticks where asked,
    and with "only", not on the other axis."""
    if not _applies(cell):
        return None
    for clause in _clauses(cell.request):
        if not _MINOR_TICKS.search(clause) or re.search(
                rf"{_NEGATE}(?:\s+[\w-]+){{0,3}}?\s+minor\s+ticks?", clause, re.I):
            continue
        named = _named_axes(clause)
        only = len(named) == 1 and re.search(r"\bonly\b", clause, re.I)
        axes = _axes(cell)

        def has(a: dict, axis: str) -> bool:
            return bool((a.get(f"{axis}axis") or {}).get("minor"))

        if named:
            ok = any(all(has(a, x) for x in named) for a in axes)
            if only:
                other = ({"x", "y"} - named).pop()
                ok = ok and not any(has(a, other) for a in axes)
            where = f"on the {' and '.join(sorted(named))} axis" + (" only" if only else "")
        else:
            ok = any(has(a, "x") or has(a, "y") for a in axes)
            where = ""
        verified = f"minor ticks {where}".strip()
        if ok:
            return Verdict(verified)
        fix = ("plt.minorticks_on(), then switch them off on the other axis "
               "(ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator()) or the same on "
               "yaxis)") if only else "plt.minorticks_on()"
        return Verdict(verified, [Issue(
            Kind.PLOT_MISSING, f"the request asks for minor ticks {where}".rstrip() + " but the "
            f"axes do not show them so; use {fix}")])
    return None


def grid_lines(cell: Cell) -> Verdict | None:
    """"Show grid lines" / "show minor grid lines" / "do not show major grid lines": the
    axes draw (or do not draw) the grid lines asked for."""
    if not _applies(cell):
        return None
    wants: list[tuple[str, bool]] = []  # ("major" | "minor" | "any", shown)
    for clause in _clauses(cell.request):
        if not _GRID_WORDS.search(clause) or _NOT_A_GRID.search(clause):
            continue
        negated = re.search(rf"{_NEGATE}(?:\s+[\w-]+){{0,4}}?\s+grid", clause, re.I) is not None
        kind = "minor" if re.search(r"\bminor\s+grid", clause, re.I) else \
            "major" if re.search(r"\bmajor\s+grid", clause, re.I) else "any"
        wants.append((kind, not negated))
    if not wants:
        return None
    axes = _axes(cell)

    def shown(kind: str) -> bool:
        keys = ("grid", "minor_grid") if kind == "any" else \
            ("grid",) if kind == "major" else ("minor_grid",)
        return any((a.get(f"{x}axis") or {}).get(k) for a in axes for x in "xy" for k in keys)

    wrong = [(k, want) for k, want in wants if shown(k) != want]
    verified = "; ".join(("" if want else "no ") + ("" if k == "any" else k + " ")
                         + "grid lines" for k, want in wants)
    if not wrong:
        return Verdict(verified)
    k, want = wrong[0]
    name = ("" if k == "any" else k + " ") + "grid lines"
    return Verdict(verified, [Issue(
        Kind.PLOT_MISSING, f"the request asks for {'' if want else 'no '}{name} but the axes "
        + ("do not draw them" if want else "draw them") + "; use "
        + (f"plt.grid(True, which='{'both' if k == 'any' else k}')" if want else
           f"plt.grid(False, which='{'both' if k == 'any' else k}')"))])


_SIDES = {"bottom": ("x", 0), "top": ("x", 1), "left": ("y", 0), "right": ("y", 1)}
_TICK_SIDE = re.compile(r"\b([xy])[- ]?axis\s+(tick\s*labels|ticklabels|ticks)\b(.*?)"
                        r"(?=\b(?:and|but)\s+(?:the\s+)?(?:[xy][- ]?axis|axis|labels?)\b|$)",
                        re.I)


def _drawn_on(a: dict[str, Any], axis: str, key: str, wanted: set[int], only: bool) -> bool:
    drawn = (a.get(f"{axis}axis") or {}).get(key) or [False, False]
    return all(drawn[i] for i in wanted) and \
        (not only or not any(drawn[i] for i in {0, 1} - wanted))


def tick_sides(cell: Cell) -> Verdict | None:
    """"Move the y axis ticks to the right" / "show x axis tick labels on both top and bottom":
    the ticks or tick labels are drawn on the sides asked (only there, for "move")."""
    if not _applies(cell):
        return None
    for clause in _clauses(cell.request):
        for m in _TICK_SIDE.finditer(clause):
            axis, what, rest = m.group(1).lower(), m.group(2).lower(), m.group(3).lower()
            sides = [w for w in re.findall(r"\b(top|bottom|left|right)\b", rest)
                     if _SIDES[w][0] == axis]
            if not sides:
                continue
            moved = re.search(r"\bmove[sd]?\b|\bonly\b", clause, re.I) is not None
            key = "labels" if "label" in what else "ticks"
            wanted = {_SIDES[w][1] for w in sides}
            names = " and ".join(sorted(set(sides)))
            label = "tick labels" if key == "labels" else "ticks"
            verified = f"{axis} axis {label} on the {names}" + (" only" if moved else "")
            if any(_drawn_on(a, axis, key, wanted, moved) for a in _axes(cell)):
                return Verdict(verified)
            prefix = "label" if key == "labels" else ""
            fix = f"ax.tick_params(axis='{axis}', " + ", ".join(
                f"{prefix}{side}={side in sides}" for side, (x, _) in _SIDES.items()
                if x == axis and (side in sides or moved)) + ")"
            return Verdict(verified, [Issue(
                Kind.PLOT_MISSING, f"the request asks for the {axis} axis {label} on the "
                f"{names} but the axes draw them elsewhere; use {fix}")])
    return None


# --------------------------------------------------------------------------- tick labels

_ROTATE = re.compile(r"\brotat\w*\b(?:\s+(?:the|all))?\s+(?:([xy])[- ]?(?:axis\s+)?(?:tick\s*)?"
                     r"labels?|([xy])ticks?(?:\s*labels?)?|(?:tick\s*)?labels?)\b(?:[^.;]*?)"
                     r"(-?\d+(?:\.\d+)?)\s*(?:degrees?|deg\b|°)", re.I)


def tick_label_rotation(cell: Cell) -> Verdict | None:
    """"Rotate the x tick labels 45 degrees" / "rotate the yticklabels to -60 degree": that
    axis's tick labels are drawn at that angle (x when no axis is named)."""
    if not _applies(cell):
        return None
    for clause in _clauses(cell.request):
        m = _ROTATE.search(clause)
        if not m:
            continue
        axis = (m.group(1) or m.group(2) or "x").lower()
        angle = float(m.group(3))
        verified = f"{axis} tick labels rotated {angle:g}°"
        got = [a.get(f"{axis}tick_rotation") for a in _axes(cell)]
        if any(r is not None and abs((r - angle + 180) % 360 - 180) < 0.5 for r in got):
            return Verdict(verified)
        drawn = next((r for r in got if r is not None), None)
        return Verdict(verified, [Issue(
            Kind.PLOT_MISSING, f"the request asks for the {axis} tick labels at {angle:g} "
            "degrees but they are drawn " + (f"at {drawn:g}" if drawn is not None else
                                             "without labels")
            + f"; use plt.{axis}ticks(rotation={angle:g})")])
    return None


_TICK_PART = re.compile(r"\b(?:([xy])[- ]?(?:ax[ie]s\s+)?|ax[ie]s\s+)?"
                        r"(tick\s*labels?|ticklabels|ticks)\b", re.I)
_HIDE = re.compile(r"\b(?:hide|remove|no|without|turn\s+off|don'?t\s+show|do\s+not\s+show|"
                   r"get\s+rid\s+of|delete)\b", re.I)
_SHOW = re.compile(r"\b(?:show|display|keep|with)\b", re.I)


def _tick_wishes(request: str) -> list[tuple[str, str, bool]]:
    """(axis "x"/"y"/"both", "ticks"/"labels", shown) for each plain ask to show or hide ticks
    or tick labels; asks about sides (tick_sides), minor ticks or rotation are left out."""
    out = []
    for clause in _clauses(request):
        if re.search(r"\b(?:top|bottom|left|right|minor|rotat\w*|font|size|colou?r|red|blue)\b",
                     clause, re.I):
            continue
        for part in re.split(r"\b(?:but|and|while)\b|,", clause):
            for m in _TICK_PART.finditer(part):
                before = part[:m.start()]
                if _HIDE.search(before):
                    shown = False
                elif _SHOW.search(before):
                    shown = True
                else:
                    continue
                axis = (m.group(1) or "both").lower()
                what = "labels" if "label" in m.group(2).lower() else "ticks"
                out.append((axis, what, shown))
    return out


def tick_visibility(cell: Cell) -> Verdict | None:
    """"Hide the x axis ticks", "remove the y tick labels", "show axis tick labels": every
    axes draws (or does not draw) the tick marks or tick labels asked about."""
    if not _applies(cell):
        return None
    wishes = _tick_wishes(cell.request)
    if not wishes:
        return None
    axes = _axes(cell)

    def drawn(a: dict[str, Any], axis: str, what: str) -> bool:
        if what == "ticks":
            return any((a.get(f"{axis}axis") or {}).get("ticks") or [])
        return any((a.get(f"{axis}axis") or {}).get("labels") or []) and \
            any(t.strip() for t in a.get(f"{axis}ticklabels") or [])

    verified, wrong = [], []
    for axis, what, shown in wishes:
        name = ("" if axis == "both" else f"{axis} axis ") + \
            ("tick labels" if what == "labels" else "ticks")
        verified.append(("" if shown else "no ") + name)
        for x in ("x", "y") if axis == "both" else (axis,):
            if any(drawn(a, x, what) != shown for a in axes):
                wrong.append((name, shown))
                break
    if not wrong:
        return Verdict("; ".join(verified))
    name, shown = wrong[0]
    fix = "plt.tick_params(axis=..., length=0) hides the marks and keeps the labels" \
        if not shown and "labels" not in name else \
        "plt.tick_params(axis=..., labelbottom=False/labelleft=False) hides labels" \
        if not shown else "keep the ticks (do not call set_xticks([]) / set_yticks([]))"
    return Verdict("; ".join(verified), [Issue(
        Kind.PLOT_MISSING, f"the request asks for {'' if shown else 'no '}{name} but the "
        f"axes {'do not draw them' if shown else 'draw them'}; {fix}")])


# --------------------------------------------------------------------------- lines and markers

_STYLES = {"dashed": ("--", "-."), "dotted": (":", "-."), "dash-dot": ("-.",),
           "dashdot": ("-.",), "dash dot": ("-.",)}
_STYLE = re.compile(r"\b(dash[- ]?dot|dashed|dotted)\b(?:\s+[\w-]+){0,2}?\s+(?:lines?|style)\b|"
                    r"\b(?:lines?|linestyle|line\s+style)\b(?:\s+[\w-]+){0,3}?\s+"
                    r"(dash[- ]?dot|dashed|dotted)\b", re.I)
_MARKERS = {"thin diamond": ("d",), "diamond": ("D", "d"), "star": ("*",), "circle": ("o",),
            "square": ("s",), "triangle": ("^", "v", "<", ">", "1", "2", "3", "4"),
            "plus": ("+", "P"), "pentagon": ("p",), "hexagon": ("h", "H"),
            "cross": ("x", "X")}
_MARKER = re.compile(r"\b(thin\s+diamond|diamond|star|circle|square|triangle|plus|pentagon|"
                     r"hexagon|cross)(?:[- ]shaped)?\s+markers?\b|\bmarkers?\s+(?:as\s+|of\s+|"
                     r"to\s+be\s+)?(?:an?\s+)?(thin\s+diamond|diamond|star|circle|square|"
                     r"triangle|plus|pentagon|hexagon|cross)s?\b", re.I)


def line_style_and_marker(cell: Cell) -> Verdict | None:
    """"A dashed line" / "with a thin diamond marker": some line of the chart is drawn so.
    Markers are read from lines only: a chart with scatter collections is not judged."""
    if not _applies(cell):
        return None
    axes = _axes(cell)
    verified, issues = [], []
    for clause in _clauses(cell.request):
        if _GRID_WORDS.search(clause) or re.search(r"\bgrid\b|\bspines?\b|\bframe", clause,
                                                    re.I):
            continue
        m = _STYLE.search(clause)
        if m and not re.search(rf"{_NEGATE}\s+(?:\w+\s+)?(?:dash|dott)", clause, re.I):
            word = re.sub(r"[- ]", "-", (m.group(1) or m.group(2)).lower())
            word = "dash-dot" if word.startswith("dash-") else word
            want = _STYLES[word]
            verified.append(f"a {word} line")
            if not any(ls in want for a in axes for ls in a.get("line_styles") or []):
                issues.append(Issue(
                    Kind.PLOT_MISSING, f"the request asks for a {word} line but no line is "
                    f"drawn {word}; pass linestyle='{want[0]}'"))
        m = _MARKER.search(clause)
        if m and not any(a.get("collections") for a in axes):
            word = " ".join((m.group(1) or m.group(2)).lower().split())
            want = _MARKERS[word]
            verified.append(f"{word} markers")
            if not any(mk in want for a in axes for mk in a.get("markers") or []):
                issues.append(Issue(
                    Kind.PLOT_MISSING, f"the request asks for {word} markers but no line "
                    f"draws them; pass marker='{want[0]}'"))
    return Verdict("; ".join(verified), issues) if verified else None


_REF_LINE = re.compile(r"\b(vertical|horizontal)\s+(?:[\w-]+\s+){0,2}?lines?\b|"
                       r"\b(?:ax)?([vh])lines?\b|\bax([vh])line\b", re.I)


def reference_lines(cell: Cell) -> Verdict | None:
    """"Draw vertical lines at [0.22, 0.33, 2.2]" / "a horizontal line at the mean": the
    axes draw that many vertical (horizontal) segments (one when no values are listed)."""
    if not _applies(cell):
        return None
    for clause in _clauses(cell.request):
        m = _REF_LINE.search(clause)
        if not m or re.search(r"\bhatch", clause, re.I) or \
                re.search(rf"{_NEGATE}(?:\s+\w+)?\s+(?:vertical|horizontal)", clause, re.I):
            continue
        word = (m.group(1) or "").lower() or \
            ("vertical" if (m.group(2) or m.group(3)).lower() == "v" else "horizontal")
        listed = re.findall(r"-?\d+(?:\.\d+)?", clause[m.end():])
        want = max(1, len(listed)) if re.search(r"\blines\b", m.group(0), re.I) else 1
        got = sum(a.get(word, 0) for a in _axes(cell))
        verified = f"{want} {word} line" + ("s" if want > 1 else "")
        if got >= want:
            return Verdict(verified)
        fn = "axvline" if word == "vertical" else "axhline"
        return Verdict(verified, [Issue(
            Kind.PLOT_MISSING, f"the request asks for {verified} but the chart draws {got}; use "
            f"plt.{fn}(...) for each (or plt.{'vlines' if fn == 'axvline' else 'hlines'})")])
    return None


_ANNOTATE = re.compile(r"\bannotat\w*\b|\blabel\s+(?:each|every|all)\s+(?:the\s+)?(?:data\s+)?"
                       r"(?:points?|bars?|dots?|markers?)\b|\b(?:values?|numbers?|counts?)\s+"
                       r"(?:on|above|over)\s+(?:each|every|the)\s+(?:bars?|points?)\b", re.I)


def annotated(cell: Cell) -> Verdict | None:
    """"Annotate each data point with its value": the axes carry text annotations (at least
    two for "each")."""
    if not _applies(cell):
        return None
    for clause in _clauses(cell.request):
        if not _ANNOTATE.search(clause) or re.search(rf"{_NEGATE}\s+annotat", clause, re.I):
            continue
        want = 2 if re.search(r"\b(?:each|every|all)\b", clause, re.I) else 1
        got = sum(len(a.get("texts") or []) for a in _axes(cell))
        verified = "annotated points" if want > 1 else "an annotation"
        if got >= want:
            return Verdict(verified)
        return Verdict(verified, [Issue(
            Kind.PLOT_MISSING, f"the request asks for annotations but the chart has {got} "
            "text(s) on its axes; use ax.annotate(text, (x, y)) for each point (or "
            "ax.bar_label for bars)")])
    return None


_FIG_LEGEND = re.compile(r"\bfig(?:ure)?[- ]?(?:level\s+)?legend\b|\bfiglegend\b|"
                         r"\blegend\s+(?:for|of)\s+the\s+(?:whole\s+)?figure\b", re.I)
_ONE_LEGEND = re.compile(r"\b(?:single|one|same|shared|common|combined)\s+legend\b", re.I)


def one_legend(cell: Cell) -> Verdict | None:
    """"Put them into a single legend" / "a figure-level legend (figlegend)": one legend
    holds every labeled series of the figure (and sits on the figure, when asked so)."""
    if not _applies(cell):
        return None
    clauses = list(_clauses(cell.request))
    figure = any(_FIG_LEGEND.search(c) for c in clauses)
    single = any(_ONE_LEGEND.search(c) for c in clauses)
    if not figure and not single:
        return None
    legends = [g for g in _legends(cell) if g.get("visible", True)]
    labels = {t for a in _axes(cell) for t in a.get("series_labels") or []}
    fig_legends = [g for f in cell.run.figures for g in f.get("legends") or [] if g]
    verified = "one figure-level legend" if figure else "one legend for every series"
    if figure and not fig_legends:
        why = "the figure has no figure-level legend; use fig.legend() (plt.figlegend())"
    elif len(legends) != 1:
        why = f"the chart has {len(legends)} legends; draw one legend holding every series " \
              "(collect the handles of each axes and call legend once)"
    elif len(legends[0].get("texts") or []) < len(labels):
        why = f"its legend lists {len(legends[0].get('texts') or [])} of the " \
              f"{len(labels)} labeled series; pass every line's handle to one legend"
    else:
        return Verdict(verified)
    return Verdict(verified, [Issue(Kind.PLOT_MISSING, "the request asks for one legend "
                                    f"{'on the figure ' if figure else ''}but {why}")])


_FRAMES = re.compile(rf"{_NEGATE}(?:\s+[\w-]+){{0,3}}?\s+(?:frames?|spines?|borders?)\b|"
                     r"\b(?:frameless|without\s+(?:the\s+)?(?:frames?|spines?|borders?))\b",
                     re.I)


def no_frames(cell: Cell) -> Verdict | None:
    """"Remove the frames from the subplots" / "hide the spines": no axes draws a spine (a
    legend's frame is legend_layout's)."""
    if not _applies(cell):
        return None
    if not any(_FRAMES.search(c) and not re.search(r"\blegend", c, re.I)
               for c in _clauses(cell.request)):
        return None
    framed = sum(1 for a in _axes(cell) if a.get("spines", 0))
    verified = "no axes frame"
    if not framed:
        return Verdict(verified)
    return Verdict(verified, [Issue(
        Kind.PLOT_MISSING, f"the request asks for no frames but {framed} axes still draw "
        "their spines; for every axes: ax.spines[:].set_visible(False) (or "
        "ax.set_frame_on(False))")])


# --------------------------------------------------------------------------- colors

_COLOR_WORDS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
                "white", "gray", "grey", "cyan", "magenta")
_COLOR = re.compile(r"\b(" + "|".join(_COLOR_WORDS) + r")\b", re.I)
#: (what the request calls it, its words, the check child's color keys), most specific first
_PARTS = (
    ("x axis line", r"\bline\s+of\s+the\s+x[- ]?axis\b|\bx[- ]?axis\s+line\b", ("xspine",)),
    ("y axis line", r"\bline\s+of\s+the\s+y[- ]?axis\b|\by[- ]?axis\s+line\b", ("yspine",)),
    ("spines", r"\bspines?\b|\baxis\s+lines\b", ("spines",)),
    ("x tick labels", r"\bx[- ]?(?:axis\s+)?tick\s*labels?\b|\bxticklabels\b", ("xticklabels",)),
    ("y tick labels", r"\by[- ]?(?:axis\s+)?tick\s*labels?\b|\byticklabels\b", ("yticklabels",)),
    ("tick labels", r"\btick\s*labels?\b", ("ticklabels",)),
    ("x axis ticks", r"\bx[- ]?(?:axis\s+)?ticks\b|\bxticks\b", ("xticks",)),
    ("y axis ticks", r"\by[- ]?(?:axis\s+)?ticks\b|\byticks\b", ("yticks",)),
    ("ticks", r"\bticks\b", ("ticks",)),
    ("x axis label", r"\bx[- ]?(?:axis\s+)?label\b|\bxlabel\b", ("xlabel",)),
    ("y axis label", r"\by[- ]?(?:axis\s+)?label\b|\bylabel\b", ("ylabel",)),
    ("axis labels", r"\baxis\s+labels?\b", ("labels",)),
    ("title", r"\btitle\b", ("title",)),
    ("bars", r"\bbars?\b", ("bars",)),
    ("points", r"\b(?:points?|dots?|markers?|scatter)\b", ("points", "markers")),
    ("line", r"\b(?:lines?|curves?)\b", ("lines",)),
)
#: clauses about colors these parts do not report, or about many colors at once
_NOT_ONE_COLOR = re.compile(r"\b(?:edge|face|background|cmap|colou?r\s*map|colou?rbar|hue|"
                            r"gradient|legend|hatch|grid|each|different|palette|by)\b", re.I)


def color_family(color: str) -> str:
    """A color's family ("red" for red, tab:red and crimson alike), from its hue, saturation
    and value: a request's color word and a drawn color agree when their families do."""
    import colorsys

    from matplotlib.colors import to_rgb

    h, sat, v = colorsys.rgb_to_hsv(*to_rgb(color))
    if v < 0.2:
        return "black"
    if sat < 0.15:
        return "white" if v > 0.9 else "gray"
    hue = h * 360
    for limit, name in ((15, "red"), (40, "orange"), (70, "yellow"), (170, "green"),
                        (200, "cyan"), (260, "blue"), (310, "purple"), (345, "magenta")):
        if hue < limit:
            return name
    return "red"


def _color_asks(request: str) -> list[tuple[str, tuple[str, ...], str]]:
    """(part, color keys, color word) for each clause that gives one part or several one
    plain color ("make the x axis ticks and the axis label red")."""
    out = []
    for clause in _clauses(request):
        colors = {c.lower().replace("grey", "gray") for c in _COLOR.findall(clause)}
        if len(colors) != 1 or _NOT_ONE_COLOR.search(clause) or \
                re.search(rf"{_NEGATE}", clause, re.I):
            continue
        color, rest = colors.pop(), clause
        for name, words, keys in _PARTS:
            if re.search(words, rest, re.I):
                out.append((name, keys, color))
                rest = re.sub(words, " ", rest, flags=re.I)
    return out


def colors_asked(cell: Cell) -> Verdict | None:
    """"Make the bars red" / "a green line" / "make the x axis ticks and label red": that part
    of the chart is drawn in that color's family (tab:red counts as red)."""
    if not _applies(cell):
        return None
    asks = _color_asks(cell.request)
    if not asks:
        return None
    verified, issues = [], []
    for name, keys, word in asks:
        want = color_family(word)
        drawn = [c for a in _axes(cell) for k in keys for c in (a.get("colors") or {}).get(k, [])]
        verified.append(f"{word} {name}")
        if any(color_family(c) == want for c in drawn):
            continue
        issues.append(Issue(
            Kind.PLOT_MISSING, f"the request asks for {word} {name} but "
            + (f"they are drawn {', '.join(sorted({color_family(c) for c in drawn}))}"
               if drawn else f"the chart has no {name}")
            + f"; pass color='{word}' where that part is drawn"))
    return Verdict("; ".join(verified), issues)


# --------------------------------------------------------------------------- axis placement

_LABEL_SIDE = re.compile(r"\b([xy])[- ]?axis\s+label\b(?:\s+[\w-]+){0,3}?\s+(?:on|to|at)\s+the\s+"
                         r"(top|bottom|left|right)\b", re.I)
_MOVE_AXIS = re.compile(r"\bmove\s+the\s+([xy])[- ]?axis\b(?:\s+[\w-]+){0,4}?\s+to\s+the\s+"
                        r"(top|bottom|left|right)\b", re.I)


def axis_placement(cell: Cell) -> Verdict | None:
    """"Show the y axis label on the right" / "move the x-axis to the top": the axis label, or
    the axis's tick labels, sit on that side."""
    if not _applies(cell):
        return None
    for clause in _clauses(cell.request):
        for pattern, what in ((_LABEL_SIDE, "label"), (_MOVE_AXIS, "axis")):
            m = pattern.search(clause)
            if not m or _SIDES[m.group(2).lower()][0] != m.group(1).lower():
                continue
            axis, side = m.group(1).lower(), m.group(2).lower()
            index = _SIDES[side][1]
            if what == "label":
                ok = any((a.get(f"{axis}axis") or {}).get("label_side") == side
                         for a in _axes(cell))
                fix = f"ax.{axis}axis.set_label_position('{side}')"
            else:
                ok = any(((a.get(f"{axis}axis") or {}).get("labels") or [False, False])[index]
                         for a in _axes(cell))
                fix = f"ax.{axis}axis.tick_{side}()"
            verified = f"the {axis} axis {what if what == 'label' else ''} on the {side}"
            verified = " ".join(verified.split())
            if ok:
                return Verdict(verified)
            return Verdict(verified, [Issue(
                Kind.PLOT_MISSING, f"the request asks for {verified} but it is drawn on "
                f"the other side; use {fix}")])
    return None


_WRAP_TITLE = re.compile(r"\btitle\b[^.]*\b(?:multiple|several|two|2|three)\s+lines\b|"
                         r"\b(?:wrap|split)\w*\b[^.]*\btitle\b|\btitle\b[^.]*\bwrap\w*", re.I)
_NO_SCIENTIFIC = re.compile(rf"{_NEGATE}(?:\s+[\w-]+){{0,3}}?\s+scientific\s+notation\b|"
                            r"\bwithout\s+scientific\s+notation\b|\bplain\s+numbers\b", re.I)
_SCIENTIFIC = re.compile(r"\d[eE][+-]?\d|\^\{?-?\d|\\times\s*10|×\s*10")


def text_forms(cell: Cell) -> Verdict | None:
    """"Fit the long title into multiple lines": the title has line breaks. "Do not use
    scientific notation": no tick label or axis offset is written as 1e6, 10^3 or ×10."""
    if not _applies(cell):
        return None
    clauses = list(_clauses(cell.request))
    verified, issues = [], []
    if any(_WRAP_TITLE.search(c) for c in clauses):
        verified.append("the title on several lines")
        titles = [a.get("title") or "" for a in _axes(cell)] + \
            [f.get("suptitle") or "" for f in cell.run.figures]
        if not any("\n" in t for t in titles):
            issues.append(Issue(Kind.PLOT_MISSING, "the request asks for the title on several "
                                "lines but it is one line; wrap it (textwrap.fill(title, 60)) "
                                "before plt.title"))
    if any(_NO_SCIENTIFIC.search(c) for c in clauses):
        verified.append("no scientific notation")
        shown = [t for a in _axes(cell) for t in (a.get("xticklabels") or []) +
                 (a.get("yticklabels") or [])] + \
            [(a.get(f"{x}axis") or {}).get("offset") or "" for a in _axes(cell) for x in "xy"]
        if any(_SCIENTIFIC.search(t) for t in shown):
            issues.append(Issue(Kind.PLOT_MISSING, "the request asks for plain numbers but "
                                "the axes write some in scientific notation; use "
                                "ax.ticklabel_format(style='plain') or, on a log axis, "
                                "matplotlib.ticker.ScalarFormatter()"))
    return Verdict("; ".join(verified), issues) if verified else None


#: "plot y over x" puts y on the y axis; "x vs y1" is read both ways, so it is not a rule's
_OVER = re.compile(r"\bplot\s+(?:the\s+)?([A-Za-z_]\w*)\s+over\s+(?:the\s+)?([A-Za-z_]\w*)\b",
                   re.I)


def _values(value: Any) -> list[float] | None:
    """A live one-dimensional array, list or Series as floats (at most 500), else None."""
    try:
        import numpy as np

        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    return arr.tolist() if arr.ndim == 1 and 1 < arr.size <= 500 else None


def _same(line: list[float], values: list[float]) -> bool:
    return len(line) == len(values) and all(abs(a - b) <= 1e-9 * max(1.0, abs(b))
                                            for a, b in zip(line, values, strict=True))


def plotted_over(cell: Cell) -> Verdict | None:
    """"Plot z over a": ``z`` is on the y axis. Fails only on evidence of the swap: no line
    draws the live ``z`` as its y values and one draws ``a`` (``plt.plot(z, a)``). Said only
    when both names are live one-dimensional data of different values."""
    if not _applies(cell):
        return None
    for clause in _clauses(cell.request):
        m = _OVER.search(clause)
        if not m:
            continue
        y_name, x_name = m.group(1), m.group(2)
        ys, xs = (_values(cell.namespace.get(n)) if n in cell.namespace else None
                  for n in (y_name, x_name))
        if ys is None or xs is None or _same(ys, xs):
            return None
        lines = [line for a in _axes(cell) for line in a.get("line_ys") or []]
        verified = f"{y_name} on the y axis"
        if any(_same(line, ys) for line in lines):
            return Verdict(verified)
        if any(_same(line, xs) for line in lines):
            return Verdict(verified, [Issue(
                Kind.PLOT_MISSING, f"the request asks for {y_name} over {x_name} ({y_name} on "
                f"the y axis), but the chart draws {x_name} on the y axis; use "
                f"plt.plot({x_name}, {y_name})")])
        return None
    return None


#: run after the sandbox, on what the check child reported about the figures
FIGURE_RULES: tuple[Rule, ...] = (shows_quoted_texts, subplot_layout, has_legend,
                                  bold_where_asked, log_scale, legend_layout, minor_ticks,
                                  grid_lines, tick_sides, tick_label_rotation, tick_visibility,
                                  line_style_and_marker, reference_lines, annotated,
                                  one_legend, no_frames, colors_asked, axis_placement,
                                  text_forms, plotted_over)
