"""The curriculum: exercise templates read from ``lessons/<subject>/<topic>.toml``.

Templates are data a teacher edits, not code on the import path. Each one names a
dataset generator (``lessons/datasets/<name>.py``), a prompt with ``$slots``, a reference
solution, the answer (a variable, a SQL query, or a figure), its kind (which decides the
checks) and at least one wrong-but-plausible solution the checks must catch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from qcoder_ds.lessons.errors import TemplateError, UnknownTopicError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

LEVELS = ("beginner", "intermediate", "advanced")
KINDS = ("dataframe", "series", "scalar", "query", "figure")
SUBJECTS = ("pandas", "sql", "matplotlib")


@dataclass(frozen=True)
class Template:
    """One exercise template, as written in a topic file."""

    id: str
    subject: str
    topic: str
    title: str
    level: str
    dataset: str
    kind: str
    answer: str
    prompt: str
    solution: str
    wrong: tuple[str, ...]
    slots: dict[str, str] = field(default_factory=dict)
    ordered: bool = False
    check_index: bool = True
    rtol: float = 1e-6
    source: str = ""
    topic_title: str = ""

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.topic}/{self.id}"


def lessons_dir() -> Path:
    """Where the curriculum lives: $QCODER_LESSONS, else the source checkout's ``lessons/``,
    else the copy a wheel installs under ``<prefix>/share/qcoder-ds/lessons``."""
    env = os.environ.get("QCODER_LESSONS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "lessons"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "qcoder-ds" / "lessons"


def _need(d: dict, key: str, where: str, typ: type = str):
    if key not in d:
        raise TemplateError(f"{where}: missing field {key!r}")
    if not isinstance(d[key], typ):
        raise TemplateError(f"{where}: field {key!r} should be a {typ.__name__}")
    return d[key]


def load_topic_file(path: Path) -> list[Template]:
    """Read one topic file; every template in it is checked for the fields it needs."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TemplateError(f"{path}: cannot read topic file: {e}") from e
    subject = _need(data, "subject", str(path))
    topic = _need(data, "topic", str(path))
    title = data.get("title", topic)
    if subject not in SUBJECTS:
        raise TemplateError(f"{path}: subject {subject!r} is not one of {SUBJECTS}")
    out = []
    seen = set()
    for i, t in enumerate(data.get("template", [])):
        where = f"{path} template #{i + 1}"
        tid = _need(t, "id", where)
        where = f"{path} template {tid!r}"
        if tid in seen:
            raise TemplateError(f"{where}: id used twice in this file")
        seen.add(tid)
        level = _need(t, "level", where)
        if level not in LEVELS:
            raise TemplateError(f"{where}: level {level!r} is not one of {LEVELS}")
        kind = _need(t, "kind", where)
        if kind not in KINDS:
            raise TemplateError(f"{where}: kind {kind!r} is not one of {KINDS}")
        wrong = t.get("wrong", [])
        if not wrong or not all(isinstance(w, str) for w in wrong):
            raise TemplateError(f"{where}: needs at least one wrong-but-plausible solution")
        slots = t.get("slots", {})
        if not all(isinstance(v, str) for v in slots.values()):
            raise TemplateError(f"{where}: slot values are Python expressions, as strings")
        default_answer = {"query": "query", "figure": "fig"}.get(kind, "result")
        out.append(Template(
            id=tid, subject=subject, topic=topic, title=t.get("title", title), level=level,
            dataset=_need(t, "dataset", where), kind=kind,
            answer=t.get("answer", default_answer), prompt=_need(t, "prompt", where).strip(),
            solution=_need(t, "solution", where).strip(), wrong=tuple(w.strip() for w in wrong),
            slots=dict(slots), ordered=bool(t.get("ordered", False)),
            check_index=bool(t.get("check_index", True)), rtol=float(t.get("rtol", 1e-6)),
            source=str(path), topic_title=title,
        ))
    if not out:
        raise TemplateError(f"{path}: no [[template]] entries")
    return out


def load_curriculum(root: Path | None = None) -> list[Template]:
    """Every template under ``root`` (default: :func:`lessons_dir`), in a stable order."""
    root = root or lessons_dir()
    if not root.is_dir():
        raise TemplateError(f"no curriculum at {root} (set QCODER_LESSONS to its folder)")
    out: list[Template] = []
    for path in sorted(root.glob("*/*.toml")):
        out.extend(load_topic_file(path))
    return out


def topics(templates: list[Template]) -> dict[str, list[Template]]:
    """Templates grouped by topic name."""
    out: dict[str, list[Template]] = {}
    for t in templates:
        out.setdefault(t.topic, []).append(t)
    return out


def select(templates: list[Template], topic: str, level: str | None = None) -> list[Template]:
    """The templates for one topic (and level); unknown names get the list of known ones."""
    by_topic = topics(templates)
    name = topic.strip().lower().replace(" ", "-")
    if name not in by_topic:
        matches = [k for k in by_topic if name in k]
        if len(matches) == 1:
            name = matches[0]
        else:
            raise UnknownTopicError(
                f"unknown topic {topic!r}; known topics: {', '.join(sorted(by_topic))}")
    chosen = by_topic[name]
    if level is not None:
        if level not in LEVELS:
            raise UnknownTopicError(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")
        chosen = [t for t in chosen if t.level == level]
        if not chosen:
            raise UnknownTopicError(f"topic {name!r} has no {level} templates")
    return chosen
