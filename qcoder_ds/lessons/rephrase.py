"""The model may reword an explanation for the learner's level, never change its facts.

Every sentence the model writes is checked against the step it rewrites: each number must
be one the trace or the code states (row counts must be row counts the trace saw), and
each name in backticks or quotes must be a column, variable, table or function the step
mentions. A sentence that fails is rejected and the traced text is kept in its place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import replace

from qcoder_ds.lessons.explanation import Explanation, Step

_NUM = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*(?:\.\d+)?(?![\w])")
_ROWS = re.compile(r"(\d[\d,]*)\s+(?:rows?|records?|groups?|values?|entries)\b", re.I)
_QUOTED = re.compile(r"`([^`]+)`|'([A-Za-z_][\w ]*)'|\"([A-Za-z_][\w ]*)\"")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z`])")

LEVEL_STYLE = {
    "beginner": "a beginner who has never used pandas or SQL: short sentences, no jargon",
    "intermediate": "a learner who knows the basics: concise and precise",
    "advanced": "an experienced analyst: one terse sentence",
}


def _numbers(text: str) -> set[float]:
    out = set()
    for m in _NUM.findall(text):
        try:
            out.add(float(m.replace(",", "")))
        except ValueError:
            pass
    return out


def _walk(obj, into: set) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            into.add(str(k))
            _walk(v, into)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, into)
    elif obj is not None:
        into.add(str(obj))


def allowed(step: Step) -> tuple[set[float], set[float], set[str]]:
    """Numbers, row counts and names a sentence about ``step`` may use."""
    texts: set[str] = set()
    _walk(step.facts, texts)
    pool = " ".join([step.code, step.what, step.did, *texts])
    numbers = _numbers(pool)
    rows = {float(m.replace(",", "")) for m in _ROWS.findall(step.did)}
    for key in ("rows", "rows_before", "groups", "cols"):
        _collect(step.facts, key, rows)
    names = {w.lower() for w in re.findall(r"[A-Za-z_][\w.]*", pool)}
    return numbers, rows, names


def _collect(obj, key: str, into: set) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and isinstance(v, (int, float)):
                into.add(float(v))
            _collect(v, key, into)
    elif isinstance(obj, list):
        for v in obj:
            _collect(v, key, into)


def _close(x: float, pool: Iterable[float]) -> bool:
    return any(abs(x - y) <= max(1e-9, 0.005 * abs(y)) for y in pool)


def contradictions(sentence: str, step: Step) -> list[str]:
    """Why ``sentence`` cannot be shown for ``step`` (empty when it agrees with the trace)."""
    numbers, rows, names = allowed(step)
    problems = []
    for m in _ROWS.finditer(sentence):
        n = float(m.group(1).replace(",", ""))
        if not _close(n, rows):
            problems.append(f"says {m.group(0)!r}; the trace saw {sorted(int(r) for r in rows)}")
    for x in _numbers(_ROWS.sub("", sentence)):
        if not _close(x, numbers):
            problems.append(f"the number {x:g} is not in the trace or the code")
    for m in _QUOTED.finditer(sentence):
        ident = next(g for g in m.groups() if g)
        words = re.findall(r"[A-Za-z_][\w.]*", ident)
        if words and not all(w.lower() in names for w in words):
            problems.append(f"{ident!r} is not a name in this code or its data")
    return problems


def rephrase(ex: Explanation, level: str, write: Callable[[str], str]) -> tuple[Explanation, dict]:
    """Reword each step with ``write(prompt) -> text``; keep only sentences that agree.

    Returns the new explanation and counts of sentences accepted and rejected (with why).
    """
    style = LEVEL_STYLE.get(level, LEVEL_STYLE["intermediate"])
    stats = {"accepted": 0, "rejected": 0, "reasons": []}
    steps = []
    for s in ex.steps:
        if not s.did or s.error:
            steps.append(s)
            continue
        prompt = (f"Explain this {ex.language} step to {style}. Use only the facts given; "
                  "do not add numbers or names that are not in them. At most two sentences."
                  f"\n\nCode:\n{s.code}\n\nWhat it does: {s.what}\nWhat it did: {s.did}")
        text = write(prompt).strip()
        kept = []
        for sentence in (t.strip() for t in _SENT.split(text) if t.strip()):
            why = contradictions(sentence, s)
            if why:
                stats["rejected"] += 1
                stats["reasons"].append({"line": s.line, "sentence": sentence, "why": why})
            else:
                stats["accepted"] += 1
                kept.append(sentence)
        if kept:
            steps.append(replace(s, what=" ".join(kept)))
        else:
            steps.append(s)
    return replace(ex, steps=steps), stats


def rephrase_with_model(ex: Explanation, level: str, model: str | None = None,
                        engine=None) -> Explanation:
    """Rephrase with the local model (loaded if not given)."""
    from qcoder_ds.runtime.sampler import SamplingParams

    if engine is None:
        from qcoder_ds.engine import Engine

        engine = Engine.load(model) if model else Engine.load()
    params = SamplingParams(max_new_tokens=96, temperature=0.0)

    def write(prompt: str) -> str:
        return engine.generate([{"role": "user", "content": prompt}], params)

    out, _ = rephrase(ex, level, write)
    return out
