"""Chat messages for each task, built from the request and the ranked live context.

The instructions are written for the kind of problem, never for a particular one: the small
model's two habits that break notebooks (re-creating or loading the data, inventing columns)
are named and forbidden, and the real names are put in front of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qcoder_ds.copilot.context import ConnectionInfo, CountTokens, KernelContext, approx_tokens
from qcoder_ds.copilot.tasks import Task

Message = dict[str, str]

_PY_RULES = (
    "Rules:\n"
    "- The variables described below already exist in the kernel. Use them directly.\n"
    "- Never create, load or redefine them: no pd.DataFrame(...) with made-up data, "
    "no read_csv, no sample data.\n"
    "- Use only the column names listed below, spelled exactly.\n"
    "- Import what you use (import pandas as pd, import numpy as np).\n"
    "- Answer with one ```python block and nothing else."
)

SYSTEM = {
    Task.PANDAS: (
        "You write one Jupyter notebook cell of Python (pandas/numpy) that does what the user "
        "asks with the data already in the kernel.\n" + _PY_RULES +
        "\n- If the request says to put the answer in a variable, assign it; otherwise end "
        "the cell with an expression that shows the answer."
    ),
    Task.PLOT: (
        "You write one Jupyter notebook cell of Python that draws the requested chart with "
        "matplotlib (import matplotlib.pyplot as plt) from the data already in the kernel.\n"
        + _PY_RULES +
        "\n- Label the axes and give the chart a title; do not save files."
    ),
    Task.FIX: (
        "You fix a Jupyter notebook cell that raised an error. Keep what the cell was meant to "
        "do; change only what is wrong.\n" + _PY_RULES
    ),
    Task.EXPLAIN: (
        "You explain Python/SQL code to a data-science learner: what each line does, with the "
        "real variable and column names, briefly. Do not rewrite the code."
    ),
}

_SQL_SYSTEM = (
    "You translate a question into one {dialect} SQL query for the database schema below.\n"
    "Rules:\n"
    "- Use only the tables and columns in the schema, spelled exactly.\n"
    "- Return only what the question asks for.\n"
    "- Answer with one ```sql block and nothing else."
)


@dataclass
class Prompt:
    """The messages sent to the model and what they were built from."""

    task: Task
    messages: list[Message]
    context_text: str
    connection: ConnectionInfo | None = None
    request: str = ""

    def render(self) -> str:
        """The prompt as text, for ``--show-prompt``."""
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self.messages)


def build_prompt(task: Task, request: str, ctx: KernelContext, *, budget: int = 1500,
                 count_tokens: CountTokens = approx_tokens,
                 connection: ConnectionInfo | None = None, code: str | None = None) -> Prompt:
    """Messages for ``task``; the context gets at most ``budget`` tokens."""
    if task is Task.SQL:
        if connection is None:
            raise ValueError("a SQL prompt needs the connection it runs on")
        from qcoder_ds.copilot.context import render_connection

        schema = render_connection(connection, full=True)
        while count_tokens(schema) > budget and connection.samples:
            connection.samples.clear()
            schema = render_connection(connection, full=True)
        if count_tokens(schema) > budget:
            schema = render_connection(connection, full=False)
        system = _SQL_SYSTEM.format(dialect=_dialect_label(connection.dialect))
        user = f"Schema:\n{schema}\n\nQuestion: {request}"
        return Prompt(task, [{"role": "system", "content": system},
                             {"role": "user", "content": user}], schema, connection, request)
    mentioned = set(re.findall(r"[A-Za-z_]\w*", request))
    wants_sql = any(n in mentioned for n in ctx.connections)
    kinds = None if wants_sql else ("dataframe", "series", "ndarray", "value")
    context = ctx.render(budget, count_tokens, include_error=task is Task.FIX, kinds=kinds)
    if task is Task.EXPLAIN:
        target = code if code is not None else (ctx.last_error_cell or "")
        user = f"Data in scope:\n{context}\n\nCode:\n```python\n{target}\n```\n\n{request}"
    elif task is Task.FIX:
        user = f"Data in scope and the error:\n{context}\n\nRequest: {request or 'fix the cell'}"
    else:
        data = context if context.strip() else "(no DataFrame, Series or array is defined yet)"
        user = f"Data in the kernel:\n{data}\n\nRequest: {request}"
    return Prompt(task, [{"role": "system", "content": SYSTEM[task]},
                         {"role": "user", "content": user}], context, request=request)


def _dialect_label(dialect: str) -> str:
    return {"sqlite": "SQLite", "duckdb": "DuckDB", "postgres": "PostgreSQL",
            "mysql": "MySQL", "tsql": "T-SQL"}.get(dialect, dialect)


def repair_messages(prompt: Prompt, problems: list[str]) -> list[Message]:
    """The original request again, now saying what went wrong with the last answer.

    The failed answer itself is left out on purpose: shown it (as a chat turn or quoted), the
    0.5B model copies it back token for token, even when sampling, because copying is the
    most likely continuation. Told only the error, it writes a new answer."""
    listing = "\n".join(f"- {p}" for p in problems)
    messages = [dict(m) for m in prompt.messages]
    messages[-1]["content"] += (
        f"\n\nAn earlier answer to this failed:\n{listing}\n"
        "Write a different answer that avoids this mistake.")
    return messages
