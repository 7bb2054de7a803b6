"""`qcoder explain FILE|-`: line-by-line explanation of Python or SQL, from running it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qcoder_ds.lessons.errors import ExplainError
from qcoder_ds.paths import atomic_write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="explain code line by line, grounded in what it did")
    p.add_argument("file", help="a .py or .sql file, or - for standard input")
    p.add_argument("--lang", choices=["python", "sql"], help="default: from the file name")
    p.add_argument("--db", help="SQL: the SQLite database file to run the query on")
    p.add_argument("--dialect", default="sqlite", help="SQL dialect of the query (sqlglot names)")
    p.add_argument("--format", choices=["markdown", "html", "ipynb"], default="markdown")
    p.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    p.add_argument("--no-run", action="store_true", help="Python: explain without running")
    p.add_argument("--level", choices=["beginner", "intermediate", "advanced"],
                   help="let the local model rephrase for this level (checked against the trace)")
    p.add_argument("--model", default=None, help="catalogue name of the model (--level)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qcoder_ds.lessons.render import render

    if args.file == "-":
        text, cwd, name = sys.stdin.read(), Path.cwd(), "stdin"
    else:
        path = Path(args.file)
        if not path.is_file():
            raise ExplainError(f"no such file: {path}")
        text, cwd, name = path.read_text(encoding="utf-8"), path.resolve().parent, path.name
    lang = args.lang or ("sql" if name.endswith(".sql") or args.db else "python")
    if lang == "sql":
        from qcoder_ds.lessons.explain_sql import explain_sql

        if not args.db:
            raise ExplainError("SQL needs a database to run on: --db FILE.sqlite")
        ex = explain_sql(text, args.db, dialect=args.dialect)
    else:
        from qcoder_ds.lessons.explain import explain_python

        ex = explain_python(text, cwd=cwd, run=not args.no_run)
    ex.title = f"{name}, step by step"
    if args.level:
        from qcoder_ds.lessons.rephrase import rephrase_with_model

        ex = rephrase_with_model(ex, args.level, model=args.model)
    out = render(ex, args.format)
    if args.output:
        atomic_write_text(args.output, out)
    else:
        sys.stdout.write(out)
    return 0  # a learner's error is part of the explanation, not a failure of it
