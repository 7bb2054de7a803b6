"""What each part of the copilot's pipeline adds, graded from one `qcoder eval` run.

`qcoder eval` writes, for every pipeline answer, each answer the pipeline tried (``steps``:
first-round candidates, then repairs), as the model wrote it and as checked. This grades the
answers the pipeline would have given without some of its parts, on the same hidden tests:

- ``final``: what the pipeline gave (as recorded);
- ``first answer``: the first candidate as checked: no extra candidates (the search for an
  answer that gives the request's example) and no repairs;
- ``first answer, as written``: the same, without the Python fixes either (the code block the
  model wrote).

Each line gives the pass count and, for the variants whose checks are known, how many the
checks marked ok and how many of those fail (false confidence). The prompt and context cannot
be ablated this way (they change what the model writes): those need a run each.

    python benchmarks/pipeline_ablation.py --data-dir DIR \
        benchmarks/results/eval-1.5b-full-matplotlib.answers.jsonl \
        --out benchmarks/results/ablation-1.5b-matplotlib.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qcoder_ds.copilot import evaluation as ev

VARIANTS = ("final", "first answer", "first answer, as written")


def read_answers(path: Path) -> list[dict[str, Any]]:
    """The pipeline rows of an answers file (plain or gzipped) that recorded their steps."""
    return [r for r in ev.answer_rows(path) if r.get("system") == "pipeline" and r.get("steps")]


def variants(row: dict[str, Any]) -> dict[str, tuple[str, bool | None]]:
    """Each variant's answer and whether the pipeline's checks passed it (None: not known)."""
    first = row["steps"][0]
    return {"final": (row["code"], row.get("checked_ok")),
            "first answer": (first["code"], first["passed_checks"]),
            "first answer, as written": (first["written"], None)}


def grade(problem: ev.Problem, code: str, data_dir: Path, timeout_s: float) -> bool:
    if not code:
        return False
    if problem.category == "spider":
        db = ev.spider_db(data_dir, problem.extra["db_id"])
        return ev.spider_match(db, problem.reference, code)[1]
    return ev.grade_ds1000(problem, ev.as_graded(problem, code), timeout_s)[0]


def ablate(rows: list[dict[str, Any]], problems: dict[str, ev.Problem], data_dir: Path,
           timeout_s: float = 60.0) -> dict[str, Any]:
    """Pass counts and false confidence per category and variant. The recorded final answer
    is not graded again: its recorded verdict counts."""
    out: dict[str, Any] = {}
    for row in rows:
        problem = problems.get(row["id"])
        if problem is None:
            continue
        cat = out.setdefault(problem.category, {"n": 0, **{v: {"passed": 0, "marked_ok": 0,
                                                               "marked_ok_failed": 0}
                                                           for v in VARIANTS}})
        cat["n"] += 1
        for name, (code, checked) in variants(row).items():
            passed = bool(row["passed"]) if name == "final" else \
                grade(problem, code, data_dir, timeout_s)
            score = cat[name]
            score["passed"] += passed
            if checked is None:
                score["marked_ok"] = score["marked_ok_failed"] = None
            elif checked and score["marked_ok"] is not None:
                score["marked_ok"] += 1
                score["marked_ok_failed"] += not passed
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("answers", type=Path, help="a `qcoder eval` answers file (.jsonl or .gz)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    rows = read_answers(args.answers)
    if not rows:
        print(f"{args.answers}: no pipeline answers with recorded steps", file=sys.stderr)
        return 2
    cats = {r["id"].split("/")[0] for r in rows}
    problems: dict[str, ev.Problem] = {}
    for cat in cats:
        loaded = ev.load_spider(args.data_dir) if cat == "spider" else \
            ev.load_ds1000(args.data_dir, cat)
        problems.update((q.id, q) for q in loaded)
    report = {"answers": args.answers.name,
              "categories": ablate(rows, problems, args.data_dir, args.timeout)}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
