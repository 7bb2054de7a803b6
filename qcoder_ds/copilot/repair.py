"""Turning what went wrong into words for the model, and choosing among several candidates.

pandas-ai retries with the traceback; sketch retries once on SyntaxError. Here every failure
kind (syntax, unknown names/columns with the real ones, SQL not matching the schema, the
sandbox's error line) is phrased so a small model can act on it, and repairs are bounded.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qcoder_ds.copilot.checks import Verdict
from qcoder_ds.copilot.sandbox import RunResult
from qcoder_ds.copilot.validate import Issue


@dataclass
class Attempt:
    """One answer from the model and what the checks said about it."""

    answer: str
    code: str
    issues: list[Issue] = field(default_factory=list)
    run: RunResult | None = None
    sql: str | None = None  # the query, for SQL answers (``code`` is then the cell around it)
    verdicts: list[Verdict] = field(default_factory=list)  # the rules of checks.py that applied

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def passed(self) -> bool:
        return not self.errors and (self.run is None or self.run.ok)


def problems(attempt: Attempt) -> list[str]:
    """The lines the repair prompt lists: static errors first, then the run's error."""
    out = [str(i) for i in attempt.errors]
    run = attempt.run
    if run is not None and not run.ok:
        err = (run.error or "").strip()
        if run.timed_out:
            err += " Make it faster (avoid loops over rows)."
        if err:
            out.append(f"running it on a sample of the data failed: {err[-1500:]}")
            hint = signature_hint(err)
            if hint:
                out.append(hint)
    return out


_UNEXPECTED = re.compile(r"(\w+(?:\.\w+)?)\(\) got an unexpected keyword argument '(\w+)'")


def signature_hint(error: str) -> str | None:
    """For "Series.sort_values() got an unexpected keyword argument 'by'": the arguments it
    does take, read from the installed pandas/numpy, so the repair need not guess them (the
    small model writes keywords from other functions or older versions)."""
    m = _UNEXPECTED.search(error)
    if not m:
        return None
    func = _lookup(m.group(1))
    try:
        params = inspect.signature(func).parameters if func is not None else {}
    except (TypeError, ValueError):
        return None
    names = [n for n, p in params.items() if n != "self" and
             p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not names:
        return None
    return (f"{m.group(1)}() has no argument {m.group(2)!r}; its arguments are: "
            + ", ".join(names))


def _lookup(dotted: str) -> Any:
    """The pandas or numpy function or method that an error message names."""
    import numpy as np
    import pandas as pd
    from pandas.core.generic import NDFrame
    from pandas.core.groupby import DataFrameGroupBy, SeriesGroupBy

    owners: dict[str, Any] = {"DataFrame": pd.DataFrame, "Series": pd.Series,
                              "Index": pd.Index, "NDFrame": NDFrame,
                              "DataFrameGroupBy": DataFrameGroupBy,
                              "SeriesGroupBy": SeriesGroupBy}
    if "." in dotted:
        owner, name = dotted.split(".", 1)
        return getattr(owners.get(owner), name, None) if owner in owners else None
    for module in (pd, np):
        found = getattr(module, dotted, None)
        if callable(found):
            return found
    return None


def majority(attempts: list[Attempt]) -> Attempt | None:
    """The passing candidate whose output most candidates agree with (first one on ties)."""
    good = [a for a in attempts if a.passed]
    if not good:
        return None
    prints = [a.run.fingerprint if a.run and a.run.fingerprint else a.code for a in good]
    best, _ = Counter(prints).most_common(1)[0]
    return next(a for a, p in zip(good, prints, strict=True) if p == best)
