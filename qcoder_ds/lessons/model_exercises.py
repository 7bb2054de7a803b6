"""Exercises drafted by the local model, accepted only if they pass the same gate.

The model gets a topic and a theme, the real dataset it must use (schema and a few rows),
and one curriculum exercise as a worked example of the format. It drafts a task, a
solution, a plausible wrong solution and a few ``assert`` tests. The draft then goes through
the gate exactly like a template: its solution must pass its own tests and the hidden
value checks, the stub must fail, the wrong solution must be caught, and a second process
must agree. We report the acceptance rate (Sarsa et al. found 30.9% of LLM-written exercises
passed their own tests).
"""

from __future__ import annotations

import ast
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcoder_ds.lessons.errors import LessonError
from qcoder_ds.lessons.exercise import POINTS, Exercise, instantiate
from qcoder_ds.lessons.gate import build_and_gate, rerun_gate, summary
from qcoder_ds.lessons.generate import (
    CHECKS_FILE,
    Assignment,
    _stage_data,
    build_notebook,
    release,
    released_stubs,
    write_assignment,
)
from qcoder_ds.lessons.templates import Template, load_curriculum, select

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)
_SECTION = re.compile(r"^\s*(?:#+\s*|\*\*)?(TASK|SOLUTION|WRONG|TESTS)\b[:*\s]*", re.M | re.I)
_ANSWER = {"pandas": "result", "sql": "query", "matplotlib": "fig"}
_EXAMPLE_TESTS = {
    "series": "assert isinstance(result, pd.Series)\nassert len(result) > 0",
    "dataframe": "assert isinstance(result, pd.DataFrame)\nassert len(result) > 0",
    "scalar": "assert result is not None",
    "query": 'assert "SELECT" in query.upper()',
    "figure": "assert len(fig.axes) >= 1",
}


def _normal(code: str) -> str:
    """Code with formatting and comments removed, to spot copies."""
    try:
        return ast.unparse(ast.parse(code))
    except SyntaxError:
        return " ".join(code.split())


@dataclass
class Draft:
    """What the model wrote for one exercise, parsed (or why it could not be)."""

    raw: str
    task: str = ""
    solution: str = ""
    wrong: str = ""
    tests: list[str] = field(default_factory=list)
    problem: str = ""


@dataclass
class ModelRun:
    drafted: int
    accepted: int
    report: dict
    assignment: Assignment | None = None

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def parse_draft(text: str, answer: str) -> Draft:
    """Split a reply into TASK / SOLUTION / WRONG / TESTS; code comes from fenced blocks."""
    d = Draft(raw=text)
    marks = list(_SECTION.finditer(text))
    parts = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        parts.setdefault(m.group(1).upper(), text[m.end():end].strip())

    def code(section: str) -> str:
        body = parts.get(section, "")
        blocks = _FENCE.findall(body)
        return (blocks[0] if blocks else body).strip()

    d.task = re.sub(r"```.*?```", "", parts.get("TASK", ""), flags=re.S).strip()
    d.solution, d.wrong = code("SOLUTION"), code("WRONG")
    d.tests = [ln.strip() for ln in code("TESTS").splitlines()
               if ln.strip().startswith("assert ")]
    if not d.task:
        d.problem = "no TASK section"
    elif not d.solution:
        d.problem = "no SOLUTION code"
    elif not d.tests:
        d.problem = "no assert tests"
    else:
        for label, src in (("solution", d.solution), ("wrong solution", d.wrong),
                           *(("test", t) for t in d.tests)):
            try:
                ast.parse(src)
            except SyntaxError as e:
                d.problem = f"the {label} does not parse: {e.msg} (line {e.lineno})"
                break
        else:
            assigned = {t.id for n in ast.walk(ast.parse(d.solution))
                        if isinstance(n, (ast.Assign, ast.AnnAssign))
                        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                        for t in ast.walk(t) if isinstance(t, ast.Name)}
            if answer not in assigned:
                d.problem = f"the solution does not assign `{answer}`"
            elif not d.wrong or d.wrong.strip() == d.solution.strip():
                d.problem = "no wrong-but-plausible solution different from the solution"
    return d


def build_prompt(example: Exercise, topic_title: str, theme: str, level: str,
                 schema: str, sample: str, answer: str) -> list[dict]:
    """Chat messages: the format, one worked example from the curriculum, then the request."""
    fmt = (
        "You write one data-science exercise for a Jupyter notebook. Reply with exactly four "
        "sections:\nTASK: the task for the learner, 2-4 sentences, naming the variable "
        f"`{answer}` that must hold the answer.\nSOLUTION: a ```python block that computes "
        f"`{answer}` from the data already loaded.\nWRONG: a ```python block with a plausible "
        "mistake a learner makes (e.g. mean instead of sum, > instead of >=).\nTESTS: a "
        f"```python block of 2-4 `assert` lines about `{answer}` that the SOLUTION passes.")
    example_reply = (f"TASK: {example.prompt.split(chr(10) + chr(10) + 'Data:')[0]}\n\n"
                     f"SOLUTION:\n```python\n{example.solution}\n```\n\n"
                     f"WRONG:\n```python\n{example.wrong[0]}\n```\n\n"
                     f"TESTS:\n```python\n{_EXAMPLE_TESTS[example.kind]}\n```")
    request = (f"Topic: {topic_title}. Theme: {theme}. Level: {level}.\nThe data (already "
               f"loaded):\n{schema}\nFirst rows:\n{sample}\nWrite a new exercise on this "
               "topic, different from the example.")
    return [
        {"role": "system", "content": fmt},
        {"role": "user", "content": f"Topic: {topic_title}. Level: {example.level}.\n"
                                    f"The data (already loaded):\n{schema}"},
        {"role": "assistant", "content": example_reply},
        {"role": "user", "content": request},
    ]


