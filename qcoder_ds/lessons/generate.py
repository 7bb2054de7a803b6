"""``qcoder lessons generate``: an nbgrader assignment whose every exercise passed the gate.

Output, laid out as an nbgrader course folder so ``nbgrader generate_assignment`` works
in it::

    OUT/source/<name>/<name>.ipynb   solutions, visible and hidden tests (the teacher's copy)
    OUT/source/<name>/data/...       the generated data (CSV or SQLite)
    OUT/source/<name>/qcoder_checks.py   the checks the test cells import
    OUT/release/<name>/...           the student version (nbgrader's own preprocessors)
    OUT/<name>.gate.json             the gate's verdict on every exercise

Everything is built in a staging folder beside OUT and moved into place only when every
exercise passed; a failing exercise is reported and nothing is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np

from qcoder_ds.lessons import datasets
from qcoder_ds.lessons.errors import GateError, LessonError
from qcoder_ds.lessons.exercise import Exercise, instantiate
from qcoder_ds.lessons.gate import build_and_gate, rerun_gate, summary
from qcoder_ds.lessons.templates import LEVELS, Template, load_curriculum, select

CHECKS_FILE = "qcoder_checks.py"
DATA_DIR = "data"


@dataclass
class Assignment:
    """What ``generate`` wrote (or would write)."""

    name: str
    source: Path
    release: Path
    report: dict


def assignment_name(topic: str, level: str | None, seed: int) -> str:
    return f"{topic.replace('-', '_')}_{level or 'mixed'}_seed{seed}"


def _stage_data(exercises_templates: list[Template], seed: int, folder: Path) -> dict:
    """Write each dataset once; return {(dataset, subject): (setup code, schema text)}."""
    out: dict = {}
    cache: dict = {}
    for t in exercises_templates:
        key = (t.dataset, t.subject)
        if key in out:
            continue
        if t.dataset not in cache:
            cache[t.dataset] = datasets.generate(
                t.dataset, seed * 1_000_003 + zlib.crc32(t.dataset.encode()))
        tables = cache[t.dataset]
        if t.subject == "sql":
            setup = datasets.write_sqlite(t.dataset, tables, folder / DATA_DIR)
        else:
            setup = datasets.write_csv(tables, folder / DATA_DIR)
            if t.subject == "matplotlib":
                setup = setup.replace("import pandas as pd",
                                      "import matplotlib.pyplot as plt\nimport pandas as pd", 1)
        out[key] = (setup, tables, datasets.sqlite_schema(tables))
    return out


def plan_exercises(templates: list[Template], n: int, seed: int,
                   staged: dict) -> list[tuple[Template, Exercise]]:
    """``n`` distinct exercises: templates in a seeded order, slots from per-exercise streams."""
    order = list(np.random.default_rng(seed).permutation(len(templates)))
    order.sort(key=lambda i: LEVELS.index(templates[i].level))  # easier first, stable
    chosen: list[tuple[Template, Exercise]] = []
    seen: set[str] = set()
    for k in range(n):
        found = None
        for j in range(len(order)):  # this exercise's template first, then the others
            t = templates[order[(k + j) % len(order)]]
            setup, tables, schema = staged[(t.dataset, t.subject)]
            for attempt in range(25):
                rng = np.random.default_rng([seed, k, j, attempt])
                ex = instantiate(t, k + 1, tables, setup, rng, schema)
                sig = json.dumps([t.key, ex.slots], sort_keys=True, default=str)
                if sig not in seen:
                    found = (t, ex, sig)
                    break
            if found:
                break
        if found is None:
            raise LessonError(f"only {len(seen)} distinct exercises can be made from "
                              f"{len(templates)} template(s); ask for fewer (--n)")
        t, ex, sig = found
        seen.add(sig)
        ex.prompt = f"{ex.prompt}\n\nData:\n{schema}"
        chosen.append((t, ex))
    return chosen


def build_notebook(title: str, exercises: list[Exercise], cells: dict[int, list[dict]],
                   meta: dict) -> nbformat.NotebookNode:
    """The source notebook: an introduction, then each exercise's five cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["qcoder"] = meta
    intro = (f"# {title}\n\nAnswer each exercise in the cell that says `YOUR CODE HERE` "
             "(delete the `raise NotImplementedError()` line). Run the cell below each answer "
             "to check its form; more tests run when the notebook is graded. Run the "
             "notebook from the top: each exercise loads fresh data.")
    nb.cells.append(nbformat.v4.new_markdown_cell(intro))
    for ex in exercises:
        for c in cells[ex.number]:
            if c["cell_type"] == "markdown":
                cell = nbformat.v4.new_markdown_cell(c["source"], metadata=c["metadata"])
            else:
                cell = nbformat.v4.new_code_cell(c["source"], metadata=c["metadata"])
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):  # stable ids: same inputs, same file
        cell["id"] = f"cell-{i}"
    nbformat.validate(nb)
    return nb


