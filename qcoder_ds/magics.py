"""``%%qcoder`` and ``%qcoder``: the copilot in a notebook (``%load_ext qcoder_ds``).

::

    %%qcoder [--sql|--plot|--pandas|--explain] [--run] [--model NAME] [--no-check]
             [--show-prompt] [--safe] [--repairs N] [--samples K]
    revenue per region for 2023 as a bar chart, largest first

The answer streams while it is generated (an ipywidgets box in a live kernel, plain text
otherwise) and arrives as a new cell below (``set_next_input``) whose metadata carries the
provenance (model, time, checks passed). ``%qcoder explain`` explains the previous cell,
``%qcoder fix`` repairs the cell that last raised, ``%qcoder config`` shows or sets defaults.
The engine is loaded once per kernel and reused.
"""

from __future__ import annotations

import argparse
import html
import shlex
import traceback
from dataclasses import dataclass, field
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from qcoder_ds.copilot.errors import CopilotError
from qcoder_ds.copilot.pipeline import Answer, Copilot, Options
from qcoder_ds.copilot.sandbox import Limits
from qcoder_ds.copilot.tasks import Task
from qcoder_ds.errors import QcoderError

_DEFAULTS: dict[str, Any] = {
    "model": None, "backend": "onnx", "weights": "int4",
    "threads": None, "check": True, "safe": False, "repairs": 2, "samples": 1,
    "timeout_s": 20.0, "memory_mb": 1024, "context_tokens": 1500, "max_new_tokens": 384,
}
_TYPES = {k: type(v) for k, v in _DEFAULTS.items() if v is not None}
_TYPES["threads"] = int


@dataclass
class _KernelState:
    """What lives as long as the kernel: defaults, loaded engines, the copilot per model."""

    defaults: dict[str, Any] = field(default_factory=lambda: dict(_DEFAULTS))
    engines: dict[tuple, Any] = field(default_factory=dict)
    copilots: dict[tuple, Copilot] = field(default_factory=dict)
    last: Answer | None = None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%%qcoder", add_help=False, exit_on_error=False)
    kind = p.add_mutually_exclusive_group()
    for flag in ("sql", "plot", "pandas", "explain"):
        kind.add_argument(f"--{flag}", dest="task", action="store_const", const=Task(flag))
    p.add_argument("--run", action="store_true")
    p.add_argument("--model")
    p.add_argument("--no-check", dest="check", action="store_false", default=None)
    p.add_argument("--show-prompt", action="store_true")
    p.add_argument("--safe", action="store_true", default=None)
    p.add_argument("--repairs", type=int)
    p.add_argument("--samples", type=int)
    p.add_argument("words", nargs="*")
    return p


class _Stream:
    """Shows tokens as they arrive: an ipywidgets box in a kernel, else plain text."""

    def __init__(self, shell: Any):
        self.text = ""
        self.widget = None
        if getattr(shell, "kernel", None) is not None:
            try:
                import ipywidgets
                from IPython.display import display

                self.widget = ipywidgets.HTML(value="<pre>…</pre>")
                display(self.widget)
            except ImportError:
                self.widget = None

    def __call__(self, piece: str) -> None:
        self.text += piece
        if self.widget is not None:
            self.widget.value = f"<pre>{html.escape(self.text)}</pre>"
        else:
            print(piece, end="", flush=True)

    def end(self) -> None:
        if self.widget is None and self.text:
            print(flush=True)


