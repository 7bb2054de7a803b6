"""Kernel launcher that puts a student's kernel behind walls before Jupyter starts it.

Run as ``python -m qcoder_ds.grading.sandbox [options] -- KERNEL_ARGV...``. It sets the
resource limits (data memory, file size, CPU, no core dumps) and a clean environment (no
paths, no grader variables but the ``NBGRADER_EXECUTION=autograde`` nbgrader itself sets),
then becomes the walled kernel: bubblewrap (``qcoder_ds.isolation``) shows the kernel a
read-only system and Python, its own work folder and the folder of its connection file
(read-write), a private ``/tmp``, and nothing else: not the course folders, the gradebook,
other submissions or the instructor's home. It runs as nobody, with no network (Jupyter
talks to it over ipc sockets), in its own PID namespace (it cannot see or signal the grader,
and every process it forks dies with it).

Without walls (``--reduced-isolation``, which the grader passes only when the instructor
asked for it) the kernel gets the limits and a socket-blocking ``sitecustomize`` only.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from qcoder_ds import isolation

# Only these variables reach the kernel: no paths, nothing that names the grader, except what
# nbgrader itself sets while autograding (its FAQ tells instructors to test for it, e.g. to skip
# slow cells; hiding it changed such a notebook's score, and the tests are the instructor's
# copy either way, so knowing it is graded gains a student nothing).
ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "SYSTEMROOT")
ENV_FIXED = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}

_NO_NET_SITE = '''\
"""Installed by the grader's sandbox where no network namespace is available."""
import socket as _s

_orig_connect = _s.socket.connect
_orig_connect_ex = _s.socket.connect_ex
_orig_sendto = _s.socket.sendto


def _ok(sock):
    return sock.family == getattr(_s, "AF_UNIX", -1)


def _connect(self, *a, **k):
    if not _ok(self):
        raise OSError(101, "Network is unreachable (network access is disabled while grading)")
    return _orig_connect(self, *a, **k)


def _connect_ex(self, *a, **k):
    if not _ok(self):
        return 101
    return _orig_connect_ex(self, *a, **k)


def _sendto(self, *a, **k):
    if not _ok(self):
        raise OSError(101, "Network is unreachable (network access is disabled while grading)")
    return _orig_sendto(self, *a, **k)


_s.socket.connect = _connect
_s.socket.connect_ex = _connect_ex
_s.socket.sendto = _sendto
_s.create_connection = lambda *a, **k: (_ for _ in ()).throw(
    OSError(101, "Network is unreachable (network access is disabled while grading)"))
'''


@dataclass(frozen=True)
class Limits:
    """What one notebook may use. Times in seconds, sizes in MiB / bytes.

    ``reduced_isolation``: grade even where the walls cannot be built (the instructor's
    explicit choice; every report then says so). ``nbgrader_execution``: the kernel's
    ``NBGRADER_EXECUTION``, as nbgrader sets it ("autograde"; "" for none).
    """

    cell_timeout: float = 30.0
    notebook_timeout: float = 300.0
    memory_mb: int = 2048
    output_bytes: int = 1_000_000
    file_size_mb: int = 256
    network: bool = False
    reduced_isolation: bool = False
    nbgrader_execution: str = "autograde"


def launcher_argv(limits: Limits, work: Path, kernel_argv: list[str], walled: bool) -> list[str]:
    """The command line Jupyter runs in place of the plain kernel command."""
    argv = [sys.executable, "-m", "qcoder_ds.grading.sandbox", "--work", str(work),
            "--memory-mb", str(limits.memory_mb), "--file-size-mb", str(limits.file_size_mb),
            "--cpu-s", str(int(limits.notebook_timeout) + 30)]
    if limits.network:
        argv.append("--network")
    if limits.nbgrader_execution:
        argv += ["--nbgrader-execution", limits.nbgrader_execution]
    if not walled:
        argv.append("--reduced-isolation")
    return argv + ["--"] + kernel_argv


def _environment(args) -> dict[str, str]:
    env = {k: os.environ[k] for k in ENV_KEEP if k in os.environ}
    env.update(ENV_FIXED)
    env["HOME"] = args.work
    if args.nbgrader_execution:
        env["NBGRADER_EXECUTION"] = args.nbgrader_execution
    env["PYTHONPATH"] = os.environ.get("QCODER_SANDBOX_PYTHONPATH", "")
    if args.reduced_isolation and not args.network:
        site = Path(args.work).parent / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_NO_NET_SITE)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env["PYTHONPATH"]) if p)
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qcoder_ds.grading.sandbox")
    ap.add_argument("--work", required=True)
    ap.add_argument("--memory-mb", type=int, default=2048)
    ap.add_argument("--file-size-mb", type=int, default=256)
    ap.add_argument("--cpu-s", type=int, default=600)
    ap.add_argument("--network", action="store_true")
    ap.add_argument("--nbgrader-execution", default="")
    ap.add_argument("--reduced-isolation", action="store_true")
    ap.add_argument("kernel", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.kernel and args.kernel[0] == "--":
        args.kernel = args.kernel[1:]
    if not args.kernel:
        ap.error("no kernel command after --")
    # RLIMIT_DATA (heap and private anonymous memory), not RLIMIT_AS: shared libraries and
    # each thread's reserved malloc arena inflate the address space of a pandas+matplotlib
    # kernel past 1 GiB while it uses a fraction of that, so an AS limit fails honest imports.
    isolation.limit(data_bytes=args.memory_mb << 20, file_bytes=args.file_size_mb << 20,
                    cpu_s=args.cpu_s)
    env = _environment(args)
    cmd = args.kernel
    if not args.reduced_isolation:
        # the connection file's folder also holds the ipc sockets the kernel creates
        run_dirs = [os.path.dirname(os.path.abspath(a)) for a in args.kernel
                    if a.endswith(".json")]
        isolation.hand_over([args.work, *run_dirs])
        cmd = isolation.command(cmd, isolation.Walls(writable=(args.work, *run_dirs),
                                                     network=args.network))
    os.chdir(args.work)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached: exec


if __name__ == "__main__":
    sys.exit(main())
