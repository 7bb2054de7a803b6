"""Grading a batch on a Dask ``distributed`` cluster instead of the local process pool.

``qcoder grade autograde submitted --assignment ps1 --dask tcp://lab-pc:8786`` (or
``QCODER_DASK_SCHEDULER``): each task is ``autograde.grade_submission`` for one student, the
same function the local pool runs, so the sandbox, the limits and the scores are the same.
The batch stays on the machine that started it for everything that is not one submission:
the plan (what is left to grade), the gradebook, and committing each result the moment it
arrives, so

- a worker lost mid-batch costs only the submission it held, which the scheduler gives to
  another worker (Dask reschedules a task whose worker died; after
  ``distributed.scheduler.allowed-failures`` deaths it gives up and that student is reported
  failed, never the batch);
- each result is recorded once: the client takes it from its future, once, whatever happened
  on the workers;
- a scheduler that stops ends the batch with an error saying how many were recorded, and a
  rerun grades only the rest (the gradebook's fingerprints, as for the local pool).

Workers need what the local pool has: qcoder-ds installed, bubblewrap's walls (or the batch's
``--reduced-isolation``), and the course files at the same paths as here (the submissions,
the assignment's source folder, and the autograded/ folder they write to: one machine, or an
NFS mount at the same path). Before anything is sent each worker host is asked whether it has
them, and tasks go only to the hosts that do; if none does, the error names what is missing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from qcoder_ds.grading.errors import GradingError

#: the scheduler's address when the command line gives none
ENV = "QCODER_DASK_SCHEDULER"
#: seconds to reach the scheduler, and to wait for a first worker
CONNECT_TIMEOUT_S = 30.0
#: a task that raises (not a lost worker: that is the scheduler's) is tried this many more times
TASK_RETRIES = 1


class DaskGradingError(GradingError):
    """The Dask cluster could not grade (no scheduler, no worker with the course files, or
    the scheduler stopped mid-batch)."""


def scheduler_address(given: str | None) -> str | None:
    """The scheduler to use: ``--dask``, else ``QCODER_DASK_SCHEDULER``, else None (local)."""
    address = (given or os.environ.get(ENV, "")).strip()
    return address or None


def worker_report(paths: list[str], writable: list[str], reduced_isolation: bool) -> dict:
    """Run on each worker: can it grade here? (the course paths it cannot see or write, its
    walls, its qcoder version). Small and picklable; it touches nothing."""
    from qcoder_ds import isolation

    try:
        from importlib.metadata import version

        qv = version("qcoder-ds")
    except Exception:  # an uninstalled checkout on the path: no version to compare
        qv = "unknown"
    missing = [p for p in paths if not os.path.exists(p)]
    for p in writable:
        # the nearest existing folder must take new files (autograded/<student>/...)
        q = Path(p)
        while not q.exists() and q != q.parent:
            q = q.parent
        if not os.access(q, os.W_OK):
            missing.append(f"{p} (not writable)")
    why_not = isolation.unavailable_reason()
    return {"host": socket.gethostname(), "missing": missing,
            "walls": why_not is None or reduced_isolation, "why_no_walls": why_not or "",
            "qcoder": qv}


def _host(address: str) -> str:
    return urlsplit(address).hostname or address


def run_tasks_on_dask(tasks: list[dict], scheduler: str, grade: Callable[[dict], dict],
                      record: Callable[[dict, dict | None, str | None], None],
                      reduced_isolation: bool = False,
                      connect_timeout: float | None = None) -> None:
    """Grade ``tasks`` (``autograde``'s per-submission dicts) on the cluster at ``scheduler``
    with ``grade`` (``autograde.grade_submission``, passed in: autograde calls this module),
    calling ``record(task, result, error)`` for each as it finishes, in this process.
    ``connect_timeout`` (default ``CONNECT_TIMEOUT_S``) bounds reaching the scheduler, the
    wait for a first worker, and the client's attempts to reconnect to a lost scheduler."""
    connect_timeout = CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout
    try:
        from distributed import Client, as_completed
    except ImportError as e:
        raise DaskGradingError("grading on Dask needs the distributed package: "
                               "pip install 'qcoder-ds[dask]'") from e
    if not tasks:
        return
    try:
        client = Client(scheduler, timeout=connect_timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise DaskGradingError(f"cannot reach the Dask scheduler at {scheduler} ({e}); start "
                               "it with `dask scheduler` and check the address") from e
    done = 0
    try:
        hosts = _usable_hosts(client, tasks, reduced_isolation, connect_timeout)
        futures = {}
        for t in tasks:
            fut = client.submit(grade, t, key=f"qcoder-grade-{t['student']}-"
                                f"{(t.get('fingerprint') or '')[:12]}-{os.urandom(4).hex()}",
                                pure=False, retries=TASK_RETRIES, workers=hosts,
                                allow_other_workers=False)
            futures[fut] = t
        for fut in as_completed(list(futures), loop=client.loop):
            t = futures.pop(fut)
            if fut.status == "cancelled" or _scheduler_gone(client):
                futures[fut] = t
                break
            try:
                result = fut.result()
            except Exception as e:  # this submission only: recorded as failed, batch goes on
                if _scheduler_gone(client):
                    futures[fut] = t
                    break
                record(t, None, _why(e))
            else:
                record(t, result, None)
                done += 1
        if futures:
            raise DaskGradingError(
                f"the Dask scheduler at {scheduler} went away with {len(futures)} "
                f"submission(s) not graded ({done} recorded in this run); start it again and "
                "rerun the same command: it grades only the ones not recorded")
    except DaskGradingError:
        raise
    except (OSError, TimeoutError) as e:  # the connection itself, while waiting
        raise DaskGradingError(
            f"lost the Dask scheduler at {scheduler} ({type(e).__name__}: {e}) after {done} "
            "submission(s) were recorded; rerun the same command to grade the rest") from e
    finally:
        try:
            client.close(timeout=5)
        except Exception:  # closing a client whose scheduler is gone: nothing to release
            pass


def _scheduler_gone(client) -> bool:
    return client.status not in ("running", "connecting")


def _usable_hosts(client, tasks: list[dict], reduced_isolation: bool,
                  timeout: float) -> list[str]:
    """The worker hosts that see the course files and can build the walls; refuse if none."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError as e:
        raise DaskGradingError(f"the Dask scheduler has no workers after {timeout:g} s: start "
                               "some with `dask worker SCHEDULER` on machines that have the "
                               "course files") from e
    t0 = tasks[0]
    paths = sorted({str(Path(t["sub_dir"])) for t in tasks}
                   | ({t0["instructor_dir"]} if t0.get("instructor_dir") else set()))
    writable = sorted({str(Path(t["out_dir"]).parent) for t in tasks if t.get("out_dir")})
    reports = client.run(worker_report, paths, writable, reduced_isolation)
    good, bad = set(), []
    for address, rep in reports.items():
        if rep["missing"]:
            bad.append(f"{address} ({rep['host']}) cannot see {rep['missing'][0]}"
                       + (f" and {len(rep['missing']) - 1} more" if len(rep["missing"]) > 1
                          else ""))
        elif not rep["walls"]:
            bad.append(f"{address} ({rep['host']}) cannot build the sandbox's walls: "
                       f"{rep['why_no_walls']}")
        else:
            good.add(_host(address))
    if not good:
        raise DaskGradingError("no Dask worker can grade this batch: " + "; ".join(bad[:3])
                               + ". Workers need the course folder at the same path as here "
                               "(one machine, or the same NFS mount) and bubblewrap")
    return sorted(good)


def _why(e: BaseException) -> str:
    name = type(e).__name__
    if name == "KilledWorker":
        return (f"{name}: every worker that took this submission died while grading it "
                "(distributed.scheduler.allowed-failures times); look at the workers' logs")
    return f"{name}: {e}"
