"""The chat's view of a notebook's kernel: asked of the kernel itself, rebuilt in the server.

The server's kernel manager gives a client for the notebook's kernel; one ``execute_request``
(``silent=True, store_history=False``, empty code, one ``user_expressions`` entry) runs
``kernel_snapshot.snapshot`` there. Silent requests do not count (the execution count stays),
store no history and bind nothing (no ``Out``, no ``_``): the user's namespace is untouched.
The snapshot folder holds the context the kernel described on the full objects, sample copies
of the data, and where the databases are; here they become a namespace of copies (databases
reopened read-only) for ``Copilot.ask``'s checks, with the kernel's own context.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import pickle
import shutil
import sqlite3
import time
import types
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcoder_ds.copilot import context as ctxmod
from qcoder_ds.copilot.context import ConnectionInfo, ContextItem, KernelContext

#: how long the server waits for a busy kernel before answering without its variables
KERNEL_TIMEOUT_S = 10.0
EXPRESSION = "__import__('qcoder_ds.server.kernel_snapshot', fromlist=['_']).snapshot({args!r})"


class Unavailable:
    """Stands for a kernel object that was not copied (a function, a class instance, an open
    file): its name exists for the name checks; the sandbox cannot pickle it, so the check
    says it was "not copied into the check" instead of running the cell on a stand-in."""

    def __init__(self, name: str, type_name: str):
        self._name, self._type = name, type_name

    def __repr__(self) -> str:
        return f"<{self._type} `{self._name}` in the kernel (not copied)>"

    def __reduce__(self):
        raise TypeError(f"`{self._name}` lives in the kernel and was not copied")


class UnavailableCallable(Unavailable):
    """A kernel function or class: callable, so the checks read it as a function, not data."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"`{self._name}` lives in the kernel and was not copied")


@dataclass
class Snapshot:
    """What a request is served against: a namespace of copies and the kernel's context."""

    namespace: dict[str, Any]
    context: KernelContext
    request: str
    warnings: list[str] = field(default_factory=list)
    folder: Path | None = None
    _closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Close the reopened databases and delete the snapshot folder."""
        for conn in self._closers:
            with contextlib.suppress(Exception):
                conn.close()
        self._closers.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def empty(request: str, warning: str | None = None) -> Snapshot:
    """No kernel: the chat answers without data context."""
    return Snapshot({}, ctxmod.collect({}, request), request, [warning] if warning else [])


def with_cell_error(snap: Snapshot, source: str | None, error: str | None) -> Snapshot:
    """The cell the front end sent and its error are the error to fix (the kernel's last error
    may belong to another cell)."""
    if error:
        snap.context.last_error = error
        snap.context.last_error_cell = source
    return snap


async def take(kernel_manager: Any, kernel_id: str, request: str, rows: int = 2000,
               timeout: float | None = None) -> Snapshot:
    """Ask the kernel for its snapshot; a missing, dead or busy kernel gives an empty one with
    a warning that says why (the chat still answers, without the data). ``timeout``: default
    ``KERNEL_TIMEOUT_S``."""
    timeout = KERNEL_TIMEOUT_S if timeout is None else timeout
    try:
        kernel = kernel_manager.get_kernel(kernel_id)
    except Exception:  # noqa: BLE001 - KeyError, or Jupyter Server's 404 HTTPError
        return empty(request, f"kernel {kernel_id} is not running; answered without its "
                              "variables")
    args = json.dumps({"request": request, "rows": rows, "deadline": time.time() + timeout})
    client = own_client(kernel)
    client.start_channels()
    try:
        msg_id = client.execute("", silent=True, store_history=False, allow_stdin=False,
                                user_expressions={"qcoder": EXPRESSION.format(args=args)})
        reply = await _reply(client, msg_id, timeout)
    except TimeoutError:
        return empty(request, f"the kernel was busy for {timeout:.0f} s; answered without "
                              "its variables")
    finally:
        client.stop_channels()
    said = _from_reply(reply, request)
    if isinstance(said, Snapshot):
        return said
    # unpickling the samples can take a moment for wide frames: off the event loop
    return await asyncio.get_running_loop().run_in_executor(None, _load_or_say, said, request)


def _load_or_say(folder: Path, request: str) -> Snapshot:
    try:
        return load(folder, request)
    except Exception as e:  # noqa: BLE001 - a kernel elsewhere, a folder gone: answer anyway
        if _ours(folder):
            shutil.rmtree(folder, ignore_errors=True)
        return empty(request, f"the kernel's description could not be read ({e}); answered "
                              "without its variables")


def own_client(kernel: Any) -> Any:
    """A client with a session of its own. ``kernel.client()`` reuses the kernel manager's
    session, whose id is the ZMQ identity of the shell socket: two clients with one identity
    steal each other's replies (the other client of that kernel then waits forever)."""
    from jupyter_client.session import Session

    session = Session(key=kernel.session.key, signature_scheme=kernel.session.signature_scheme,
                      username="qcoder")
    return kernel.client(session=session)


