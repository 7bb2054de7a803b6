"""Measuring generated cells on public benchmarks: DS-1000 (pandas, matplotlib) and Spider.

Grading follows ``eval/README.md``: DS-1000 problems run in a fresh process with a temporary
working directory and ``MPLBACKEND=Agg`` (exec ``code_context``, then ``test_execution`` and
``test_string`` when defined; pass = no exception in time), after the problems whose own
reference solution fails on the installed libraries are left out and listed. Spider is
execution accuracy: gold and predicted SQL run read-only, results compared as multisets (as
lists when the gold query orders), with empty-gold questions reported separately.

Two systems are measured on the same problems: the raw model with a plain prompt, and the
copilot pipeline (live context from the problem's own setup code, validation, check, repair).
"""

from __future__ import annotations

import ast
import gzip
import itertools
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcoder_ds import isolation
from qcoder_ds.copilot.errors import CopilotError
from qcoder_ds.copilot.extract import extract_code, extract_sql

CATEGORIES = ("pandas", "matplotlib", "spider")

_GRADER = r'''
import json, os, sys
os.environ["MPLBACKEND"] = "Agg"
job = json.load(open(sys.argv[1]))
ns = {}
exec(job["code_context"], ns)
ns["test_execution"](job["solution"])
if "test_string" in ns:
    ns["test_string"](job["solution"])
'''


@dataclass
class Problem:
    """One benchmark item, whatever the benchmark."""

    id: str
    category: str
    prompt: str
    reference: str
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- loading


def load_ds1000(data_dir: Path, library: str) -> list[Problem]:
    path = data_dir / "ds1000" / f"{library}.jsonl.gz"
    if not path.is_file():
        raise CopilotError(f"{path}: not found (--data-dir needs ds1000/<library>.jsonl.gz)")
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            pid = row["metadata"]["problem_id"]
            out.append(Problem(f"{library}/{pid}", library, row["prompt"],
                               row["reference_code"], {"code_context": row["code_context"]}))
    return out


def load_spider(data_dir: Path) -> list[Problem]:
    path = data_dir / "spider" / "questions.json"
    if not path.is_file():
        raise CopilotError(f"{path}: not found (--data-dir needs spider/questions.json)")
    rows = json.loads(path.read_text())
    return [Problem(f"spider/{i}", "spider", r["question"], r["query"], {"db_id": r["db_id"]})
            for i, r in enumerate(rows)]


def sample(problems: list[Problem], n: int | None, seed: int) -> list[Problem]:
    """A fixed random order (``seed``); the first ``n`` are used (all when ``n`` is None)."""
    order = list(problems)
    random.Random(seed).shuffle(order)
    return order if n is None else order[:n]


# --------------------------------------------------------------------------- DS-1000 grading


