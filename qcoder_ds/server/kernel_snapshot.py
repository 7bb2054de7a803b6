"""Runs INSIDE the user's kernel: what the chat may know of the live namespace, written to a
private folder for the server.

The server calls it through an ``execute_request`` with ``silent=True, store_history=False``
and one ``user_expressions`` entry::

    __import__('qcoder_ds.server.kernel_snapshot', fromlist=['_']).snapshot('<json>')

so nothing is bound in the user's namespace (``__import__`` binds no name, a silent request
has no ``Out``/``_`` and does not count), and no object of the user is changed: data objects
are sampled *copies*, databases are read (in-memory and DuckDB ones copied into the folder).

The context the prompt shows (shapes, per-column stats, null counts) is computed here, on the
full objects, exactly as the magic computes it (``context.collect``); only the sandbox check
gets the sample, as it does in the magic. The folder is made with ``mkdtemp`` (mode 0700, this
user only); the server deletes it once it has read it.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sqlite3
import tempfile
import time
import types
from pathlib import Path
from typing import Any

#: a single plain value or sample bigger than this (pickled) is not copied to the server
MAX_OBJECT_BYTES = 20 << 20
FORMAT = 1


def snapshot(args: str | dict | None = None) -> str:
    """Write the namespace's context and sample copies to a new private folder; return JSON
    ``{"folder": path}`` or ``{"error": message}`` (never raises: a failure in a user's kernel
    must not print a traceback there)."""
    try:
        return json.dumps({"folder": str(_snapshot(_args(args)))})
    except Exception as e:  # noqa: BLE001 - whatever the objects do, the kernel stays quiet
        return json.dumps({"error": f"{type(e).__name__}: {e}"[:500]})


def _args(args: str | dict | None) -> dict:
    if isinstance(args, dict):
        return args
    return json.loads(args) if args else {}


def _user_namespace() -> dict[str, Any]:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("not running in an IPython kernel")
    return shell.user_ns


def _snapshot(args: dict, namespace: dict[str, Any] | None = None) -> Path:
    from qcoder_ds.copilot import context as ctxmod
    from qcoder_ds.copilot.sandbox import sample_copy

    deadline = args.get("deadline")
    if deadline is not None and time.time() > float(deadline):
        # the server stopped waiting (the kernel was busy): a folder now would never be read
        raise TimeoutError("the server stopped waiting for this snapshot")
    ns = _user_namespace() if namespace is None else namespace
    rows = int(args.get("rows", 2000))
    request = ctxmod.interpolate(str(args.get("request") or ""), ns)
    ctx = ctxmod.collect(ns, request)
    folder = Path(tempfile.mkdtemp(prefix="qcoder-snapshot-"))
    data: dict[str, Any] = {}
    names: dict[str, dict] = {}
    for name in ctxmod.user_names(ns):
        obj = ns[name]
        if name in ctx.connections:
            names[name] = _connection(name, obj, ctx.connections[name], folder, rows)
        elif isinstance(obj, types.ModuleType):
            names[name] = {"kind": "module", "module": obj.__name__}
        elif name in ctx.objects:
            try:
                blob = pickle.dumps(sample_copy(obj, rows), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001 - user classes, lambdas inside, open handles
                blob = b""
            if blob and len(blob) <= MAX_OBJECT_BYTES:
                data[name] = blob
                names[name] = {"kind": "data"}
            else:
                names[name] = {"kind": "other", "type": type(obj).__name__,
                               "callable": callable(obj)}
        else:
            names[name] = {"kind": "other", "type": type(obj).__name__,
                           "callable": callable(obj) and not isinstance(obj, type),
                           "class": isinstance(obj, type)}
    with open(folder / "data.pkl", "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    manifest = {
        "format": FORMAT, "request": request, "names": names,
        "items": [{**dataclasses.asdict(i), "terms": sorted(i.terms)} for i in ctx.items],
        "connections": {n: _info_json(c) for n, c in ctx.connections.items()},
        "last_error": ctx.last_error, "last_error_cell": ctx.last_error_cell,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, default=repr), encoding="utf-8")
    return folder


def _info_json(info: Any) -> dict:
    out = dataclasses.asdict(info)
    out["samples"] = {t: [[_plain(v) for v in row] for row in rows]
                      for t, rows in info.samples.items()}
    out["foreign_keys"] = [list(fk) for fk in info.foreign_keys]
    return out


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _connection(name: str, conn: Any, info: Any, folder: Path, rows: int) -> dict:
    """How the server reopens a connection read-only: the database file itself (SQLite), or a
    copy in the folder (in-memory SQLite: the whole database; DuckDB: the first ``rows`` of
    each table, since a DuckDB file is locked by the kernel's own connection)."""
    if info.error:
        return {"kind": "other", "type": type(conn).__name__, "callable": False}
    if info.kind == "sqlite":
        if info.path:
            return {"kind": "sqlite", "path": info.path}
        path = folder / f"{name}.sqlite"
        dest = sqlite3.connect(path)
        try:
            if conn.in_transaction:  # backup() would wait on our own write lock
                dest.executescript("\n".join(conn.iterdump()))
            else:
                conn.backup(dest)
        finally:
            dest.close()
        info.path = str(path)
        return {"kind": "sqlite", "path": str(path), "copy": True}
    if info.kind == "duckdb":
        import duckdb

        path = folder / f"{name}.duckdb"
        dest = duckdb.connect(str(path))
        try:
            for table in info.tables:
                frame = conn.execute(f'SELECT * FROM "{table.replace(chr(34), chr(34) * 2)}" '
                                     f"LIMIT {int(rows)}").df()
                dest.register("qcoder_src", frame)
                quoted = table.replace('"', '""')
                dest.execute(f'CREATE TABLE "{quoted}" AS SELECT * FROM qcoder_src')
                dest.unregister("qcoder_src")
        finally:
            dest.close()
        return {"kind": "duckdb", "path": str(path), "copy": True}
    if info.kind == "sqlalchemy" and info.path:
        return {"kind": "sqlite", "path": info.path}
    return {"kind": "other", "type": type(conn).__name__, "callable": False}
