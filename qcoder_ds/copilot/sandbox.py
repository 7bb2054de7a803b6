"""Check a candidate cell by running it on a sample copy of the data, in another process.

The walls are the operating system's (``qcoder_ds.isolation``: bubblewrap): the child sees a
read-only system and Python, its own job directory (read-write), the database files the cell
uses (read-only) and a private ``/tmp``; nothing else of the file system; it runs as nobody,
with no network and no view of other processes. Inside, limits: wall-clock time (the process
group is killed), address space (RLIMIT_AS on top of what the interpreter maps), CPU seconds,
file size; and an audit hook that refuses sockets, processes and writes outside the job
directory with a clear message (a friendlier first line, not the wall). ``MPLBACKEND=Agg``
renders plots off-screen. The user's objects are never passed: the child gets a pickled
sample copy, and databases are opened read-only or copied.

Where the walls cannot be built (no user namespaces, not Linux), the check still runs, with
the audit hook and a network namespace where one can be made; ``Sandbox.isolation`` says
which, and the copilot says so once.

A spare child is started ahead of time (its pandas/matplotlib import is most of the start-up
cost), so a check in an interactive session starts at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcoder_ds import isolation
from qcoder_ds.copilot.context import ConnectionInfo, connection_kind, is_data
from qcoder_ds.copilot.errors import CopilotError

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("sandbox_child.py")


@dataclass(frozen=True)
class Limits:
    """How much a candidate may use. Defaults suit a notebook cell on a laptop."""

    timeout_s: float = 20.0
    memory_mb: int = 1024
    file_mb: int = 64
    sample_rows: int = 2000
    network: bool = False


@dataclass
class RunResult:
    """What happened when the candidate ran."""

    ok: bool
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    stdout: str = ""
    value: dict | None = None
    fingerprint: str | None = None
    figures: list[dict] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    timed_out: bool = False
    elapsed_s: float = 0.0
    unavailable: list[str] = field(default_factory=list)  # names that could not be copied
    warnings: list[dict] | None = None  # what pandas / numpy warned while the cell ran
    isolation: str = ""

    def problem(self) -> str:
        """One line for the repair prompt and the user."""
        if self.ok:
            return ""
        return self.error or "the cell failed"


def _child_env(allowed_dir: str, home: str) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HOME=home, MPLBACKEND="Agg", MPLCONFIGDIR=allowed_dir, OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
               PYTHONDONTWRITEBYTECODE="1", NO_PROXY="*", no_proxy="*",
               # arrow's jemalloc/mimalloc reserve huge address ranges; RLIMIT_AS needs malloc
               ARROW_DEFAULT_MEMORY_POOL="system")
    return env


def sample_copy(obj: Any, rows: int) -> Any:
    """A copy with at most ``rows`` rows (a seeded random sample, kept in index order)."""
    kind = is_data(obj)
    if kind in ("dataframe", "series"):
        if len(obj) > rows:
            return obj.sample(n=rows, random_state=0).sort_index()
        return obj.copy()
    if kind == "ndarray":
        return obj[:rows].copy() if obj.ndim and obj.shape[0] > rows else obj.copy()
    return obj


def _connection_spec(name: str, conn: Any, info: ConnectionInfo | None, tmp: Path,
                     rows: int) -> dict | None:
    kind = connection_kind(conn)
    if kind == "sqlite":
        path = info.path if info else None
        if not path:  # in-memory: copy it into the job directory
            path = str(tmp / f"{name}.sqlite")
            dest = sqlite3.connect(path)
            try:
                if conn.in_transaction:  # backup() would wait forever on our own write lock
                    dest.executescript("\n".join(conn.iterdump()))
                else:
                    conn.backup(dest)
            finally:
                dest.close()
        return {"kind": "sqlite", "path": path}
    if kind == "sqlalchemy":
        eng = getattr(conn, "engine", conn)
        if eng.dialect.name == "sqlite" and info and info.path:
            return {"kind": "sqlalchemy-sqlite", "path": info.path}
        return None
    if kind == "duckdb" and info:
        tables = {t: conn.execute(f'SELECT * FROM "{t}" LIMIT {int(rows)}').df()
                  for t in info.tables}
        return {"kind": "duckdb", "tables": tables}
    return None


def referenced(code: str) -> set[str]:
    """Names the code reads (so only those objects are copied into the child)."""
    import ast

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _copies(names: set[str], namespace: Mapping[str, Any],
            connections: Mapping[str, ConnectionInfo], staging: Path, rows: int
            ) -> tuple[dict[str, Any], dict[str, str], dict[str, dict], list[str]]:
    """What the child gets of each name the code reads: a sample copy of data, a module by
    name, a database (opened read-only, or copied into ``staging``); and the names that
    cannot be copied (lambdas, open files, server databases)."""
    data: dict[str, Any] = {}
    modules: dict[str, str] = {}
    conns: dict[str, dict] = {}
    unavailable: list[str] = []
    for name in sorted(names & set(namespace)):
        obj = namespace[name]
        if isinstance(obj, types.ModuleType):
            modules[name] = obj.__name__
        elif connection_kind(obj):
            spec = _connection_spec(name, obj, connections.get(name), staging, rows)
            if spec is None:
                unavailable.append(name)
            else:
                conns[name] = spec
        else:
            copy = sample_copy(obj, rows)
            try:
                pickle.dumps(copy)
                data[name] = copy
            except Exception:  # noqa: BLE001 - lambdas, open files, user classes...
                unavailable.append(name)
    return data, modules, conns, unavailable


def _database_files(conns: Mapping[str, dict]) -> tuple[str, ...]:
    """The database files a job opens in place (read-only): the walls must show them."""
    files = []
    for spec in conns.values():
        if spec["kind"] in ("sqlite", "sqlalchemy-sqlite"):
            files += [p for p in (spec["path"], spec["path"] + "-wal") if os.path.exists(p)]
    return tuple(sorted(files))


@dataclass
class _Child:
    """A started check process and the job directory that only it can see."""

    proc: subprocess.Popen
    job_dir: Path
    readable: tuple[str, ...]


class Sandbox:
    """Runs candidates in child processes; keeps one spare child warm between runs."""

    _said: set[str] = set()  # reduced-isolation notices already given (once per process)

    def __init__(self, limits: Limits | None = None, prewarm: bool = True):
        self.limits = limits or Limits()
        self.prewarm = prewarm
        self._spare: _Child | None = None
        self._readable: tuple[str, ...] = ()  # what the last job needed: the spare gets it
        self._lock = threading.Lock()
        self._mpl_dir = tempfile.mkdtemp(prefix="qcoder-mpl-")
        isolation.hand_over([self._mpl_dir])
        why_not = isolation.unavailable_reason()
        self.walled = why_not is None
        net = "network" if self.limits.network else "no network"
        if self.walled:
            self.isolation = (f"bubblewrap walls (read-only system, own job directory, private "
                              f"/tmp, uid nobody, {net}) + audit hook")
        else:
            netns = not self.limits.network and isolation.network_namespace_available()
            self.isolation = ("network namespace + audit hook" if netns else "audit hook") + \
                f" only: {why_not}"
            if why_not not in Sandbox._said:
                Sandbox._said.add(why_not)
                log.warning("qcoder: the copilot's checks run with reduced isolation (%s): "
                            "code that calls libc directly is not walled in", why_not)

    def _start(self, readable: tuple[str, ...]) -> _Child:
        job_dir = Path(tempfile.mkdtemp(prefix="qcoder-check-"))
        isolation.hand_over([job_dir])
        cmd = [sys.executable, "-I", str(CHILD)]
        if self.walled:
            walls = isolation.Walls(writable=(str(job_dir), self._mpl_dir),
                                    readable=(str(CHILD),) + readable,
                                    network=self.limits.network)
            cmd = isolation.command(cmd, walls)
        elif not self.limits.network and isolation.network_namespace_available():
            cmd = [shutil.which("unshare") or "unshare", "-n", "--"] + cmd
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_child_env(self._mpl_dir,
                                                                       str(job_dir)),
                                cwd=job_dir, start_new_session=True, text=True)
        return _Child(proc, job_dir, readable)

    def _take(self, readable: tuple[str, ...]) -> _Child:
        with self._lock:
            child, self._spare = self._spare, None
            self._readable = readable
        if child is not None and (child.proc.poll() is not None
                                  or not set(readable) <= set(child.readable)):
            _discard(child)
            child = None
        return child or self._start(readable)

    def _refill(self) -> None:
        if self.prewarm:
            with self._lock:
                if self._spare is None:
                    self._spare = self._start(self._readable)

    def close(self) -> None:
        with self._lock:
            child, self._spare = self._spare, None
        if child is not None:
            _discard(child)
        shutil.rmtree(self._mpl_dir, ignore_errors=True)

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def run(self, code: str, namespace: Mapping[str, Any],
            connections: Mapping[str, ConnectionInfo] | None = None,
            result_name: str | None = None) -> RunResult:
        """Run ``code`` with sample copies of the namespace objects it references."""
        lim = self.limits
        staging = Path(tempfile.mkdtemp(prefix="qcoder-stage-"))  # in-memory databases
        child = None
        try:
            data, modules, conns, unavailable = _copies(referenced(code), namespace,
                                                        connections or {}, staging,
                                                        lim.sample_rows)
            in_place = {n: c for n, c in conns.items() if not c.get("path", "").startswith(
                str(staging) + os.sep)}
            child = self._take(_database_files(in_place))
            for spec in conns.values():  # copies move into the one folder the child sees
                if spec.get("path", "").startswith(str(staging) + os.sep):
                    spec["path"] = shutil.move(spec["path"], child.job_dir)
            job = {"code": code, "data": data, "modules": modules, "connections": conns,
                   "memory_bytes": lim.memory_mb << 20, "file_bytes": lim.file_mb << 20,
                   "cpu_seconds": int(lim.timeout_s) + 1, "result_name": result_name,
                   "allowed_dirs": [self._mpl_dir]}
            with open(child.job_dir / "job.pkl", "wb") as f:
                pickle.dump(job, f)
            result = self._execute(child)
            result.unavailable = unavailable
            return result
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if child is not None:
                shutil.rmtree(child.job_dir, ignore_errors=True)
            self._refill()

    @staticmethod
    def _wait_ready(proc: subprocess.Popen, limit_s: float = 120.0) -> None:
        """Wait for the child's imports, so its start-up does not count against the cell."""
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], limit_s)
        if not ready or proc.stdout.readline().strip() != "ready":
            said = ""
            if ready:  # its output ended: it is exiting, so wait for it to say why
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            if proc.poll() is not None and proc.stderr is not None:  # it died: say why
                said = " ".join(proc.stderr.read().strip().splitlines()[-2:])[:300]
            _kill(proc)
            raise CopilotError("the check process did not start (python, pandas and numpy "
                               "must import in the environment that runs qcoder)"
                               + (f": {said}" if said else ""))

    def _execute(self, child: _Child) -> RunResult:
        proc, job_dir = child.proc, child.job_dir
        self._wait_ready(proc)
        start = time.perf_counter()
        timed_out = False
        try:
            _, stderr = proc.communicate(str(job_dir) + "\n", timeout=self.limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
            stderr = ""
        elapsed = time.perf_counter() - start
        result_file = job_dir / "result.json"
        if timed_out:
            return RunResult(False, error=f"TimeoutError: the cell ran longer than the "
                             f"{self.limits.timeout_s:g} s limit of the check",
                             error_type="TimeoutError", timed_out=True, elapsed_s=elapsed,
                             isolation=self.isolation)
        try:
            raw = json.loads(result_file.read_text())
        except (OSError, ValueError):
            rc = proc.returncode
            why = _signal_name(rc)
            if rc in (-signal.SIGXCPU, -signal.SIGKILL):
                why += " (a CPU or memory limit of the check)"
            tail = (stderr or "").strip().splitlines()[-3:]
            return RunResult(False, error=f"the check process died: {why}. " + " ".join(tail),
                             error_type="Crash", elapsed_s=elapsed, isolation=self.isolation)
        return RunResult(ok=raw["ok"], error=raw.get("error"), error_type=raw.get("error_type"),
                         traceback=raw.get("traceback"), stdout=raw.get("stdout", ""),
                         value=raw.get("value"), fingerprint=raw.get("fingerprint"),
                         figures=raw.get("figures") or [], blocked=raw.get("blocked") or [],
                         warnings=raw.get("warnings"),
                         elapsed_s=elapsed, isolation=self.isolation)


def _signal_name(rc: int | None) -> str:
    if rc is None:
        return "no exit status"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _discard(child: _Child) -> None:
    if child.proc.poll() is None:
        _kill(child.proc)
    shutil.rmtree(child.job_dir, ignore_errors=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError):
        pass