def grade_ds1000(problem: Problem, solution: str, timeout_s: float = 60.0) -> tuple[bool, str]:
    """(passed, why not) for ``solution`` on a DS-1000 problem, in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="qcoder-eval-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"code_context": problem.extra["code_context"],
                                   "solution": solution}))
        grader = Path(tmp) / "grader.py"
        grader.write_text(_GRADER)
        env = dict(os.environ, MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   HOME=tmp, MPLCONFIGDIR=tmp)
        cmd = [sys.executable, str(grader), str(job)]
        if isolation.available():  # the model's code: behind the same walls as a check
            isolation.hand_over([tmp])
            cmd = isolation.command(cmd, isolation.Walls(writable=(tmp,)))
        try:
            r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                               timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False, "timeout"
    if r.returncode == 0:
        return True, ""
    tail = r.stderr.strip().splitlines()
    return False, tail[-1][:300] if tail else f"exit {r.returncode}"


_FUNCTION_STUB = re.compile(r"^def (\w+)\((.*)\):\s*$", re.M)


def function_stub(problem: Problem) -> tuple[str, list[str]] | None:
    """(name, parameters) when the problem grades the body of a function its stub opens
    (``def f(df=example_df):`` ... ``### BEGIN SOLUTION``), else None."""
    stub = problem.prompt.split("<code>")[-1]
    m = _FUNCTION_STUB.search(stub)
    if not m or "BEGIN SOLUTION" not in stub[m.end():]:
        return None
    try:
        args = ast.parse(m.group(0) + " pass").body[0].args  # type: ignore[attr-defined]
    except SyntaxError:
        return None
    return m.group(1), [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]


def ds1000_setup(problem: Problem) -> str:
    """The problem's own setup code (what a user's kernel would already hold)."""
    if problem.category == "matplotlib":
        return problem.prompt.split("# SOLUTION START")[0]
    if function_stub(problem):  # the example data defined above the function
        stub = problem.prompt.split("<code>")[-1]
        return stub[:_FUNCTION_STUB.search(stub).start()]
    blocks = re.findall(r"<code>\n?(.*?)</code>", problem.prompt, re.S)
    return blocks[0] if blocks else ""


def as_graded(problem: Problem, code: str) -> str:
    """The answer in the form the grader inserts: unchanged, or for a function-stub problem
    the function's body. A notebook cell is top-level code, so both systems' answers are put
    in that form the same way: the body of the answer's own ``def``, or the cell itself
    returning ``result`` (or its last expression), with ``example_df`` read as ``df``."""
    stub = function_stub(problem)
    if stub is None or not code.strip():
        return code
    name, params = stub
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    lines = code.splitlines()
    own = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if own is not None:
        body = textwrap.dedent("\n".join(lines[own.body[0].lineno - 1:own.end_lineno]))
    else:
        body_lines = list(lines)
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            body_lines[last.lineno - 1] = "return " + body_lines[last.lineno - 1].lstrip()
            body_lines = body_lines[:last.end_lineno]
        elif "result" in {t.id for n in tree.body if isinstance(n, ast.Assign)
                          for t in n.targets if isinstance(t, ast.Name)}:
            body_lines.append("return result")
        body = "\n".join(body_lines)
        for param in params:
            body = re.sub(rf"\bexample_{param}\b", param, body)
    return textwrap.indent(body, "    ")


def ds1000_request(problem: Problem) -> str:
    """The problem text as a user would ask it: everything but the trailing solution marker."""
    text = problem.prompt
    for marker in ("BEGIN SOLUTION\n<code>", "# SOLUTION START"):
        text = text.replace(marker, "")
    return text.strip()


def result_variable(problem: Problem) -> str | None:
    m = re.search(r"^(\w+) = \.\.\. *# put solution in this variable", problem.prompt, re.M)
    return m.group(1) if m else None


# --------------------------------------------------------------------------- Spider grading


def spider_db(data_dir: Path, db_id: str) -> Path:
    return data_dir / "spider" / "database" / db_id / f"{db_id}.sqlite"


def run_readonly(db: Path, sql: str, timeout_s: float = 20.0) -> list[tuple]:
    """Rows of ``sql`` on a read-only connection; aborted after ``timeout_s``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", "replace")
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _norm(row: tuple) -> tuple:
    return tuple(round(v, 6) if isinstance(v, float) else v for v in row)


#: the verdict's note when the rows agree only once the answer's columns are reordered
REORDERED = "columns in another order"


def same_rows(gold: list[tuple], pred: list[tuple], ordered: bool) -> str | None:
    """How ``pred`` matches ``gold``: "" when equal, :data:`REORDERED` when equal once its
    columns are permuted, None when different. Spider's own execution evaluator
    (test-suite-sql-eval, ``result_eq``) accepts a column permutation: "the average and the
    largest age for each type" answered as (type, avg, max) is the same result. Rows are
    compared as multisets, or as lists when ``ordered``."""
    def equal(rows: list[tuple]) -> bool:
        return rows == gold if ordered else Counter(rows) == Counter(gold)

    if not gold or not pred:
        return "" if not gold and not pred else None
    width = len(gold[0])
    if len(pred) != len(gold) or len(pred[0]) != width:
        return None
    if equal(pred):
        return ""
    # a gold column can only come from an answer column holding the same multiset of values
    columns = [Counter(r[j] for r in pred) for j in range(width)]
    options = [[j for j in range(width) if columns[j] == Counter(r[i] for r in gold)]
               for i in range(width)]
    for perm in itertools.islice(itertools.product(*options), 5000):
        if len(set(perm)) == width and equal([tuple(r[j] for j in perm) for r in pred]):
            return REORDERED
    return None


def spider_match(db: Path, gold: str, predicted: str) -> tuple[bool, bool, str]:
    """(executed, correct, note) with the README's rule for comparing results; the note is
    the error of an answer that fails to run, or :data:`REORDERED`."""
    gold_rows = [_norm(r) for r in run_readonly(db, gold)]
    try:
        pred_rows = [_norm(r) for r in run_readonly(db, predicted)]
    except sqlite3.Error as e:
        return False, False, str(e)[:200]
    except Exception as e:  # noqa: BLE001 - e.g. a ValueError from the driver
        return False, False, f"{type(e).__name__}: {e}"[:200]
    how = same_rows(gold_rows, pred_rows, bool(re.search(r"\border\s+by\b", gold, re.I)))
    return True, how is not None, how or ""


def sqlite_schema(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND sql IS NOT NULL"
                            ).fetchall()
    finally:
        conn.close()
    return "\n".join(r[0].strip() + ";" for r in rows)


# --------------------------------------------------------------------------- the two systems


def raw_messages(problem: Problem, data_dir: Path) -> list[dict[str, str]]:
    """The plain prompt: the problem as written (Spider: its schema and the question)."""
    if problem.category == "spider":
        schema = sqlite_schema(spider_db(data_dir, problem.extra["db_id"]))
        return [{"role": "user", "content": f"{schema}\n\nWrite a SQLite query that answers: "
                                            f"{problem.prompt}"}]
    return [{"role": "user", "content": problem.prompt}]


def raw_answer(engine: Any, problem: Problem, data_dir: Path, max_new_tokens: int = 384
               ) -> tuple[str, float]:
    from qcoder_ds.runtime.sampler import SamplingParams

    t = time.perf_counter()
    stream = engine.chat(raw_messages(problem, data_dir),
                         SamplingParams(max_new_tokens=max_new_tokens))
    text = ""
    for piece in stream:  # stop once the first code block is closed: the rest is prose
        text += piece
        first = text.find("```")
        if first >= 0 and text.find("```", first + 3) >= 0:
            break
    close = getattr(stream, "close", None)
    if close:
        close()
    code = extract_sql(text) if problem.category == "spider" else extract_code(text, "python")
    return code, time.perf_counter() - t


def pipeline_steps(ans: Any, spider: bool) -> list[dict[str, Any]]:
    """Every answer the pipeline tried for one problem, in order (first-round candidates,
    then repairs), each as the model wrote it, as checked, and whether its checks passed: an
    ablation (no repairs, no extra candidates, no fixes) is then graded from one run's
    answers file instead of a run per part (``benchmarks/pipeline_ablation.py``)."""
    out, seen = [], set()
    steps = [("candidate", a) for a in ans.candidates] + \
        [("repair", a) for a in [*ans.attempts[1:], *ans.example_repairs]]
    for stage, a in steps:
        if id(a) in seen:
            continue
        seen.add(id(a))
        checked = (a.sql or "") if spider else a.code
        written = extract_sql(a.answer) if spider else extract_code(a.answer, "python")
        out.append({"stage": stage, "code": checked, "written": written,
                    "passed_checks": a.passed})
    return out


def pipeline_answer(copilot: Any, problem: Problem, data_dir: Path, repairs: int,
                    samples: int | None = None) -> Any:
    """The copilot's Answer to one problem, asked the way a notebook user would (``samples``
    None is the pipeline's default); its ``total_s`` includes setting up the problem's data.
    :func:`pipeline_steps` lists every answer it tried."""
    from qcoder_ds.copilot.pipeline import Options
    from qcoder_ds.copilot.tasks import Task

    t = time.perf_counter()
    if problem.category == "spider":
        db = spider_db(data_dir, problem.extra["db_id"])
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
        try:
            ans = copilot.ask(problem.prompt, {"conn": conn},
                              Options(task=Task.SQL, repairs=repairs, samples=samples or 1))
        finally:
            conn.close()
        ans.total_s = time.perf_counter() - t
        return ans
    ans = copilot.ask(ds1000_request(problem), ds1000_namespace(problem),
                      ds1000_options(problem, repairs=repairs, samples=samples or 1))
    ans.total_s = time.perf_counter() - t
    return ans


def ds1000_namespace(problem: Problem) -> dict[str, Any]:
    """A kernel namespace holding what the problem's own setup code defines."""
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict[str, Any] = {}
    exec(compile(ds1000_setup(problem), f"<setup {problem.id}>", "exec"),  # noqa: S102
         namespace)  # benchmark data, as a user's earlier cells
    import matplotlib.pyplot as plt

    plt.close("all")
    return namespace


def ds1000_options(problem: Problem, **kwargs: Any) -> Any:
    """The copilot's options for a DS-1000 problem: its task and the variable it grades."""
    from qcoder_ds.copilot.pipeline import Options
    from qcoder_ds.copilot.tasks import Task

    task = Task.PLOT if problem.category == "matplotlib" else Task.PANDAS
    return Options(task=task, result_name=result_variable(problem), **kwargs)


# --------------------------------------------------------------------------- the run


@dataclass
class SystemScore:
    passed: int = 0
    executed: int = 0
    total: int = 0
    failing: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    repaired: int = 0  # answers that needed at least one repair round
    repaired_passed: int = 0
    reordered: int = 0  # Spider answers right only with their columns in another order
    marked_ok: int = 0  # answers the pipeline's checks called ok
    marked_ok_failed: int = 0  # ... that fail the hidden tests: false confidence

    def add(self, problem_id: str, row: dict[str, Any]) -> None:
        """Count one graded answer (a line of the answers file)."""
        self.total += 1
        self.seconds.append(row["seconds"])
        self.passed += row["passed"]
        self.executed += row["executed"]
        self.repaired += row["repairs"] > 0
        self.repaired_passed += row["repairs"] > 0 and row["passed"]
        self.reordered += row["passed"] and row["error"] == REORDERED
        if row.get("checked_ok"):  # recorded by runs that keep the pipeline's verdict
            self.marked_ok += 1
            self.marked_ok_failed += not row["passed"]
        if not row["passed"]:
            self.failing.append(problem_id)

    def as_dict(self) -> dict[str, Any]:
        secs = sorted(self.seconds)
        d = {"passed": self.passed, "total": self.total,
             "pass_rate": round(self.passed / self.total, 4) if self.total else None,
             "executed": self.executed,
             "exec_rate": round(self.executed / self.total, 4) if self.total else None,
             "failing": self.failing,
             "median_s": round(secs[len(secs) // 2], 2) if secs else None}
        if self.reordered:
            d["passed_with_columns_reordered"] = self.reordered
        if self.repaired or self.repaired_passed:
            d.update(needed_repair=self.repaired, repaired_and_passed=self.repaired_passed)
        if self.marked_ok:
            d.update(marked_ok=self.marked_ok, marked_ok_failed=self.marked_ok_failed,
                     false_confidence=round(self.marked_ok_failed / self.marked_ok, 4))
        return d


def reference_ok(problem: Problem, cache: dict[str, bool], timeout_s: float) -> bool:
    if problem.id not in cache:
        cache[problem.id] = grade_ds1000(problem, problem.reference, timeout_s)[0]
    return cache[problem.id]


def evaluate(data_dir: Path, categories: list[str], n: int | None | dict[str, int], seed: int,
             systems: list[str], engine: Any, copilot: Any, repairs: int = 2,
             timeout_s: float = 60.0, log: Callable[[str], None] = print,
             reference_cache: Path | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None,
             details: Path | None = None, samples: int | None = None,
             done: dict[tuple[str, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run ``systems`` ("raw", "pipeline") on ``n`` problems a category; return the report.
    With ``details``, every answer (code, verdict, error, seconds) is appended there as a JSON
    line: what to read when asking why a system fails. ``done`` holds such lines from an
    interrupted run of the same configuration (:func:`load_answers`); their problems are
    counted as recorded, not asked again, so the full split can be measured in parts."""
    if details and details.is_file() and not details.read_bytes().endswith(b"\n"):
        with details.open("a") as f:  # end the line an interruption cut short
            f.write("\n")
    cache: dict[str, bool] = {}
    if reference_cache and reference_cache.is_file():
        cache = json.loads(reference_cache.read_text())
    report: dict[str, Any] = {"categories": {}}
    sizes = n if isinstance(n, dict) else {}
    for cat in categories:
        n = sizes.get(cat) if sizes else n
        chosen, excluded, empty_gold = _problems(data_dir, cat, n, seed, cache, timeout_s)
        if reference_cache:
            reference_cache.parent.mkdir(parents=True, exist_ok=True)
            reference_cache.write_text(json.dumps(cache))
        scores = {s: SystemScore() for s in systems}
        for i, p in enumerate(chosen):
            for s in systems:
                row = (done or {}).get((p.id, s))
                if row is None:
                    row = _answer_and_grade(p, s, data_dir, engine, copilot, repairs, samples,
                                            timeout_s, log)
                    if details:
                        with details.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                scores[s].add(p.id, row)
                log(f"[{cat} {i + 1}/{len(chosen)}] {p.id} {s}: "
                    f"{'pass' if row['passed'] else 'FAIL'} ({row['seconds']:.1f}s, repairs "
                    f"{row['repairs']}) {row['error'][:120]}")
            if on_progress:  # a partial report after every problem: a long run loses nothing
                report["categories"][cat] = _entry([q.id for q in chosen[:i + 1]], excluded,
                                                   empty_gold, scores, systems, cat,
                                                   partial=True)
                on_progress(report)
        report["categories"][cat] = _entry([q.id for q in chosen], excluded, empty_gold,
                                           scores, systems, cat)
    return report


def _problems(data_dir: Path, cat: str, n: int | None, seed: int, cache: dict[str, bool],
              timeout_s: float) -> tuple[list[Problem], list[str], list[str]]:
    """The problems of ``cat`` to ask, in seeded order (``n`` of them, None: all), the ones
    left out because their reference fails here, and the Spider ones whose gold is empty."""
    problems = load_spider(data_dir) if cat == "spider" else load_ds1000(data_dir, cat)
    chosen: list[Problem] = []
    excluded: list[str] = []
    empty_gold: list[str] = []
    for p in sample(problems, None, seed):
        if n is not None and len(chosen) >= n:
            break
        if cat == "spider":
            db = spider_db(data_dir, p.extra["db_id"])
            try:
                if not run_readonly(db, p.reference):
                    empty_gold.append(p.id)
            except sqlite3.Error:
                excluded.append(p.id)
                continue
        elif not reference_ok(p, cache, timeout_s):
            excluded.append(p.id)
            continue
        chosen.append(p)
    return chosen, excluded, empty_gold


def _answer_and_grade(p: Problem, system: str, data_dir: Path, engine: Any, copilot: Any,
                      repairs: int, samples: int | None, timeout_s: float,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """One system's answer to one problem, graded: the line written to the answers file."""
    checked_ok = None  # the raw model has no checks
    steps = None
    try:
        if system == "raw":
            code, secs = raw_answer(engine, p, data_dir)
            nrep = 0
        else:
            ans = pipeline_answer(copilot, p, data_dir, repairs, samples)
            code = (ans.sql or "") if p.category == "spider" else ans.cell
            secs, nrep, checked_ok = ans.total_s, ans.repairs, ans.ok
            steps = pipeline_steps(ans, p.category == "spider")
    except CopilotError as e:
        code, secs, nrep = "", 0.0, 0
        log(f"  {p.id} {system}: {e}")
    if p.category == "spider":
        db = spider_db(data_dir, p.extra["db_id"])
        executed, ok, why = spider_match(db, p.reference, code) if code else (
            False, False, "no SQL")
    else:
        ok, why = grade_ds1000(p, as_graded(p, code), timeout_s) if code else (False, "no code")
        executed = ok or why.startswith("AssertionError")
    return {"id": p.id, "system": system, "passed": ok, "executed": executed,
            "seconds": round(secs, 2), "repairs": nrep, "error": why, "code": code,
            "checked_ok": checked_ok, **({"steps": steps} if steps is not None else {})}


def answer_rows(path: Path) -> list[dict[str, Any]]:
    """Every line of an answers file, plain or gzipped (``.gz``), as written; a line cut
    short by an interrupted run is skipped. The benchmark replays read recorded runs so."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def load_answers(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The answers an earlier run wrote, by (problem id, system); a line cut short by an
    interruption is skipped, so its problem is asked again."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            out[(row["id"], row["system"])] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return out


def _entry(done: list[str], excluded: list[str], empty_gold: list[str],
           scores: dict[str, SystemScore], systems: list[str], cat: str,
           partial: bool = False) -> dict[str, Any]:
    """The report of one category over the problems ``done`` so far."""
    entry: dict[str, Any] = {"n": len(done), "excluded_reference_fails": excluded}
    if partial:
        entry["partial"] = True
    if cat == "spider":
        empty = [e for e in empty_gold if e in set(done)]
        entry["empty_gold"] = empty
        for s in systems:
            failing = set(scores[s].failing)
            entry[f"{s}_on_empty_gold_passed"] = sum(1 for e in empty if e not in failing)
    entry.update({s: scores[s].as_dict() for s in systems})
    if "raw" in scores and "pipeline" in scores and done:
        entry["gain_points"] = round(100 * (scores["pipeline"].passed
                                            - scores["raw"].passed) / len(done), 1)
    return entry