@magics_class
class QcoderMagics(Magics):
    """The ``qcoder`` line and cell magics; one instance per kernel."""

    def __init__(self, shell: Any):
        super().__init__(shell)
        self.state = _KernelState()

    # ---------------------------------------------------------------- engine (once per kernel)

    def _key(self, model: str | None) -> tuple:
        from qcoder_ds.models.choice import default_model

        d = self.state.defaults
        if not (model or d["model"]):  # chosen once per kernel, so every request agrees
            d["model"] = default_model().name
        return (model or d["model"], d["backend"], d["weights"], d["threads"])

    def use_engine(self, engine: Any, model: str | None = None) -> None:
        """Serve requests for ``model`` (default: the default model) with a loaded engine."""
        key = self._key(model)
        self.state.engines[key] = engine
        self.state.copilots.pop(key, None)

    def copilot(self, model: str | None = None) -> Copilot:
        key = self._key(model)
        if key not in self.state.copilots:
            if key not in self.state.engines:
                from qcoder_ds.engine import Engine

                print(f"qcoder: loading {key[0]} ({key[1]}, {key[2]}) once for this kernel…",
                      flush=True)
                self.state.engines[key] = Engine.load(key[0], backend=key[1], weights=key[2],
                                                      threads=key[3])
            self.state.copilots[key] = Copilot(self.state.engines[key], model=key[0])
        return self.state.copilots[key]

    # ---------------------------------------------------------------- magics

    @cell_magic
    def qcoder(self, line: str, cell: str) -> None:
        """%%qcoder [--sql|--plot|--pandas|--explain] [--run] [--model NAME] [--no-check]
        [--show-prompt] [--safe] [--repairs N] [--samples K] + the request in the cell."""
        try:
            args = _parser().parse_args(shlex.split(line))
        except (argparse.ArgumentError, SystemExit, ValueError) as e:
            print(f"qcoder: {e}. Usage: {self.qcoder.__doc__.strip()}")
            return
        request = " ".join(args.words + [cell.strip()]).strip()
        self._serve(request, args, code=None)

    @line_magic("qcoder")
    def qcoder_line(self, line: str) -> None:
        """%qcoder explain | fix | config [key=value ...] | <request>"""
        words = line.strip().split(None, 1)
        head = words[0] if words else ""
        rest = words[1] if len(words) > 1 else ""
        if head == "config":
            self._config(rest)
            return
        try:
            args = _parser().parse_args(shlex.split(rest if head in ("explain", "fix") else line))
        except (argparse.ArgumentError, SystemExit, ValueError) as e:
            print(f"qcoder: {e}")
            return
        if head == "explain":
            args.task = Task.EXPLAIN
            cells = self.shell.user_ns.get("In") or []
            code = cells[-2] if len(cells) >= 2 else ""
            if not code.strip():
                print("qcoder: there is no previous cell to explain")
                return
            self._explain(code, " ".join(args.words), args)
            return
        if head == "fix":
            args.task = Task.FIX
            self._serve(" ".join(args.words), args, code=None)
            return
        self._serve(" ".join(args.words), args, code=None)

    # ---------------------------------------------------------------- work

    def _options(self, args: argparse.Namespace) -> Options:
        d = self.state.defaults
        return Options(
            task=args.task,
            check=d["check"] if args.check is None else args.check,
            safe=d["safe"] if args.safe is None else args.safe,
            repairs=d["repairs"] if args.repairs is None else args.repairs,
            samples=d["samples"] if args.samples is None else args.samples,
            context_tokens=d["context_tokens"], max_new_tokens=d["max_new_tokens"],
            limits=Limits(timeout_s=float(d["timeout_s"]), memory_mb=int(d["memory_mb"])))

    def _serve(self, request: str, args: argparse.Namespace, code: str | None) -> None:
        stream = _Stream(self.shell)
        try:
            copilot = self.copilot(args.model)
            answer = copilot.ask(request, self.shell.user_ns, self._options(args),
                                 on_token=stream, code=code)
        except QcoderError as e:
            stream.end()
            print(f"qcoder: {e}")
            return
        stream.end()
        self.state.last = answer
        self.shell.user_ns["_qcoder"] = answer
        if args.show_prompt and answer.prompt is not None:
            print("----- prompt -----\n" + answer.prompt.render() + "\n------------------")
        if answer.task is Task.EXPLAIN:
            return
        self._report(answer)
        self._insert(answer, copilot.model)
        if args.run and answer.cell:
            if not answer.ok:
                print("qcoder: not running the cell: it did not pass the checks")
            else:
                self.shell.run_cell(answer.cell, store_history=False)

    def _explain(self, code: str, request: str, args: argparse.Namespace) -> None:
        """Line by line from the lessons' explainer (grounded in an execution trace on copies
        of the data) when it is installed; else the model explains."""
        try:
            from qcoder_ds.lessons.explain import explain
        except ImportError:
            explain = None
        if explain is not None and not request:
            try:
                print(explain(code, namespace=self.shell.user_ns, fmt="markdown"))
                return
            except QcoderError as e:
                print(f"qcoder: the line-by-line explainer could not run ({e}); asking the "
                      "model instead")
        self._serve(request or "Explain this code line by line.", args, code=code)

    def _report(self, answer: Answer) -> None:
        marks = {"passed": "✓", "failed": "✗", "warning": "!", "skipped": "-",
                 "not possible": "-"}
        checks = "  ".join(f"{marks.get(v, '?')} {k}" for k, v in answer.checks.items())
        print(f"qcoder: {answer.task.value} · {checks} · repairs {answer.repairs} · "
              f"{answer.total_s:.1f} s")
        for w in answer.warnings:
            print(f"qcoder: warning: {w}")
        if not answer.ok and answer.attempts:
            last = answer.attempts[-1]
            from qcoder_ds.copilot.repair import problems

            for p in problems(last)[:3]:
                print(f"qcoder: check failed: {p}")

    def _insert(self, answer: Answer, model: str) -> None:
        """The new cell below, with provenance in its metadata (payload) and on its first line."""
        if not answer.cell:
            return
        header = f"# qcoder ({model}, {answer.task.value}, {answer.summary()})\n"
        text = header + answer.cell.strip() + "\n"
        payload = {"source": "set_next_input", "text": text, "replace": False,
                   "metadata": {"qcoder": answer.provenance(model)}}
        pm = getattr(self.shell, "payload_manager", None)
        if pm is not None:
            pm.write_payload(payload, single=False)
        else:  # pragma: no cover - shells without payloads
            self.shell.set_next_input(text)

    def _config(self, rest: str) -> None:
        d = self.state.defaults
        if not rest.strip():
            for k, v in d.items():
                print(f"{k} = {v!r}")
            return
        for item in shlex.split(rest):
            if "=" not in item:
                print(f"qcoder: config takes key=value; keys: {', '.join(d)}")
                return
            key, value = item.split("=", 1)
            if key not in d:
                print(f"qcoder: unknown setting {key!r}; settings: {', '.join(d)}")
                return
            try:
                d[key] = _convert(key, value)
            except ValueError as e:
                print(f"qcoder: {key}: {e}")
                return
            print(f"{key} = {d[key]!r}")


