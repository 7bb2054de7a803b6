"""Whether a query resolves against the schema, and a message naming the real columns if not.

The raw model's SQL fails mostly with "no such column". Qualifying every column against the
connection's real tables finds those before the query runs, and the message names the real
columns, which is what the repair prompt needs.
"""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.validate import Issue, did_you_mean


def schema_issue(tree: exp.Expression, info: ConnectionInfo) -> Issue | None:
    """None when every column of ``tree`` resolves against the schema."""
    try:
        qualify(tree.copy(), schema=info.schema(), dialect=info.dialect,
                validate_qualify_columns=True, quote_identifiers=False)
    except OptimizeError as e:
        return column_issue(str(e), tree, info)
    except (SqlglotError, RecursionError) as e:  # exotic syntax: report, do not crash
        return Issue("sql", f"could not check the query against the schema: {e}",
                     severity="warning")
    return None


def _missing(message: str) -> str | None:
    """The column sqlglot's message says it could not resolve."""
    missing = None
    for prefix in ("Column '", "column '"):
        if prefix in message:
            missing = message.split(prefix, 1)[1].split("'", 1)[0]
    m = re.search(r"Unknown column: (\w+)", message)
    if missing is None and m:
        missing = m.group(1)
    return missing


def column_issue(message: str, tree: exp.Expression, info: ConnectionInfo) -> Issue:
    """Turn sqlglot's message into one naming the real columns of the tables in the query."""
    used = {t.name.lower() for t in tree.find_all(exp.Table)}
    cols = {f"{t}.{c}" for t, cs in info.tables.items() if t.lower() in used for c in cs}
    bare = sorted({c.split(".", 1)[1] for c in cols})
    missing = _missing(message)
    owners = sorted(t for t, cs in info.tables.items()
                    if missing and missing.lower() in {c.lower() for c in cs})
    if owners:
        real = next(c for c in info.tables[owners[0]] if c.lower() == missing.lower())
        head = (f"column {real!r} is not in the table it is taken from; it is a column of "
                f"{', '.join(owners)} (join that table or use its alias)")
    elif missing:
        head = f"no column {missing!r}{did_you_mean(missing, bare, ignore_case=True)}"
    else:
        head = message.splitlines()[0]
    return Issue("sql", f"{head}; the tables used have columns {sorted(cols)[:60]}")
