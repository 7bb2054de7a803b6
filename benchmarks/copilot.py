"""Copilot latency: time to first token and time to a checked cell, median and p90.

Runs the full pipeline (context, prompt, embedded model, validation, sandboxed check, repairs)
on a fixed list of development requests against examples/data/sales.csv (as ``sales``) and a
SQLite copy of it (as ``conn``), as a notebook user would ask them. Writes
benchmarks/results/copilot-latency.json.

    .venv/bin/python benchmarks/copilot.py [--threads 2] [--limit N] [--model NAME]
        [--context-tokens N] [--drafter auto|none|NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REQUESTS = [  # (request, task flag or None); a mix of the three kinds, in a fixed order
    ("total revenue per region", None),
    ("revenue per region for 2023 as a bar chart, largest first", None),
    ("average units per product", None),
    ("the 5 orders with the largest revenue", None),
    ("number of orders per sales rep", "sql"),
    ("monthly revenue as a line chart", None),
    ("which product has the highest average unit price", "sql"),
    ("share of revenue per region in percent", None),
]


def percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="catalogue name (default: the embedded one)")
    ap.add_argument("--limit", type=int, default=None, help="first N requests only")
    ap.add_argument("--context-tokens", type=int, default=None,
                    help="the prompt's budget for the kernel context (default: the pipeline's)")
    ap.add_argument("--drafter", default="auto",
                    help="speculative decoding's drafter (Engine.load's drafter=; default auto)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/copilot-latency.json")
    args = ap.parse_args()

    import pandas as pd

    from qcoder_ds.copilot.pipeline import Copilot, Options
    from qcoder_ds.copilot.tasks import Task
    from qcoder_ds.engine import Engine
    from qcoder_ds.models.choice import default_model

    sales = pd.read_csv(ROOT / "examples/data/sales.csv", parse_dates=["order_date"])
    tmp = Path(tempfile.mkdtemp(prefix="qcoder-bench-"))
    conn = sqlite3.connect(tmp / "sales.sqlite")
    sales.to_sql("orders", conn, index=False)
    ns = {"sales": sales, "conn": conn, "pd": pd}

    t0 = time.perf_counter()
    args.model = args.model or default_model().name
    engine = Engine.load(args.model, threads=args.threads, progress=False, drafter=args.drafter)
    load_s = time.perf_counter() - t0
    copilot = Copilot(engine, model=args.model)
    rows = []
    seen: set[str] = set()
    for request, flag in REQUESTS[: args.limit]:
        task = Task(flag) if flag else None
        options = Options(task=task)
        if args.context_tokens:
            options.context_tokens = args.context_tokens
        ans = copilot.ask(request, ns, options)
        # the first request of its kind prefills the whole prompt; later ones find the
        # instructions and the data's description in a kept KV cache
        first = ans.task.value not in seen
        seen.add(ans.task.value)
        rows.append({"request": request, "task": ans.task.value, "first_of_kind": first,
                     "ok": ans.ok,
                     "repairs": ans.repairs, "first_token_s": round(ans.first_token_s or 0, 2),
                     "checked_cell_s": round(ans.total_s, 2), "checks": ans.checks})
        print(f"{ans.total_s:6.1f}s first {ans.first_token_s or 0:5.1f}s ok={ans.ok} "
              f"repairs={ans.repairs} {request}", flush=True)
        write(args.out, summary(rows, engine, args, load_s))  # after every request
    if copilot.sandbox is not None:
        copilot.sandbox.close()
    result = summary(rows, engine, args, load_s, partial=False)
    write(args.out, result)
    print(json.dumps({k: result[k] for k in ("first_token_s", "checked_cell_s",
                                              "checked_cell_s_first_of_kind",
                                              "checked_cell_s_later", "passed_checks",
                                              "needed_repair")}))
    return 0


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".json.tmp")
    part.write_text(json.dumps(result, indent=2))
    part.replace(out)


def summary(rows: list[dict], engine, args, load_s: float, partial: bool = True) -> dict:
    from qcoder_ds.copilot.pipeline import Options

    ftt = [r["first_token_s"] for r in rows]
    tot = [r["checked_cell_s"] for r in rows]
    result = {
        "benchmark": "copilot latency (pipeline)",
        "model": args.model, "backend": engine.backend,
        "weights": engine.weights, "threads": args.threads, "load_s": round(load_s, 2),
        "drafter": engine.drafter_name,
        "context_tokens": args.context_tokens or Options().context_tokens,
        "requests": len(rows),
        "first_token_s": {"median": round(statistics.median(ftt), 2),
                          "p90": round(percentile(ftt, 0.9), 2)},
        "checked_cell_s": {"median": round(statistics.median(tot), 2),
                           "p90": round(percentile(tot, 0.9), 2)},
        "checked_cell_s_first_of_kind": _median([r["checked_cell_s"] for r in rows
                                                  if r["first_of_kind"]]),
        "checked_cell_s_later": _median([r["checked_cell_s"] for r in rows
                                         if not r["first_of_kind"]]),
        "passed_checks": sum(r["ok"] for r in rows),
        "needed_repair": sum(r["repairs"] > 0 for r in rows),
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_now": os.getloadavg()[0]},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if partial:
        result["partial"] = True
    return result


if __name__ == "__main__":
    sys.exit(main())
