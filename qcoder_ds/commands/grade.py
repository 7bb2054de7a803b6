"""`qcoder grade assign|autograde|feedback|export`: nbgrader-compatible grading."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

DEFAULT_GRADEBOOK = "gradebook.db"


def _add_gradebook(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gradebook", default=DEFAULT_GRADEBOOK,
                   help="SQLite gradebook (nbgrader's schema; default: ./gradebook.db)")


def register(subparsers) -> None:
    grade = subparsers.add_parser(
        "grade", help="release, autograde and give feedback on nbgrader-style assignments",
        description="nbgrader-compatible grading: release an assignment, autograde a class's "
                    "submissions in sandboxed kernels, write feedback, export grades.")
    sub = grade.add_subparsers(dest="grade_command", metavar="ACTION")
    grade.set_defaults(func=lambda args: (grade.print_help(), 2)[1])

    a = sub.add_parser("assign", help="release an assignment (nbgrader generate_assignment)")
    a.add_argument("source_dir", help="folder of source notebooks (with solutions and tests)")
    a.add_argument("-o", "--output", required=True, help="release folder to write")
    a.add_argument("--name", help="assignment name (default: the source folder's name)")
    a.add_argument("--header", help="notebook whose cells go first in every notebook")
    a.add_argument("--footer", help="notebook whose cells go last in every notebook")
    _add_gradebook(a)
    a.set_defaults(func=_assign)

    g = sub.add_parser("autograde", help="grade submissions (nbgrader's submitted/ layout)")
    g.add_argument("submissions_dir", help="SUBMISSIONS/<student>/<assignment>/*.ipynb")
    g.add_argument("--assignment", required=True, help="assignment name")
    g.add_argument("-o", "--output", help="autograded notebooks go here "
                   "(default: autograded/ beside SUBMISSIONS_DIR)")
    g.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1,
                   help="submissions graded in parallel (default: CPU count)")
    g.add_argument("--dask", metavar="SCHEDULER",
                   help="grade on a Dask cluster (e.g. tcp://lab-pc:8786; default: "
                        "$QCODER_DASK_SCHEDULER, else the local process pool); workers need "
                        "the course folder at the same path and bubblewrap")
    g.add_argument("--cell-timeout", type=float, default=30.0, help="seconds per cell")
    g.add_argument("--notebook-timeout", type=float, default=300.0,
                   help="seconds per notebook")
    g.add_argument("--memory-mb", type=int, default=2048,
                   help="memory per kernel (MiB of heap and anonymous mappings)")
    g.add_argument("--output-limit", type=int, default=10_000_000,
                   help="bytes of output per notebook before its kernel is stopped")
    g.add_argument("--reduced-isolation", action="store_true",
                   help="grade even where the kernels cannot be walled in (no bubblewrap or "
                        "no user namespaces): resource limits only, and every report says so")
    g.add_argument("--student", action="append", help="grade only this student (repeatable)")
    g.add_argument("--force", "-f", action="store_true",
                   help="regrade every submission (by default one is regraded only when its "
                        "files or timestamp changed since it was graded)")
    _add_gradebook(g)
    g.set_defaults(func=_autograde)

    f = sub.add_parser("feedback", help="per-student HTML and Markdown feedback")
    f.add_argument("--assignment", required=True)
    f.add_argument("--autograded", default="autograded",
                   help="folder of autograded notebooks (default: ./autograded)")
    f.add_argument("-o", "--output", default="feedback", help="default: ./feedback")
    f.add_argument("--student", action="append")
    _add_gradebook(f)
    f.set_defaults(func=_feedback)

    e = sub.add_parser("export", help="export grades (nbgrader's CSV columns, or JSON)")
    e.add_argument("--format", choices=["csv", "json"], default="csv")
    e.add_argument("--assignment", action="append", help="only this assignment (repeatable)")
    e.add_argument("-o", "--output", help="file to write (default: standard output)")
    _add_gradebook(e)
    e.set_defaults(func=_export)


def _quiet() -> None:
    warnings.filterwarnings("ignore", module="nbgrader")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from sqlalchemy.exc import SAWarning

        warnings.filterwarnings("ignore", category=SAWarning)
    except ImportError:
        pass


def _assign(args) -> int:
    _quiet()
    from qcoder_ds.grading.assign import assign_directory

    written = assign_directory(args.source_dir, args.output, args.gradebook, name=args.name,
                               header=args.header, footer=args.footer)
    nbs = [p for p in written if p.suffix == ".ipynb"]
    print(f"released {len(nbs)} notebook(s) to {args.output}; recorded in {args.gradebook}")
    return 0


def _autograde(args) -> int:
    _quiet()
    from qcoder_ds.grading.autograde import autograde
    from qcoder_ds.grading.dask_batch import scheduler_address
    from qcoder_ds.grading.sandbox import Limits

    limits = Limits(cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout,
                    memory_mb=args.memory_mb, output_bytes=args.output_limit,
                    reduced_isolation=args.reduced_isolation)

    s = autograde(args.submissions_dir, args.assignment, args.gradebook, out_dir=args.output,
                  jobs=max(1, args.jobs), limits=limits, force=args.force,
                  students=args.student, on_result=_show,
                  dask=scheduler_address(args.dask))
    if not (s.graded or s.skipped or s.failed or s.empty):
        print(f"warning: no submissions of {args.assignment} under {args.submissions_dir} "
              f"(expected {args.submissions_dir}/<student>/{args.assignment}/*.ipynb)",
              file=sys.stderr)
    print(f"graded {len(s.graded)}, already graded {len(s.skipped)}, failed {len(s.failed)}"
          + (f", no notebook yet {len(s.empty)} ({', '.join(s.empty)})" if s.empty else "")
          + f" in {s.seconds:.1f} s")
    for student, why in s.failed.items():
        print(f"  {student}: {why.splitlines()[0]}", file=sys.stderr)
    return 1 if s.failed else 0


def _show(result: dict) -> None:
    """One line per graded student, then what the instructor should know: problems with the
    submission's files and grading the notebook interfered with (undone)."""
    total = sum((c["score"] or 0.0) for n in result["notebooks"] for c in n["cells"]
                if c["kind"] in ("test", "manual", "task"))
    worst = [f"{n['notebook']}: {n['reason']}" for n in result["notebooks"] if n["reason"]]
    reduced = " [" + result["isolation"] + "]" if "REDUCED" in result["isolation"] else ""
    print(f"{result['student']}: {total:g} points"
          + (f" ({'; '.join(worst)})" if worst else "") + reduced, flush=True)
    notes = list(result.get("problems", []))
    notes += [f"{n['notebook']}: {e}" for n in result["notebooks"] for e in n["events"]
              if "interfered with grading" in e]
    for note in notes:
        print(f"  note: {note}", flush=True)


def _feedback(args) -> int:
    _quiet()
    from qcoder_ds.grading.feedback import write_feedback

    written = write_feedback(args.gradebook, args.assignment, args.autograded, args.output,
                             students=args.student)
    print(f"wrote {len(written)} feedback file(s) under {args.output}")
    return 0


def _export(args) -> int:
    _quiet()
    from qcoder_ds.grading.export import export_grades

    text = export_grades(args.gradebook, args.format, args.assignment, args.output)
    if args.output is None:
        sys.stdout.write(text)
    return 0
