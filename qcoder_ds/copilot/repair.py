"""Turning what went wrong into words for the model, and choosing among several candidates.

pandas-ai retries with the traceback; sketch retries once on SyntaxError. Here every failure
kind (syntax, unknown names/columns with the real ones, SQL not matching the schema, the
sandbox's error line) is phrased so a small model can act on it, and repairs are bounded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from qcoder_ds.copilot.sandbox import RunResult
from qcoder_ds.copilot.validate import Issue


@dataclass
class Attempt:
    """One answer from the model and what the checks said about it."""

    answer: str
    code: str
    issues: list[Issue] = field(default_factory=list)
    run: RunResult | None = None
    notes: list[str] = field(default_factory=list)
    sql: str | None = None  # the query, for SQL answers (``code`` is then the cell around it)

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
    return out


def majority(attempts: list[Attempt]) -> Attempt | None:
    """The passing candidate whose output most candidates agree with (first one on ties)."""
    good = [a for a in attempts if a.passed]
    if not good:
        return None
    prints = [a.run.fingerprint if a.run and a.run.fingerprint else a.code for a in good]
    best, _ = Counter(prints).most_common(1)[0]
    return next(a for a, p in zip(good, prints, strict=True) if p == best)
