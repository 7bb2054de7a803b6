"""``qcoder ask --data FILE --db FILE``: the notebook copilot's pipeline from the command line.

The table is loaded as ``df`` and the database opened read-only as ``conn``, exactly as if
they were variables in a kernel; the answer streams, then the checked code is printed with
what the checks found.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

from qcoder_ds.copilot.errors import CopilotError


class DataFileError(CopilotError):
    """The --data file cannot be read as a table."""


def load_table(path: str | Path):
    """A pandas DataFrame from a .csv / .tsv / .parquet / .json file."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{p}: no such file")
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            return pd.read_csv(p)
        if suffix == ".tsv":
            return pd.read_csv(p, sep="\t")
        if suffix in (".parquet", ".pq"):
            try:
                return pd.read_parquet(p)
            except ImportError as e:
                raise DataFileError(f"{p}: reading Parquet needs pyarrow ({e})") from None
        if suffix in (".json", ".jsonl"):
            return pd.read_json(p, lines=suffix == ".jsonl")
    except DataFileError:
        raise
    except Exception as e:  # pandas raises many kinds; all mean "not a readable table"
        raise DataFileError(f"{p}: cannot read it as a table ({type(e).__name__}: {e})") from None
    raise DataFileError(f"{p}: unsupported data file type {suffix!r} "
                        f"(use .csv, .tsv, .parquet or .json)")


def open_database(path: str) -> sqlite3.Connection:
    """A read-only connection: the copilot never changes the user's database."""
    p = Path(path)
    if not p.is_file():
        raise CopilotError(f"{p}: no such database file")
    conn = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True, timeout=2.0)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        conn.close()
        raise CopilotError(f"{p}: not a readable SQLite database ({e})") from None
    return conn


def namespace_for(args: argparse.Namespace) -> dict[str, Any]:
    """The variables the request sees, as a kernel would hold them: ``df`` and ``conn``."""
    ns: dict[str, Any] = {}
    if getattr(args, "data", None):
        ns["df"] = load_table(args.data)
    if getattr(args, "db", None):
        ns["conn"] = open_database(args.db)
    return ns


def run_pipeline(args: argparse.Namespace) -> int:
    from qcoder_ds.copilot.pipeline import Copilot, Options
    from qcoder_ds.copilot.tasks import Task
    from qcoder_ds.engine import Engine

    ns = namespace_for(args)
    engine = Engine.load(args.model, backend=args.backend, weights=args.weights,
                         threads=args.threads)
    copilot = Copilot(engine, model=args.model)
    opts = Options(task=Task.SQL if getattr(args, "sql", False) else None,
                   check=getattr(args, "check", True), safe=getattr(args, "safe", False),
                   max_new_tokens=args.max_tokens)
    out = sys.stdout
    answer = copilot.ask(args.request, ns, opts,
                         on_token=lambda piece: (out.write(piece), out.flush()))
    out.write("\n")
    checks = ", ".join(f"{k}: {v}" for k, v in answer.checks.items())
    print(f"# checks: {checks}; repairs: {answer.repairs}; {answer.total_s:.1f} s",
          file=sys.stderr)
    for w in answer.warnings:
        print(f"# warning: {w}", file=sys.stderr)
    if answer.repairs or answer.warnings or not answer.ok:  # the cell differs from the stream
        print("# final cell:", file=sys.stderr)
        print(answer.cell)
    return 0 if answer.ok else 1
