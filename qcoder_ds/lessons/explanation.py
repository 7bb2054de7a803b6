"""What an explanation is, apart from how it is made (explain, explain_sql) or shown (render).

Its own module so the explainers and the renderer share the types without importing each
other: ``explain()`` dispatches to ``explain_sql``, which needs these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Step:
    """One statement: its lines, code, what it does, what it did, and the facts behind them."""

    line: int
    end_line: int
    code: str
    what: str
    did: str
    calls: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    error: str = ""


@dataclass
class Explanation:
    """The steps of one piece of code (Python or SQL) and the source they came from."""

    language: str
    source: str
    steps: list[Step]
    title: str = ""

    @property
    def failed(self) -> bool:
        """Whether a step raised: the learner's error is shown, not hidden."""
        return any(s.error for s in self.steps)
