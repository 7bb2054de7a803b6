"""One student notebook, one fresh kernel, in the sandbox, driven message by message.

We talk to the kernel with jupyter_client directly (not nbclient's run-everything loop)
because grading needs what a notebook runner hides: the execute_reply status of every cell
(an error the student hid from the display still counts), a byte budget enforced as
messages arrive (a cell that prints a gigabyte is stopped, not buffered), a deadline per
cell and per notebook, and silent guard executions around each test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec
from nbformat.v4 import output_from_msg

from qcoder_ds import isolation
from qcoder_ds.grading.sandbox import Limits, launcher_argv

_PKG_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class CellRun:
    """What happened when one cell ran.

    ``status`` is the kernel's own verdict ("ok", "error", "aborted") or ours:
    "timeout", "dead" (the kernel exited), "output-limit", "not-run".
    """

    status: str
    outputs: list = field(default_factory=list)
    execution_count: int | None = None
    reason: str = ""
    seconds: float = 0.0
    stdout: str = ""


def isolation_note() -> str:
    """How the kernels of this machine are isolated, in words for every report."""
    why_not = isolation.unavailable_reason()
    if why_not is None:
        return ("walled in with bubblewrap: read-only system, own work folder, private /tmp, "
                "uid nobody, no network, own PID namespace")
    return (f"REDUCED ISOLATION ({why_not}): resource limits and a socket block only; the "
            "notebook's code could read and write the grader's files")


def refusal() -> str:
    """Why untrusted notebooks are not run here, and what the instructor can do."""
    return (f"student notebooks are not run without operating-system walls, and they cannot "
            f"be built here: {isolation.unavailable_reason()}. Install bubblewrap or allow "
            "unprivileged user namespaces; or pass --reduced-isolation to grade anyway with "
            "resource limits only (each report will say so)")


class SandboxedKernel:
    """A python kernel started through the sandbox launcher, in ``work``, with ``limits``."""

    def __init__(self, work: Path, run_dir: Path, limits: Limits) -> None:
        self.work, self.run_dir, self.limits = Path(work), Path(run_dir), limits
        self.output_left = limits.output_bytes
        self.km: KernelManager | None = None
        self.kc = None
        self.dead_reason = ""

    def __enter__(self) -> SandboxedKernel:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def start(self, ready_timeout: float = 60.0) -> None:
        walled = isolation.available()
        if not walled and not self.limits.reduced_isolation:
            raise RuntimeError(refusal())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kernel_argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        # interrupts go as messages: the walled kernel has a session of its own, out of reach
        # of the process-group signal Jupyter would send
        spec = KernelSpec(argv=launcher_argv(self.limits, self.work, kernel_argv, walled),
                          display_name="Python 3", language="python", env={},
                          interrupt_mode="message")
        km = KernelManager(transport="ipc", ip=str(self.run_dir / "k"),
                           connection_file=str(self.run_dir / "kernel.json"))
        km._kernel_spec = spec
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        env["PYTHONPATH"] = _PKG_ROOT  # for the launcher only; it never reaches the kernel
        # the kernel's own stdout/stderr (banners, crashes) are not the grader's to print
        km.start_kernel(env=env, cwd=str(self.work), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
        self.km = km
        kc = km.blocking_client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=ready_timeout)
        except RuntimeError as e:
            self.shutdown()
            raise RuntimeError(f"the grading kernel did not start: {e}") from e
        self.kc = kc

    @property
    def alive(self) -> bool:
        return self.km is not None and self.km.is_alive() and not self.dead_reason

    def _exit_reason(self) -> str:
        code = None
        proc = getattr(getattr(self.km, "provisioner", None), "process", None)
        if proc is not None:
            code = proc.poll()
        return "the kernel exited" + (f" (exit status {code})" if code is not None else "")

    def kill(self, reason: str) -> None:
        self.dead_reason = self.dead_reason or reason
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)
            except Exception:  # already gone: nothing left to stop
                pass

    def shutdown(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        if self.km is not None:
            try:
                if self.km.is_alive():
                    self.km.shutdown_kernel(now=True)
            except Exception:  # the kernel died on its own; cleanup only
                pass
            try:
                self.km.cleanup_resources()
            except Exception:
                pass
            self.km = None

    def execute(self, source: str, timeout: float, silent: bool = False,
                store_history: bool = True) -> CellRun:
        """Run one cell; never raises for anything the notebook does."""
        if not self.alive:
            return CellRun("not-run", reason=self.dead_reason or self._exit_reason())
        t0 = time.monotonic()
        kc = self.kc
        msg_id = kc.execute(source, silent=silent, store_history=store_history,
                            allow_stdin=False, stop_on_error=False)
        run = CellRun("ok")
        reply = None
        idle = False
        clear_pending = False
        deadline = t0 + max(timeout, 0.01)
        next_alive_check = t0 + 0.5
        interrupted_at = None
        while reply is None or not idle:
            now = time.monotonic()
            if now >= deadline:
                if interrupted_at is None:
                    interrupted_at = now
                    run.status = "timeout"
                    run.reason = f"the cell ran longer than {timeout:.0f} s and was interrupted"
                    try:
                        self.km.interrupt_kernel()
                    except Exception:
                        pass
                    deadline = now + 3.0
                    continue
                self.kill(f"the kernel did not stop after a {timeout:.0f} s time limit")
                run.reason = f"the cell ran longer than {timeout:.0f} s; the kernel was stopped"
                break
            try:
                msg = kc.get_iopub_msg(timeout=min(0.05, max(deadline - now, 0.001)))
            except Empty:
                msg = None
            if msg is not None and msg.get("parent_header", {}).get("msg_id") == msg_id:
                kind = msg["msg_type"]
                content = msg["content"]
                if kind == "status":
                    idle = content.get("execution_state") == "idle"
                elif kind == "execute_input":
                    run.execution_count = content.get("execution_count")
                elif kind == "clear_output":
                    if content.get("wait"):
                        clear_pending = True
                    else:
                        run.outputs.clear()
                elif kind in ("stream", "display_data", "execute_result", "error"):
                    size = _size(content)
                    self.output_left -= size
                    if self.output_left < 0:
                        run.status = "output-limit"
                        run.reason = (f"the notebook printed more than "
                                      f"{self.limits.output_bytes:,} bytes; the kernel was stopped")
                        self.kill(run.reason)
                        break
                    if clear_pending:
                        run.outputs.clear()
                        clear_pending = False
                    if kind == "stream":
                        run.stdout += content.get("text", "") if content.get("name") == "stdout" \
                            else ""
                    _append(run.outputs, output_from_msg(msg))
            if reply is None:
                try:
                    m = kc.get_shell_msg(timeout=0)
                except Empty:
                    m = None
                if m is not None and m.get("parent_header", {}).get("msg_id") == msg_id:
                    reply = m["content"]
                    if run.status == "ok":
                        run.status = reply.get("status", "error")
                    if run.execution_count is None:
                        run.execution_count = reply.get("execution_count")
            if time.monotonic() >= next_alive_check:
                next_alive_check = time.monotonic() + 0.5
                if not self.km.is_alive():
                    self.dead_reason = self._exit_reason()
                    run.status = "dead"
                    run.reason = f"{self.dead_reason} while this cell ran"
                    break
        run.seconds = time.monotonic() - t0
        return run


def _size(content: dict) -> int:
    if "text" in content:
        return len(content["text"])
    if "traceback" in content:
        return sum(len(x) for x in content["traceback"])
    data = content.get("data", {})
    return sum(len(v) if isinstance(v, str) else len(str(v)) for v in data.values()) + 64


def _append(outputs: list, out) -> None:
    if (out.output_type == "stream" and outputs and outputs[-1].output_type == "stream"
            and outputs[-1].name == out.name):
        outputs[-1].text += out.text
    else:
        outputs.append(out)
