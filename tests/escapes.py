"""Escape routes out of a sandbox, as data: each is cell source that tries to change or read
something outside, and ``Target.damage()`` checks from the parent that nothing did.

Used by both sandboxes (the copilot's check and the grader's kernel). Every route calls libc
directly (ctypes, or a compiled extension), so Python's audit hooks cannot see it: only the
operating system's walls stop it. The routes are safe to run where the walls fail: they only
create files named after the run's tag, append a comment to ``~/.bashrc`` (restored), and
signal or trace a throw-away ``sleep`` process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PRELUDE = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
O_WRONLY, O_CREAT, O_TRUNC, O_APPEND, O_NONBLOCK = 0o1, 0o100, 0o1000, 0o2000, 0o4000

ROUTES = {
    "ctypes_system": (
        'libc.system(b"touch {outside}/system.txt; echo x > /var/tmp/{tag}-system; '
        'echo x > /dev/shm/{tag}-system; echo x > {home}/.{tag}-system")\n'),
    "ctypes_execve": (
        'argv = (ctypes.c_char_p * 4)(b"/bin/sh", b"-c", b"touch {outside}/execve.txt; '
        'echo x > /var/tmp/{tag}-execve", None)\n'
        'libc.execve(b"/bin/sh", argv, None)\n'),
    "libc_open_write": (
        'for p in [b"{outside}/libc.txt", b"/var/tmp/{tag}-libc", b"/dev/shm/{tag}-libc",\n'
        '          b"{home}/.{tag}-libc"]:\n'
        f'    fd = libc.open(p, {O_WRONLY | O_CREAT | O_TRUNC}, 0o644)\n'
        '    if fd >= 0:\n'
        '        libc.write(fd, b"x", 1)\n'
        '        libc.close(fd)\n'),
    "bashrc": (
        f'fd = libc.open(b"{{home}}/.bashrc", {O_WRONLY | O_APPEND | O_CREAT}, 0o644)\n'
        'if fd >= 0:\n'
        '    libc.write(fd, b"# {tag}\\n", len(b"# {tag}\\n"))\n'),
    "proc_root_and_cwd": (
        'for p in [b"/proc/self/root{outside}/procroot.txt", b"/proc/1/root{outside}/p1.txt",\n'
        '          b"/proc/{parent_pid}/root{outside}/parent.txt",\n'
        '          b"/proc/{parent_pid}/cwd/{tag}-cwd"]:\n'
        f'    fd = libc.open(p, {O_WRONLY | O_CREAT | O_TRUNC}, 0o644)\n'
        '    if fd >= 0:\n'
        '        libc.write(fd, b"x", 1)\n'),
    "compiled_extension": (
        'src = \'#include <stdio.h>\\nint escape(void) {{ FILE *f = fopen("{outside}/ext.txt", '
        '"w"); if (!f) return 1; fputs("x", f); fclose(f); '
        'f = fopen("/var/tmp/{tag}-ext", "w"); if (f) fclose(f); return 0; }}\\n\'\n'
        'open("ext.c", "w").write(src)\n'
        'rc = libc.system(b"cc -shared -fPIC -o ext.so ext.c")\n'
        'print("compiled", rc)\n'
        'if rc == 0:\n'
        '    print("escape", ctypes.CDLL(os.path.abspath("ext.so")).escape())\n'),
    "named_pipe": (
        f'fd = libc.open(b"{{fifo}}", {O_WRONLY | O_NONBLOCK})\n'
        'if fd >= 0:\n'
        '    libc.write(fd, b"pwned", 5)\n'),
    "ptrace_and_signals": (
        'PTRACE_SEIZE, PTRACE_ATTACH, PTRACE_KILL = 0x4206, 16, 8\n'
        'print("seize-parent", libc.ptrace(PTRACE_SEIZE, {parent_pid}, 0, 0))\n'
        'print("attach-victim", libc.ptrace(PTRACE_ATTACH, {victim_pid}, 0, 0))\n'
        'libc.ptrace(PTRACE_KILL, {victim_pid}, 0, 0)\n'
        'print("kill-victim", libc.kill({victim_pid}, 9))\n'
        'print("kill-parent", libc.kill({parent_pid}, 0))\n'),
    "read_secrets": (
        'found = []\n'
        'for p in {secrets!r}:\n'
        '    fd = libc.open(p.encode(), 0)\n'
        '    if fd >= 0:\n'
        '        buf = ctypes.create_string_buffer(1 << 20)\n'
        '        n = libc.read(fd, buf, 1 << 20)\n'
        '        if {token!r}.encode() in buf.raw[:max(n, 0)]:\n'
        '            found.append(p)\n'
        'print("leaked:", len(found))\n'),
}


@dataclass
class Target:
    """Everything outside a sandbox that a route aims at, and the checks that it held."""

    root: Path
    tag: str = field(default_factory=lambda: "qcoder-escape-" + uuid.uuid4().hex[:8])
    secrets: list[str] = field(default_factory=list)
    token: str = "the-secret-" + uuid.uuid4().hex[:8]

    def __post_init__(self) -> None:
        self.outside = self.root / "outside"
        self.outside.mkdir(parents=True, exist_ok=True)
        self.home = Path(os.path.expanduser("~"))
        self.bashrc = self.home / ".bashrc"
        self._bashrc = self.bashrc.read_bytes() if self.bashrc.exists() else None
        secret = self.root / "secret.txt"
        secret.write_text(self.token)
        self.secrets = [str(secret)] + self.secrets
        self.fifo = self.root / "pipe"
        os.mkfifo(self.fifo)
        self._fifo_fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.victim = subprocess.Popen(["sleep", "600"])
        self.parent_pid = os.getpid()

    def code(self, route: str) -> str:
        return PRELUDE + ROUTES[route].format(
            outside=self.outside, tag=self.tag, home=self.home, fifo=self.fifo,
            parent_pid=self.parent_pid, victim_pid=self.victim.pid, secrets=self.secrets,
            token=self.token)

    def _places(self) -> list[Path]:
        return [Path("/var/tmp"), Path("/dev/shm"), self.home, Path("/tmp"), Path.cwd()]

    def damage(self, printed: str = "") -> list[str]:
        """What changed or leaked outside the sandbox (empty: the walls held)."""
        out = [f"created {p}" for p in self.outside.iterdir()]
        for d in self._places():
            if d.is_dir():
                out += [f"created {p}" for p in d.glob(f"*{self.tag}*")]
        now = self.bashrc.read_bytes() if self.bashrc.exists() else None
        if now != self._bashrc:
            out.append("changed ~/.bashrc")
        try:
            data = os.read(self._fifo_fd, 100)
        except BlockingIOError:
            data = b""
        if data:
            out.append(f"wrote {data!r} into the parent's pipe")
        if self.victim.poll() is not None:
            out.append("killed a process outside")
        tracer = [ln for ln in Path("/proc/self/status").read_text().splitlines()
                  if ln.startswith("TracerPid:")]
        if tracer and tracer[0].split()[1] != "0":
            out.append("traced the parent")
        if self.token in printed or "leaked: 0" not in printed and "leaked:" in printed:
            out.append("read a secret file")
        for flag in ("seize-parent", "attach-victim", "kill-victim", "kill-parent"):
            if f"{flag} 0" in printed:
                out.append(f"{flag} succeeded")
        return out

    def restore(self) -> None:
        """Undo whatever a failed wall let through, so a failing run harms nothing."""
        for d in self._places():
            if d.is_dir():
                for p in d.glob(f"*{self.tag}*"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        if self._bashrc is None:
            self.bashrc.unlink(missing_ok=True)
        elif self.bashrc.read_bytes() != self._bashrc:
            self.bashrc.write_bytes(self._bashrc)
        os.close(self._fifo_fd)
        if self.victim.poll() is None:
            self.victim.send_signal(signal.SIGKILL)
        self.victim.wait()