def release(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student version, made by nbgrader's own preprocessors (via qcoder_ds.grading)."""
    from qcoder_ds.grading.assign import release_notebook

    return release_notebook(nb)


def released_stubs(nb: nbformat.NotebookNode) -> dict[int, str]:
    out = {}
    for cell in nb.cells:
        q = cell.metadata.get("qcoder", {})
        if q.get("role") == "answer":
            out[q["exercise"]] = cell.source
    return out


def gate_and_write(exercises: list[Exercise], titles: list[str], name: str, title: str,
                   meta: dict, stage: Path, out: Path, force: bool = False) -> Assignment:
    """Gate ``exercises`` (data already in ``stage/source/name``); write them if all pass."""
    src_dir = stage / "source" / name
    shutil.copyfile(Path(__file__).with_name("checks.py"), src_dir / CHECKS_FILE)
    build, verdicts = build_and_gate(exercises, titles, src_dir)
    if all(v.passed for v in verdicts):
        cells = {b["number"]: b["notebook_cells"] for b in build["built"]}
        source_nb = build_notebook(title, exercises, cells, meta)
        release_nb = release(source_nb)
        verdicts = rerun_gate(exercises, build, released_stubs(release_nb), src_dir)
    report = {"name": name, **meta, **summary(verdicts)}
    if not all(v.passed for v in verdicts):
        bad = [v for v in verdicts if not v.passed]
        lines = [f"exercise {v.number} ({v.key}): {'; '.join(v.reasons)}" for v in bad]
        raise GateError(f"{len(bad)} of {len(verdicts)} exercise(s) failed the gate; nothing "
                        "was written:\n  " + "\n  ".join(lines), report)
    return write_assignment(source_nb, release_nb, name, report, stage, out, force)


def write_assignment(source_nb: nbformat.NotebookNode, release_nb: nbformat.NotebookNode,
                     name: str, report: dict, stage: Path, out: Path,
                     force: bool = False) -> Assignment:
    """Move a gated assignment from ``stage`` into the course folder ``out``."""
    src_dir = stage / "source" / name
    nbformat.write(source_nb, src_dir / f"{name}.ipynb")
    rel_dir = stage / "release" / name
    shutil.copytree(src_dir, rel_dir)
    nbformat.write(release_nb, rel_dir / f"{name}.ipynb")
    (stage / f"{name}.gate.json").write_text(json.dumps(report, indent=2, default=str))
    targets = [out / "source" / name, out / "release" / name, out / f"{name}.gate.json"]
    for t in targets:
        if t.exists():
            if not force:
                raise LessonError(f"{t} exists; use --force to replace it")
            shutil.rmtree(t) if t.is_dir() else t.unlink()
    for sub in ("source", "release"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        (stage / sub / name).replace(out / sub / name)
    (stage / f"{name}.gate.json").replace(out / f"{name}.gate.json")
    return Assignment(name, out / "source" / name, out / "release" / name, report)


def generate(topic: str, level: str | None, n: int, seed: int, out: Path,
             force: bool = False, lessons_root: Path | None = None) -> Assignment:
    """Make an assignment of ``n`` exercises on ``topic``; every one passes the gate."""
    if n < 1:
        raise LessonError("--n must be at least 1")
    templates = select(load_curriculum(lessons_root), topic, level)
    name = assignment_name(templates[0].topic, level, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".qcoder-stage-", dir=out) as tmp:
        stage = Path(tmp)
        src_dir = stage / "source" / name
        src_dir.mkdir(parents=True)
        staged = _stage_data(templates, seed, src_dir)
        plan = plan_exercises(templates, n, seed, staged)
        meta = {"topic": templates[0].topic, "subject": templates[0].subject, "level": level,
                "seed": seed, "n": n, "templates": [t.key for t, _ in plan]}
        title = f"{templates[0].topic_title} ({level or 'all levels'})"
        exercises = [ex for _, ex in plan]
        return gate_and_write(exercises, [t.title for t, _ in plan], name, title, meta,
                              stage, out, force)


def check_curriculum(templates: list[Template], seed: int, workdir: Path) -> dict:
    """Gate one exercise per template for ``seed``, all in one batch (for teachers and CI).

    Every dataset is written once into ``workdir``; the exercises go through the same two
    worker processes and nbgrader release as ``generate``. Returns the gate summary.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    staged = _stage_data(templates, seed, workdir)
    exercises = []
    for k, t in enumerate(templates):
        setup, tables, schema = staged[(t.dataset, t.subject)]
        ex = instantiate(t, k + 1, tables, setup, np.random.default_rng([seed, k]), schema)
        ex.prompt = f"{ex.prompt}\n\nData:\n{schema}"
        exercises.append(ex)
    shutil.copyfile(Path(__file__).with_name("checks.py"), workdir / CHECKS_FILE)
    titles = [t.title for t in templates]
    build, verdicts = build_and_gate(exercises, titles, workdir)
    if build["built"]:
        passed = [e for e in exercises if any(b["number"] == e.number for b in build["built"])]
        cells = {b["number"]: b["notebook_cells"] for b in build["built"]}
        nb = build_notebook("curriculum check", passed, cells, {"seed": seed})
        second = rerun_gate(exercises, build, released_stubs(release(nb)), workdir)
        first = {v.number: v for v in verdicts}
        verdicts = [first[v.number] if not first[v.number].passed else v for v in second]
    return {"seed": seed, **summary(verdicts)}