def draft_exercises(write: Callable[[list[dict], int], str], spec: str, n: int, seed: int,
                    level: str | None, staging: Path,
                    lessons_root: Path | None = None) -> tuple[list[Exercise], list[dict], str]:
    """Ask for ``n`` drafts; return the parseable ones as exercises, and every draft's record."""
    topic, _, theme = (p.strip() for p in spec.partition(","))
    if not topic:
        raise LessonError("--from-model needs 'topic, theme', e.g. 'groupby, coffee shop'")
    templates = select(load_curriculum(lessons_root), topic, level)
    t0: Template = templates[0]
    level = level or t0.level
    staged = _stage_data(templates, seed, staging)
    setup, tables, schema = staged[(t0.dataset, t0.subject)]
    sample = "\n".join(f"{name}:\n{df.head(3).to_string()}" for name, df in tables.items())
    answer = _ANSWER[t0.subject]
    exercises, records = [], []
    seen: set[str] = set()
    for i in range(n):
        # a different worked example each time (templates of the same data), so drafts vary
        same_data = [t for t in templates if (t.dataset, t.subject) == (t0.dataset, t0.subject)]
        t = same_data[i % len(same_data)]
        example = instantiate(t, 0, tables, setup, np.random.default_rng([seed, i]), schema)
        messages = build_prompt(example, t0.topic_title, theme or "everyday data", level,
                                schema, sample, answer)
        reply = write(messages, seed + i)
        d = parse_draft(reply, answer)
        if not d.problem and _normal(d.solution) == _normal(example.solution):
            d.problem = "the solution copies the worked example"
        elif not d.problem and _normal(d.solution) in seen:
            d.problem = "the solution repeats an earlier draft"
        rec = {"draft": i + 1, "reply": reply, "problem": d.problem, "example": t.key}
        records.append(rec)
        if d.problem:
            continue
        seen.add(_normal(d.solution))
        ex = Exercise(number=len(exercises) + 1, key=f"model/{t0.topic}/{i + 1}",
                      subject=t0.subject, topic=t0.topic, level=level, kind="auto",
                      answer=answer, prompt=f"{d.task}\n\nData:\n{schema}", setup=setup,
                      solution=d.solution, wrong=[d.wrong], points=POINTS[level],
                      tests=d.tests, origin="model")
        rec["exercise"] = ex.number
        exercises.append(ex)
    return exercises, records, t0.topic_title


def generate_from_model(spec: str, n: int, seed: int, out: Path, level: str | None = None,
                        model: str | None = None, force: bool = False, engine=None,
                        write: Callable[[list[dict], int], str] | None = None,
                        lessons_root: Path | None = None) -> ModelRun:
    """Draft ``n`` exercises with the model, gate them, write the accepted ones."""
    if write is None:
        from qcoder_ds.runtime.sampler import SamplingParams

        if engine is None:
            from qcoder_ds.engine import Engine

            engine = Engine.load(model) if model else Engine.load()

        def write(messages: list[dict], s: int) -> str:
            params = SamplingParams(max_new_tokens=400, temperature=0.7, top_p=0.9, seed=s)
            return engine.generate(messages, params)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    topic = spec.partition(",")[0].strip().replace(" ", "-")
    name = f"{topic.replace('-', '_')}_model_seed{seed}"
    with tempfile.TemporaryDirectory(prefix=".qcoder-stage-", dir=out) as tmp:
        stage = Path(tmp)
        src_dir = stage / "source" / name
        src_dir.mkdir(parents=True)
        exercises, records, title = draft_exercises(write, spec, n, seed, level, src_dir,
                                                    lessons_root)
        report = {"name": name, "spec": spec, "seed": seed, "drafted": n, "drafts": records}
        if not exercises:
            report.update(accepted=0, acceptance_rate=0.0)
            return ModelRun(n, 0, report)
        shutil.copyfile(Path(__file__).with_name("checks.py"), src_dir / CHECKS_FILE)
        titles = [f"{title} (model-written)"] * len(exercises)
        build, verdicts = build_and_gate(exercises, titles, src_dir)
        accepted = [e for e, v in zip(exercises, verdicts, strict=True) if v.passed]
        final = verdicts
        if accepted:
            cells = {b["number"]: b["notebook_cells"] for b in build["built"]}
            nb = build_notebook(f"{title}: model-written exercises", accepted, cells,
                                {"spec": spec, "seed": seed, "origin": "model"})
            second = rerun_gate(accepted, build, released_stubs(release(nb)), src_dir)
            again = {v.number: v for v in second}
            final = [again.get(v.number, v) if v.passed else v for v in verdicts]
            accepted = [e for e, v in zip(exercises, final, strict=True) if v.passed]
        by_number = {v.number: v for v in final}
        for rec in records:
            if "exercise" in rec:
                v = by_number[rec["exercise"]]
                rec["accepted"], rec["reasons"] = v.passed, v.reasons
            else:
                rec["accepted"], rec["reasons"] = False, [rec["problem"]]
        report.update(accepted=len(accepted), acceptance_rate=len(accepted) / n,
                      gate=summary(final))
        assignment = None
        if accepted:
            nb = build_notebook(f"{title}: model-written exercises", accepted, cells,
                                {"spec": spec, "seed": seed, "origin": "model",
                                 "acceptance_rate": len(accepted) / n})
            assignment = write_assignment(nb, release(nb), name, report, stage, out, force)
        return ModelRun(n, len(accepted), report, assignment)
