"""One concrete exercise: a template with its slots filled from seeded data.

Slot expressions in templates are small Python expressions evaluated with a few helpers
(``choice``, ``value_at``, ``common`` ...) over the generated tables, so a threshold is a
value that really occurs in the data (an off-by-one filter then gives a different
answer) and every seed gives different numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from string import Template as _StrTemplate
from typing import Any

import numpy as np
import pandas as pd

from qcoder_ds.lessons.errors import TemplateError
from qcoder_ds.lessons.templates import Template

POINTS = {"beginner": 1, "intermediate": 2, "advanced": 3}


@dataclass
class Exercise:
    """Everything the notebook builder and the gate need; JSON-serialisable."""

    number: int
    key: str
    subject: str
    topic: str
    level: str
    kind: str
    answer: str
    prompt: str
    setup: str
    solution: str
    wrong: list[str]
    ordered: bool = False
    check_index: bool = True
    rtol: float = 1e-6
    points: int = 1
    slots: dict = field(default_factory=dict)
    origin: str = "template"
    tests: list[str] = field(default_factory=list)  # extra visible asserts (model drafts)

    @property
    def grade_id(self) -> str:
        return f"ex{self.number}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Exercise:
        return cls(**d)


def _plain(v: Any) -> Any:
    """numpy / pandas scalars as plain Python values, so they print as code does."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, pd.Timestamp):
        return v.strftime("%Y-%m-%d")
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class _Helpers:
    """The functions a slot expression may call; all draw from one seeded generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def choice(self, options):
        options = list(options)
        return options[int(self.rng.integers(len(options)))]

    def sample(self, options, k: int):
        options = list(options)
        idx = self.rng.choice(len(options), size=k, replace=False)
        return [options[i] for i in sorted(idx)]

    def value_at(self, series: pd.Series, lo: float = 0.25, hi: float = 0.75):
        """A value that occurs in ``series``, between two quantiles (ties make `>=` matter)."""
        s = series.dropna().sort_values().reset_index(drop=True)
        q = float(self.rng.uniform(lo, hi))
        return s.iloc[min(len(s) - 1, int(math.floor(q * len(s))))]

    def common(self, series: pd.Series, k: int = 3):
        """One of the ``k`` most frequent values of ``series``."""
        top = series.value_counts().index[:k].tolist()
        return self.choice(top)

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))


def fill_slots(template: Template, tables: dict[str, pd.DataFrame],
               rng: np.random.Generator) -> dict[str, Any]:
    """Evaluate the template's slot expressions in order (later slots may use earlier ones)."""
    helpers = _Helpers(rng)
    scope: dict[str, Any] = {"__builtins__": {"int": int, "round": round, "len": len,
                                              "min": min, "max": max, "sorted": sorted,
                                              "list": list, "str": str, "float": float,
                                              "set": set}}
    for name in ("choice", "sample", "value_at", "common", "integer"):
        scope[name] = getattr(helpers, name)
    scope.update(tables)
    scope["pd"] = pd
    values: dict[str, Any] = {}
    for name, expr in template.slots.items():
        try:
            value = eval(expr, scope)  # noqa: S307 - curriculum content, written by teachers
        except Exception as e:
            raise TemplateError(f"{template.source} template {template.id!r}: slot {name!r} "
                                f"({expr}) fails: {type(e).__name__}: {e}") from e
        if isinstance(value, str):  # a slot may name earlier slots: "Revenue by $group"
            value = _StrTemplate(value).safe_substitute({k: str(v) for k, v in values.items()})
        values[name] = _plain(value)
        scope[name] = value
    return values


def substitute(text: str, values: dict[str, Any], where: str) -> str:
    """Fill ``$slot`` / ``${slot}`` placeholders; an unknown placeholder is an error."""
    try:
        return _StrTemplate(text).substitute({k: str(v) for k, v in values.items()})
    except (KeyError, ValueError) as e:
        raise TemplateError(f"{where}: placeholder {e} has no slot") from e


def instantiate(template: Template, number: int, tables: dict[str, pd.DataFrame],
                setup: str, rng: np.random.Generator, schema: str = "") -> Exercise:
    """The exercise ``template`` becomes for these tables and this random stream."""
    values = fill_slots(template, tables, rng)
    values.setdefault("schema", schema)
    where = f"{template.source} template {template.id!r}"
    return Exercise(
        number=number, key=template.key, subject=template.subject, topic=template.topic,
        level=template.level, kind=template.kind, answer=template.answer,
        prompt=substitute(template.prompt, values, where), setup=setup,
        solution=substitute(template.solution, values, where),
        wrong=[substitute(w, values, where) for w in template.wrong],
        ordered=template.ordered, check_index=template.check_index, rtol=template.rtol,
        points=POINTS[template.level], slots={k: v for k, v in values.items() if k != "schema"},
    )