def _convert(key: str, value: str) -> Any:
    typ = _TYPES.get(key, str)
    if value.lower() in ("none", "") and key == "threads":
        return None
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return typ(value)


def _record_error(shell: Any):
    """Keep ``Err[n]`` (the traceback text of cell n), as jupyter-ai does, for fix and context."""

    def post_run_cell(result: Any) -> None:
        err = result.error_in_exec
        if err is None or result.execution_count is None:
            return
        text = "".join(traceback.format_exception_only(type(err), err)).strip()
        tb = traceback.extract_tb(err.__traceback__)
        cell_frames = [f for f in tb if f.filename.startswith("<ipython-input")
                       or "ipykernel" in f.filename or f.filename.startswith("/tmp/ipykernel")]
        if cell_frames:
            text = f"line {cell_frames[-1].lineno}: {text}"
        shell.user_ns.setdefault("Err", {})[result.execution_count] = text

    return post_run_cell


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext qcoder_ds``: register the magics and start keeping ``Err``."""
    if getattr(ipython, "_qcoder_magics", None) is None:
        magics = QcoderMagics(ipython)
        ipython.register_magics(magics)
        ipython.events.register("post_run_cell", _record_error(ipython))
        ipython._qcoder_magics = magics
        ipython.user_ns.setdefault("Err", {})


def unload_ipython_extension(ipython: Any) -> None:  # pragma: no cover - rarely used
    ipython._qcoder_magics = None


__all__ = ["QcoderMagics", "load_ipython_extension", "CopilotError"]
