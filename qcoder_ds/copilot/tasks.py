"""The five kinds of request: pandas, SQL, plot, explain, fix. Inferred, always overridable."""

from __future__ import annotations

import enum
import re

from qcoder_ds.copilot.context import KernelContext
from qcoder_ds.copilot.words import identifiers


class Task(str, enum.Enum):
    PANDAS = "pandas"
    SQL = "sql"
    PLOT = "plot"
    EXPLAIN = "explain"
    FIX = "fix"

    @property
    def writes_code(self) -> bool:
        return self is not Task.EXPLAIN


_PLOT = re.compile(r"\b(plot|plots|chart|graph|histogram|hist|bar ?chart|barplot|scatter|"
                   r"heat ?map|pie|boxplot|box plot|line ?chart|visuali[sz]e|draw|figure|axes|"
                   r"subplots?|legend|seaborn|matplotlib)\b", re.I)
_SQL = re.compile(r"\b(sql|query|select|join|tables?|database|db)\b", re.I)
_EXPLAIN = re.compile(r"^\s*(explain|what does|what is this|describe (this|the) code)\b", re.I)
_FIX = re.compile(r"^\s*(fix|repair|debug)\b|\b(why (does|did) .* (fail|error|break))", re.I)


def infer_task(request: str, ctx: KernelContext | None = None) -> Task:
    """Pick a task from the words of the request and what is in scope.

    SQL wins when the request says so, or when it names a table of a connection in scope and
    no DataFrame; plots when it asks for a chart; otherwise pandas.
    """
    if _EXPLAIN.search(request):
        return Task.EXPLAIN
    if _FIX.search(request):
        return Task.FIX
    if _PLOT.search(request):
        return Task.PLOT
    if ctx is not None and ctx.connections:
        words = {w.lower() for w in identifiers(request)}
        tables = {t.lower() for c in ctx.connections.values() for t in c.tables}
        frames = {n.lower() for n in ctx.dataframes}
        if _SQL.search(request) or (words & tables and not words & frames) or not frames:
            return Task.SQL
    return Task.PANDAS
