"""Grading throughput on Dask: a ``distributed.LocalCluster`` of 1 and of 2 worker processes
against the local process pool (``--jobs 2``), on the same submissions, one run each.

Makes the pandas assignment of ``benchmarks/grading.py`` (``qcoder lessons``, 2 exercises)
and ``--n`` submissions of it (solved, half solved, wrong, untouched, in rotation), grades
them three times into fresh gradebooks, and checks that every cell scored the same in all
three. Cluster start-up is timed apart from grading (a class's cluster is started once).
On one 2-core machine the workers and the pool share the same cores, so the figures say what
the Dask path costs over the pool, not what a room of machines gains.

    python benchmarks/grading_dask.py --n 16 [--out benchmarks/results/grading-dask.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _grading_bench():
    """benchmarks/grading.py, for its assignment and submissions (one course, two scripts)."""
    spec = importlib.util.spec_from_file_location("bench_grading", ROOT / "benchmarks" /
                                                  "grading.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="submissions")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "grading-dask.json"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from distributed import LocalCluster

    from qcoder_ds import isolation
    from qcoder_ds.grading.assign import assign_directory
    from qcoder_ds.grading.autograde import autograde
    from qcoder_ds.grading.gradebook import GradebookStore
    from qcoder_ds.grading.sandbox import Limits

    bench = _grading_bench()
    work = Path(tempfile.mkdtemp(prefix="qcoder-bench-dask-"))
    limits = Limits(cell_timeout=60, notebook_timeout=300)
    try:
        course = work / "course"
        course.mkdir()
        name = bench.make_assignment(course, args.seed)
        # the release the submissions copy: ours, as in a course graded with qcoder only
        assign_directory(course / "source" / name, course / "release" / name,
                         work / "assign.db")
        bench.make_submissions(course, name, args.n)
        result: dict = {
            "benchmark": "grading on dask", "submissions": args.n, "assignment": name,
            "cpus": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(),
            "isolation": "bubblewrap walls" if isolation.available() else "none",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "loadavg_1min_start": round(os.getloadavg()[0], 2), "runs": {},
        }
        scores: dict[str, dict] = {}
        for label, workers in (("local pool -j 2", None), ("dask 1 worker", 1),
                               ("dask 2 workers", 2)):
            run_dir = work / label.replace(" ", "_")
            run_dir.mkdir()
            gb = run_dir / "gradebook.db"
            shutil.copyfile(work / "assign.db", gb)
            start_s = 0.0
            cluster = None
            if workers:
                t0 = time.perf_counter()
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                       processes=True, dashboard_address=":0")
                start_s = time.perf_counter() - t0
            try:
                t0 = time.perf_counter()
                s = autograde(course / "submitted", name, gb, out_dir=run_dir / "autograded",
                              jobs=2, limits=limits,
                              dask=cluster.scheduler_address if cluster else None)
                seconds = time.perf_counter() - t0
            finally:
                if cluster is not None:
                    cluster.close(timeout=30)
            with GradebookStore(gb) as store:
                scores[label] = {f"{c['student']}/{c['grade_id']}": c["score"]
                                 for c in store.cell_results(name)}
            result["runs"][label] = {
                "workers": workers or 2, "seconds": round(seconds, 2),
                "cluster_start_s": round(start_s, 2),
                "notebooks_per_minute": round(60 * len(s.graded) / seconds, 2),
                "graded": len(s.graded), "failed": len(s.failed),
                "loadavg_1min_after": round(os.getloadavg()[0], 2)}
            print(label, result["runs"][label], flush=True)
            _write(Path(args.out), result)
        base = result["runs"]["local pool -j 2"]["notebooks_per_minute"]
        result["throughput_vs_local_pool"] = {
            k: round(v["notebooks_per_minute"] / base, 3) for k, v in result["runs"].items()}
        ref = scores["local pool -j 2"]
        result["same_scores_as_local_pool"] = all(v == ref for v in scores.values())
        result["cells_compared"] = len(ref)
        _write(Path(args.out), result)
        print(json.dumps({k: result[k] for k in ("throughput_vs_local_pool",
                                                 "same_scores_as_local_pool",
                                                 "cells_compared")}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
