"""Kernel launcher that puts a student's kernel in a box before Jupyter starts it.

Run as ``python -m qcoder_ds.grading.sandbox [options] -- KERNEL_ARGV...``; it becomes the
kernel's parent. Where Linux namespaces are available (root, or unprivileged user
namespaces) the kernel gets its own network namespace (no network: only a downed
loopback; Jupyter talks to it over ipc sockets), its own mount namespace (instructor
paths hidden under empty read-only tmpfs mounts) and its own PID namespace (it cannot
see or signal the grader, and every process it forks dies with it). Everywhere it gets
resource limits (data memory, file size, CPU) and an environment without any hint that
it is being graded. Without namespaces, a socket-blocking ``sitecustomize`` stands in for
the network namespace; ``isolation_available()`` says which one a run gets.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import resource
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1

# Only these variables reach the kernel: nothing that names the grader, nbgrader or paths.
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
    """What one notebook may use. Times in seconds, sizes in MiB / bytes."""

    cell_timeout: float = 30.0
    notebook_timeout: float = 300.0
    memory_mb: int = 2048
    output_bytes: int = 1_000_000
    file_size_mb: int = 256
    network: bool = False
    hide: tuple[str, ...] = field(default_factory=tuple)


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(libc, src: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None,
                    ctypes.c_ulong(flags), data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {target}: {os.strerror(err)}")


_PROBE: bool | None = None


def isolation_available() -> bool:
    """True when this machine lets us create network, mount and PID namespaces."""
    global _PROBE
    if _PROBE is None:
        if not sys.platform.startswith("linux"):
            _PROBE = False
        else:
            pid = os.fork()
            if pid == 0:  # probe in a throwaway child: unshare changes the caller for good
                try:
                    ok = _libc().unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) == 0
                except Exception:
                    ok = False
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            _PROBE = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return _PROBE


def launcher_argv(limits: Limits, work: Path, kernel_argv: list[str]) -> list[str]:
    """The command line Jupyter runs in place of the plain kernel command."""
    argv = [sys.executable, "-m", "qcoder_ds.grading.sandbox", "--work", str(work),
            "--memory-mb", str(limits.memory_mb), "--file-size-mb", str(limits.file_size_mb),
            "--cpu-s", str(int(limits.notebook_timeout) + 30)]
    if limits.network:
        argv.append("--network")
    for p in limits.hide:
        argv += ["--hide", str(p)]
    return argv + ["--"] + kernel_argv


_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/dev", "/proc", "/sys",
                "/run", "/var")


def _hide_paths(libc, hide: list[str], keep: list[str]) -> None:
    """Cover each hidden path with an empty scratch tmpfs, then re-expose the ``keep`` dirs.

    The covers stay writable (a notebook may use /tmp) but start empty and vanish with the
    kernel; the Python installation, the work dir and the connection dir are bound back in.
    """
    keep_fds = {}
    for k in keep:
        if os.path.isdir(k):
            keep_fds[os.path.realpath(k)] = os.open(k, os.O_RDONLY | os.O_DIRECTORY)
    hidden: list[str] = []
    for p in sorted({os.path.realpath(h) for h in hide}, key=len):
        if not os.path.exists(p) or any(p == h or p.startswith(h + "/") for h in hidden):
            continue
        if any(s == p or s.startswith(p.rstrip("/") + "/") for s in _SYSTEM_DIRS):
            continue  # never cover "/" or a system folder the kernel needs
        if os.path.isdir(p):
            _mount(libc, "tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   "size=64m,mode=1777")
            hidden.append(p)
        else:
            _mount(libc, "/dev/null", p, None, MS_BIND, None)
    for k, fd in sorted(keep_fds.items(), key=lambda kv: len(kv[0])):
        real = os.path.realpath(k)
        if any(real.startswith(h + "/") for h in hidden):
            os.makedirs(real, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", real, None, MS_BIND | MS_REC, None)
        os.close(fd)


def _limit(kind: int, value: int) -> None:
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass


def _child_setup(args, isolated: bool, libc) -> None:
    if isolated:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        try:  # a /proc of our own PID namespace: no view of the grader or its files
            _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        except OSError:
            pass
    mb = 1024 * 1024
    # RLIMIT_DATA (heap and private anonymous memory), not RLIMIT_AS: shared libraries and
    # each thread's reserved malloc arena inflate the address space of a pandas+matplotlib
    # kernel past 1 GiB while it uses a fraction of that, so an AS limit fails honest imports.
    _limit(resource.RLIMIT_DATA, args.memory_mb * mb)
    _limit(resource.RLIMIT_FSIZE, args.file_size_mb * mb)
    _limit(resource.RLIMIT_CPU, args.cpu_s)
    _limit(resource.RLIMIT_CORE, 0)
    env = {k: os.environ[k] for k in ENV_KEEP if k in os.environ}
    env.update(ENV_FIXED)
    env["HOME"] = args.work
    env["PYTHONPATH"] = os.environ.get("QCODER_SANDBOX_PYTHONPATH", "")
    if not isolated and not args.network:
        site = Path(args.work).parent / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_NO_NET_SITE)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env["PYTHONPATH"]) if p)
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    os.chdir(args.work)
    os.execvpe(args.kernel[0], args.kernel, env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qcoder_ds.grading.sandbox")
    ap.add_argument("--work", required=True)
    ap.add_argument("--memory-mb", type=int, default=2048)
    ap.add_argument("--file-size-mb", type=int, default=256)
    ap.add_argument("--cpu-s", type=int, default=600)
    ap.add_argument("--network", action="store_true")
    ap.add_argument("--hide", action="append", default=[])
    ap.add_argument("kernel", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.kernel and args.kernel[0] == "--":
        args.kernel = args.kernel[1:]
    if not args.kernel:
        ap.error("no kernel command after --")
    libc = _libc()
    flags = CLONE_NEWNS | CLONE_NEWPID | (0 if args.network else CLONE_NEWNET)
    isolated = sys.platform.startswith("linux") and libc.unshare(flags) == 0
    if isolated:
        _mount(libc, "none", "/", None, MS_REC | MS_PRIVATE, None)
        conn = [a for a in args.kernel if a.endswith(".json")]
        keep = [args.work] + [os.path.dirname(os.path.abspath(c)) for c in conn]
        keep += [p for p in {sys.prefix, sys.base_prefix, os.path.dirname(sys.executable),
                             os.path.dirname(os.path.realpath(sys.executable))} if p]
        _hide_paths(libc, args.hide, keep)
        pid = os.fork()  # the child is PID 1 of the new namespace
        if pid == 0:
            _child_setup(args, True, libc)
        # Jupyter signals the whole process group; the kernel gets SIGINT directly.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, lambda s, f: os.kill(pid, signal.SIGKILL))
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code  # killed by signal N: 128+N, as a shell
    _child_setup(args, False, libc)
    return 0  # not reached: exec


if __name__ == "__main__":
    sys.exit(main())
