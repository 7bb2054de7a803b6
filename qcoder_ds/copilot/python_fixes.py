"""Fixes to a Python answer that need no model, as a list of rules run in order.

Each rule is ``(code, ctx) -> (code, said)``: the code with its slip fixed, and what was
done, in words. :func:`fix_python` runs :data:`RULES` and reports every fix one way, as an
:class:`Issue` of kind ``python-fixed`` (severity "warning"), as the SQL rules report theirs
(``sql-fixed``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qcoder_ds.copilot.extract import drop_context_echo
from qcoder_ds.copilot.validate import (
    Issue,
    Kind,
    drop_rebinding,
    fix_old_pandas,
    fix_series_logic,
)


@dataclass(frozen=True)
class PyContext:
    """What the Python rules read: the live namespace, and the data description the model
    was shown (so lines copied back from it can be recognized)."""

    namespace: Mapping[str, Any]
    context_text: str = ""


def copied_description(code: str, ctx: PyContext) -> tuple[str, list[str]]:
    """Lines that only copy the kernel's description of the data back (as code or as
    comments) are dropped."""
    code, echoed = drop_context_echo(code, ctx.context_text)
    return code, [f"removed {echoed} line(s) copied from the data description"] if echoed \
        else []


def recreated_data(code: str, ctx: PyContext) -> tuple[str, list[str]]:
    """Lines that re-create live data from literals or a file read are dropped."""
    code, dropped = drop_rebinding(code, ctx.namespace)
    return code, ["removed lines that re-created existing data: " + "; ".join(dropped)] \
        if dropped else []


def series_logic(code: str, ctx: PyContext) -> tuple[str, list[str]]:
    """``and`` / ``or`` between Series conditions become ``&`` / ``|``."""
    code, rewritten = fix_series_logic(code, ctx.namespace)
    return code, ["combined Series conditions with & and |: " + "; ".join(rewritten)] \
        if rewritten else []


def old_pandas(code: str, ctx: PyContext) -> tuple[str, list[str]]:
    """Calls the installed pandas no longer has are respelled (``applymap`` -> ``map``)."""
    code, modernized = fix_old_pandas(code)
    return code, ["rewrote pandas calls the installed pandas no longer has: "
                  + "; ".join(modernized)] if modernized else []


PyRule = Callable[[str, PyContext], tuple[str, list[str]]]
RULES: tuple[PyRule, ...] = (copied_description, recreated_data, series_logic, old_pandas)


def fix_python(code: str, ctx: PyContext) -> tuple[str, list[Issue]]:
    """``code`` after every rule, and one ``python-fixed`` warning per fix made."""
    fixes: list[Issue] = []
    for rule in RULES:
        code, said = rule(code, ctx)
        fixes += [Issue(Kind.PYTHON_FIXED, s, None, "warning") for s in said]
    return code, fixes
