"""What the copilot's checks say now about answers an earlier `qcoder eval` run recorded.

A check is worth adding when it fails answers that are wrong and passes answers that are
right. `qcoder eval` records, for every pipeline answer, the final cell, whether the checks
of that day called it ok, and whether it passed the hidden tests. This puts each recorded
final cell through today's checks again (`Copilot.check`: the same fixes, sandbox run and
rules as `Copilot.ask`, no model call) and counts, per category:

- ``ok then`` / ``ok then, wrong``: the recorded verdicts (false confidence then);
- ``ok now`` / ``ok now, wrong``: today's verdicts on the same cells (false confidence now);
- ``caught``: answers ok then, not ok now, that fail the hidden tests (what a new check buys);
- ``false alarms``: answers ok then, not ok now, that pass them (what it costs: in a run, a
  repair that may lose a right answer);
- which check failed each answer it no longer calls ok;
- ``changed by fixes``: cells today's fixes rewrite (a SQL value respelled, a line dropped),
  graded again: ``fixed (now passes)`` and ``broken (now fails)``; the counts above then use
  the new grade.

It cannot say what a repair would then have written: that takes a model run.
``--without-changed`` writes the answers file without the pipeline rows of the problems whose
verdict (or cell) today's checks change, so that ``qcoder eval --resume`` asks just those
again, and the run's report is then the full split with today's pipeline where it matters.

    python benchmarks/checks_replay.py --data-dir DIR \\
        benchmarks/results/eval-1.5b-full-matplotlib-pipeline-v2.answers.jsonl.gz \\
        --out benchmarks/results/checks-replay-1.5b-matplotlib.json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from qcoder_ds.copilot import evaluation as ev
from qcoder_ds.copilot.pipeline import Copilot, Options
from qcoder_ds.copilot.tasks import Task


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The pipeline rows of an answers file (plain or gzipped) that recorded a verdict."""
    return [r for r in ev.answer_rows(path)
            if r.get("system") == "pipeline" and r.get("checked_ok") is not None]


def verdict_now(copilot: Copilot, problem: ev.Problem, code: str, data_dir: Path
                ) -> tuple[bool, list[str], str]:
    """(ok, the checks that failed, the cell or query as today's fixes leave it) for ``code``
    as the answer to ``problem`` today."""
    if not code.strip():
        return False, ["no code"], code
    if problem.category == "spider":
        db = ev.spider_db(data_dir, problem.extra["db_id"])
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
        try:
            ans = copilot.check(problem.prompt, {"conn": conn}, code, Options(task=Task.SQL))
        finally:
            conn.close()
    else:
        ans = copilot.check(ev.ds1000_request(problem), ev.ds1000_namespace(problem), code,
                            ev.ds1000_options(problem))
    fixed = (ans.sql or "") if problem.category == "spider" else ans.cell
    return ans.ok, [k for k, v in ans.checks.items() if v in ("failed", "not found")], fixed


def passes(problem: ev.Problem, code: str, data_dir: Path) -> bool:
    """Whether ``code`` passes the problem's hidden tests (Spider: its gold result)."""
    if not code.strip():
        return False
    if problem.category == "spider":
        db = ev.spider_db(data_dir, problem.extra["db_id"])
        return ev.spider_match(db, problem.reference, code)[1]
    return ev.grade_ds1000(problem, ev.as_graded(problem, code))[0]


def replay(rows: list[dict[str, Any]], problems: dict[str, ev.Problem], data_dir: Path,
           log: Any = print) -> dict[str, Any]:
    copilot = Copilot(None)  # type: ignore[arg-type] - checks only: no model is called
    per_cat: dict[str, Counter] = {}
    failed_by: dict[str, Counter] = {}
    changed: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        p = problems[row["id"]]
        ok_now, failed, fixed = verdict_now(copilot, p, row["code"], data_dir)
        c = per_cat.setdefault(p.category, Counter())
        c["answers"] += 1
        c["ok then"] += bool(row["checked_ok"])
        c["ok then, wrong"] += bool(row["checked_ok"]) and not row["passed"]
        if fixed.strip() != row["code"].strip():  # today's fixes changed it: grade it again
            passed_now = passes(p, fixed, data_dir)
            c["changed by fixes"] += 1
            c["fixed (now passes)"] += passed_now and not row["passed"]
            c["broken (now fails)"] += row["passed"] and not passed_now
            row = dict(row, passed=passed_now)
        c["ok now"] += ok_now
        c["ok now, wrong"] += ok_now and not row["passed"]
        if row["checked_ok"] and not ok_now:
            c["caught" if not row["passed"] else "false alarms"] += 1
            for name in failed:
                failed_by.setdefault(p.category, Counter())[
                    f"{name} ({'caught' if not row['passed'] else 'false alarm'})"] += 1
        if bool(row["checked_ok"]) != ok_now or fixed.strip() != row["code"].strip():
            changed.append({"id": row["id"], "passed_hidden_tests": row["passed"],
                            "ok_then": bool(row["checked_ok"]), "ok_now": ok_now,
                            "failed_checks": failed})
        log(f"[{i + 1}/{len(rows)}] {row['id']}: ok then {bool(row['checked_ok'])}, now "
            f"{ok_now}, hidden tests {'pass' if row['passed'] else 'FAIL'}"
            + (f" ({', '.join(failed)})" if failed and not ok_now else ""))
    out: dict[str, Any] = {}
    for cat, c in per_cat.items():
        entry = dict(c)
        for when in ("then", "now"):
            ok = c[f"ok {when}"]
            entry[f"false confidence {when}"] = round(c[f"ok {when}, wrong"] / ok, 4) if ok \
                else None
        entry["failed checks"] = dict(failed_by.get(cat, Counter()).most_common())
        out[cat] = entry
    return {"categories": out, "changed": changed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("answers", type=Path, nargs="+", help="answers files of `qcoder eval`")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--without-changed", type=Path, metavar="ANSWERS",
                    help="also write the answers without the pipeline rows of the changed "
                         "problems (plain JSON lines), for `qcoder eval --resume` to ask them "
                         "again with today's pipeline")
    args = ap.parse_args(argv)
    rows = [r for path in args.answers for r in read_rows(path)]
    cats = {r["id"].split("/")[0] for r in rows}
    problems = {p.id: p for cat in cats for p in (
        ev.load_spider(args.data_dir) if cat == "spider" else ev.load_ds1000(args.data_dir, cat))}
    t = time.perf_counter()
    report = replay(rows, problems, args.data_dir)
    report["config"] = {"answers": [str(p) for p in args.answers],
                        "seconds": round(time.perf_counter() - t, 1)}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.without_changed:
        again = {c["id"] for c in report["changed"]}
        kept = [r for path in args.answers for r in ev.answer_rows(path)
                if not (r.get("system") == "pipeline" and r["id"] in again)]
        args.without_changed.write_text("".join(json.dumps(r) + "\n" for r in kept))
    print(json.dumps(report["categories"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