async def _reply(client: Any, msg_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            msg = await asyncio.wait_for(_maybe_await(client.get_shell_msg(timeout=left)),
                                         left + 0.5)
        except (asyncio.TimeoutError, TimeoutError) as e:
            raise TimeoutError from e
        except Exception as e:  # queue.Empty from a blocking client
            if type(e).__name__ == "Empty":
                raise TimeoutError from e
            raise
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return msg


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or asyncio.isfuture(value):
        return await value
    return value


def _from_reply(reply: dict, request: str) -> Snapshot | Path:
    content = reply.get("content", {})
    result = content.get("user_expressions", {}).get("qcoder", {})
    if result.get("status") != "ok":
        why = result.get("evalue") or content.get("evalue") or "no result"
        return empty(request, "the kernel could not describe its variables "
                              f"(qcoder_ds must be importable in the kernel): {why}")
    try:
        said = json.loads(ast.literal_eval(result["data"]["text/plain"]))
    except (KeyError, ValueError, SyntaxError, TypeError) as e:
        return empty(request, f"the kernel's description could not be read ({e})")
    if "error" in said:
        return empty(request, f"the kernel could not describe its variables: {said['error']}")
    return Path(said["folder"])


def load(folder: Path, request: str = "") -> Snapshot:
    """Rebuild a namespace and context from a snapshot folder written by the kernel. Only a
    private folder (``mkdtemp``: mode 0700) of this user, named as the kernel names it, is
    read: its pickles are the kernel's objects."""
    folder = Path(folder).resolve()
    if not _ours(folder):
        raise ValueError(f"{folder} is not a private snapshot folder of this user")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    with open(folder / "data.pkl", "rb") as f:
        blobs: dict[str, bytes] = pickle.load(f)
    snap = Snapshot({}, KernelContext([], {}, {}), manifest.get("request") or request,
                    folder=folder)
    for name, spec in manifest["names"].items():
        kind = spec.get("kind")
        if kind == "data":
            try:
                snap.namespace[name] = pickle.loads(blobs[name])
            except Exception:  # noqa: BLE001 - a class the server cannot import
                snap.namespace[name] = Unavailable(name, "object")
                snap.warnings.append(f"`{name}` could not be copied from the kernel")
        elif kind == "module":
            snap.namespace[name] = types.ModuleType(spec["module"])
        elif kind in ("sqlite", "duckdb"):
            conn = _reopen(kind, spec["path"])
            if conn is None:
                snap.namespace[name] = Unavailable(name, kind)
            else:
                snap.namespace[name] = conn
                snap._closers.append(conn)
        else:
            cls = UnavailableCallable if spec.get("callable") or spec.get("class") \
                else Unavailable
            snap.namespace[name] = cls(name, spec.get("type", "object"))
    ctx = snap.context
    for item in manifest["items"]:
        ctx.items.append(ContextItem(item["name"], item["kind"], item["full"], item["short"],
                                     set(item["terms"]), item["order"], item.get("score", 0.0)))
        if item["name"] in snap.namespace:
            ctx.objects[item["name"]] = snap.namespace[item["name"]]
    for name, info in manifest["connections"].items():
        info["samples"] = {t: [tuple(r) for r in rows] for t, rows in info["samples"].items()}
        info["foreign_keys"] = [tuple(fk) for fk in info["foreign_keys"]]
        ctx.connections[name] = ConnectionInfo(**info)
    ctx.last_error, ctx.last_error_cell = manifest["last_error"], manifest["last_error_cell"]
    return snap


def _ours(folder: Path) -> bool:
    try:
        st = folder.stat()
    except OSError:
        return False
    return folder.name.startswith("qcoder-snapshot-") and not st.st_mode & 0o077 and \
        (not hasattr(os, "getuid") or st.st_uid == os.getuid())


def _reopen(kind: str, path: str) -> Any:
    """A read-only connection to the kernel's database (or its copy), usable from the worker
    thread; None when it cannot be opened."""
    try:
        if kind == "sqlite":
            uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
            return sqlite3.connect(uri, uri=True, check_same_thread=False)
        import duckdb

        return duckdb.connect(path, read_only=True)
    except Exception:  # noqa: BLE001 - a moved or locked file: the context still says it
        return None
