"""What the operating-system walls cost: the same work walled (bubblewrap) and not, in one run.

Three measurements, each as a ratio walled / unwalled on the same machine, interleaved so
both see the same load:

- a copilot check (``Sandbox.run`` of a small pandas cell, spare child warm), median seconds;
- a cold check child (start to "ready": Python, pandas and matplotlib imported), median;
- one student notebook graded (kernel start, cells, guards, shutdown), median seconds.

    python benchmarks/isolation.py --runs 15

Results: benchmarks/results/isolation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "grading"))

from qcoder_ds import isolation  # noqa: E402
from qcoder_ds.copilot.sandbox import Limits, Sandbox  # noqa: E402

CELL = "sales.groupby('region')['revenue'].sum()"


def _walls(on: bool) -> None:
    """Force the walls on or off for the sandboxes made after this call."""
    off = lambda: "switched off for the benchmark"  # noqa: E731
    isolation.unavailable_reason = _REAL if on else off  # type: ignore[assignment]


_REAL = isolation.unavailable_reason


def check_times(walled: bool, runs: int, data: pd.DataFrame) -> tuple[list[float], list[float]]:
    _walls(walled)
    box = Sandbox(Limits(timeout_s=30))
    warm, cold = [], []
    try:
        box.run(CELL, {"sales": data})  # the first run starts the spare for the next
        for _ in range(runs):
            t = time.perf_counter()
            r = box.run(CELL, {"sales": data})
            warm.append(time.perf_counter() - t)
            assert r.ok, r.error
            t = time.perf_counter()
            child = box._start(())
            box._wait_ready(child.proc)
            cold.append(time.perf_counter() - t)
            from qcoder_ds.copilot.sandbox import _discard

            _discard(child)
    finally:
        box.close()
    return warm, cold


def grade_time(walled: bool) -> float:
    from helpers import student_copy, write_source, write_submission

    from qcoder_ds.grading.assign import assign_directory
    from qcoder_ds.grading.autograde import autograde
    from qcoder_ds.grading.sandbox import Limits as GradeLimits

    _walls(walled)
    with tempfile.TemporaryDirectory() as d:
        course = Path(d)
        gb = course / "gradebook.db"
        assign_directory(write_source(course), course / "release" / "adder", gb)
        released = nbformat.read(str(course / "release" / "adder" / "problem.ipynb"), 4)
        write_submission(course / "submitted", "s1",
                         student_copy(released, "def add(a, b):\n    return a + b"))
        t = time.perf_counter()
        s = autograde(course / "submitted", "adder", gb, jobs=1,
                      limits=GradeLimits(reduced_isolation=not walled))
        assert s.graded == ["s1"], s
        return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "isolation.json"))
    args = ap.parse_args()
    if _REAL() is not None:
        print(f"no walls on this machine: {_REAL()}", file=sys.stderr)
        return 1
    data = pd.read_csv(ROOT / "examples" / "data" / "sales.csv")
    res: dict = {"warm_check_s": {}, "cold_child_s": {}, "grade_notebook_s": {}}
    for walled in (False, True, False, True):  # interleaved: both see the same load
        key = "walled" if walled else "unwalled"
        warm, cold = check_times(walled, args.runs // 2 or 1, data)
        res["warm_check_s"].setdefault(key, []).extend(warm)
        res["cold_child_s"].setdefault(key, []).extend(cold)
        res["grade_notebook_s"].setdefault(key, []).append(grade_time(walled))
    out = {"benchmark": "isolation", "runs": args.runs, "root": isolation.as_root(),
           "bwrap": isolation.bwrap_path(), "machine": platform.machine(),
           "python": platform.python_version(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for name, by in res.items():
        med = {k: round(statistics.median(v), 4) for k, v in by.items()}
        out[name] = {**med, "ratio": round(med["walled"] / med["unwalled"], 3),
                     "samples": {k: [round(x, 4) for x in v] for k, v in by.items()}}
        print(f"{name}: walled {med['walled']:.3f} s, unwalled {med['unwalled']:.3f} s, "
              f"ratio {out[name]['ratio']:.2f}")
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
