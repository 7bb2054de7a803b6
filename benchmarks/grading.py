"""Autograding throughput: notebooks graded per minute, ``qcoder grade`` vs ``nbgrader autograde``.

Makes an assignment with ``qcoder lessons`` (pandas selection, 2 exercises), 100 student
submissions of it (solved, half solved, wrong, untouched, in rotation), then grades the same
batch twice: with real nbgrader (``generate_assignment`` + ``autograde``, its one kernel at a
time) and with ours (``--jobs`` workers, each notebook in its own sandboxed kernel). Also
checks that both gave every cell the same score. The batch is graded in interleaved chunks
(nbgrader on ten students, then ours on the same ten, ...) so that both see the same machine
load; the JSON in benchmarks/results/ is rewritten after every chunk.

    python benchmarks/grading.py --n 100 --jobs 2 [--cores 0,1]

``--cores`` pins both runs to those CPUs (``os.sched_setaffinity``), to measure "2 cores"
on a bigger machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_SOL = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")


def make_assignment(course: Path, seed: int) -> str:
    from qcoder_ds.lessons.generate import generate

    a = generate("selection", None, 2, seed, course)
    shutil.rmtree(a.release)
    return a.name


def make_submissions(course: Path, name: str, n: int) -> None:
    from nbgrader import utils as nbutils

    release = course / "release" / name
    [nb_path] = sorted(release.glob("*.ipynb"))
    released = nbformat.read(str(nb_path), 4)
    source = nbformat.read(str(course / "source" / name / nb_path.name), 4)
    answers = {c.metadata.nbgrader["grade_id"]: "\n".join(
        line for line in c.source.split("\n") if not _SOL.match(line))
        for c in source.cells if nbutils.is_solution(c) and c.cell_type == "code"}
    first = sorted(answers)[0]
    kinds = [answers, {first: answers[first]},
             {g: "result = None" for g in answers}, {}]
    for i in range(n):
        given = kinds[i % len(kinds)]
        d = course / "submitted" / f"student{i:03d}" / name
        shutil.copytree(release, d)
        nb = copy.deepcopy(released)
        for c in nb.cells:
            gid = c.metadata.get("nbgrader", {}).get("grade_id")
            if gid in given:
                c.source = given[gid]
        nbformat.write(nb, str(d / nb_path.name))


def nbgrader(course: Path, *args: str) -> float:
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                 os.environ.get("PATH", "")]))
    exe = Path(sys.executable).with_name("nbgrader")
    t0 = time.perf_counter()
    r = subprocess.run([str(exe), *args, "--force", f"--CourseDirectory.root={course}",
                        f"--CourseDirectory.db_url=sqlite:///{course}/nbgrader.db"],
                       cwd=course, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"nbgrader {args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def nbgrader_scores(course: Path, name: str) -> dict:
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{course}/nbgrader.db") as gb:
        for sub in gb.assignment_submissions(name):
            for nbsub in sub.notebooks:
                for g in nbsub.grades:
                    out[f"{sub.student.id}/{g.cell.name}"] = g.auto_score
    return out


def _write(out: Path, result: dict) -> None:
    """Rewritten after every chunk: a long run stopped early still leaves its figures."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="submissions")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cores", help="comma-separated CPU ids to pin to, e.g. 0,1")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=10,
                    help="submissions per interleaved nbgrader/qcoder round")
    ap.add_argument("--skip-nbgrader", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grading.json"))
    args = ap.parse_args(argv)
    if args.cores:
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    import warnings

    warnings.filterwarnings("ignore")
    from qcoder_ds import isolation
    from qcoder_ds.grading.assign import assign_directory
    from qcoder_ds.grading.autograde import autograde
    from qcoder_ds.grading.gradebook import GradebookStore
    from qcoder_ds.grading.sandbox import Limits

    work = Path(tempfile.mkdtemp(prefix="qcoder-bench-grading-"))
    try:
        course = work / "course"
        course.mkdir()
        name = make_assignment(course, args.seed)
        nbgrader(course, "generate_assignment", name)
        make_submissions(course, name, args.n)
        result: dict = {
            "benchmark": "grading", "submissions": args.n, "notebooks": args.n,
            "assignment": name, "cpus": sorted(os.sched_getaffinity(0)),
            "machine": platform.machine(), "python": platform.python_version(),
            "isolation": "bubblewrap walls" if isolation.available() else "rlimits+socket block",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        ours_dir = work / "ours"
        gb = ours_dir / "gradebook.db"
        assign_directory(course / "source" / name, ours_dir / "release" / name, gb)
        students = sorted(p.name for p in (course / "submitted").iterdir())
        chunks = [students[i:i + args.chunk] for i in range(0, len(students), args.chunk)]
        t_theirs = t_ours = 0.0
        done = 0
        for chunk in chunks:
            # interleaved chunks: both tools see the same machine load, on average
            prefix = os.path.commonprefix(chunk)
            globs = [prefix + "*"] if [s for s in students if s.startswith(prefix)] == chunk \
                else chunk
            if not args.skip_nbgrader:
                for g in globs:
                    t_theirs += nbgrader(course, "autograde", name,
                                         f"--CourseDirectory.student_id={g}")
            t0 = time.perf_counter()
            summary = autograde(course / "submitted", name, gb, students=chunk,
                                out_dir=ours_dir / "autograded", jobs=args.jobs,
                                limits=Limits(cell_timeout=60, notebook_timeout=300))
            t_ours += time.perf_counter() - t0
            done += len(chunk)
            result["submissions_graded"] = done
            result["notebooks"] = done
            result["loadavg_1min"] = round(os.getloadavg()[0], 2)
            with GradebookStore(gb) as store:
                ours = {f"{c['student']}/{c['grade_id']}": c["score"]
                        for c in store.cell_results(name)
                        if c["kind"] in ("test", "manual", "task")}
            result["qcoder"] = {"seconds": round(t_ours, 2), "jobs": args.jobs,
                                "notebooks_per_minute": round(60 * done / t_ours, 2),
                                "failed": len(summary.failed)}
            if not args.skip_nbgrader:
                theirs = nbgrader_scores(course, name)
                result["nbgrader"] = {"seconds": round(t_theirs, 2), "jobs": 1,
                                      "notebooks_per_minute": round(60 * done / t_theirs, 2)}
                same = sum(1 for k, v in theirs.items() if ours.get(k) == v)
                result["cells_compared"] = len(theirs)
                result["cells_identical"] = same
                result["scores_identical"] = same == len(theirs) and set(ours) == set(theirs)
                result["speedup_vs_nbgrader"] = round(t_theirs / t_ours, 3)
            _write(Path(args.out), result)
            print(f"{done}/{len(students)}: {json.dumps(result)}", flush=True)
        print(json.dumps(result, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
