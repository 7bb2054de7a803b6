"""The chat's engine room: a queue of requests, one worker thread, the engines, the settings.

Why one worker: an engine has one KV cache (one generation at a time) and the model already
uses every core, so two answers at once would each take twice as long. Requests therefore
queue, first come first served, and each one's place is sent to its client (``queued``,
position 0 = next); the server's event loop never runs the model (tokens come back through
``call_soon_threadsafe``), so other requests, other notebooks and the rest of Jupyter stay
responsive while an answer is generated. The kernel snapshot of a queued request is taken at
once, while it waits. Stop sets the request's cancel event: the engine checks it before every
token (``GenerationCancelled``), the token callback checks it too, and the client is told
``stopped`` at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qcoder_ds.copilot.pipeline import Answer, Copilot, Options
from qcoder_ds.copilot.tasks import Task, infer_task
from qcoder_ds.copilot.validate import did_you_mean
from qcoder_ds.errors import GenerationCancelled, QcoderError
from qcoder_ds.server import context as kctx
from qcoder_ds.server.store import History, Settings

log = logging.getLogger(__name__)

ACTIONS = ("ask", "explain", "fix")
Emit = Callable[[dict[str, Any]], None]


class ChatError(Exception):
    """A request that cannot be served; the message goes to the client as is."""


@dataclass
class Job:
    """One request, from ``ask`` to ``done``/``stopped``/``error``."""

    id: str
    request: str
    action: str
    model: str
    emit: Emit
    owner: Any = None
    notebook_path: str | None = None
    kernel_id: str | None = None
    cell: dict[str, Any] | None = None
    selection: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    snapshot: asyncio.Task | None = None
    position: int | None = None
    finished: bool = False
    streamed: list[str] = field(default_factory=list)

    def send(self, event: dict[str, Any]) -> None:
        """Send one event unless the job already ended (a stopped job says nothing more)."""
        if self.finished and event.get("type") not in ("done", "stopped", "error"):
            return
        try:
            self.emit({**event, "id": self.id})
        except Exception:  # noqa: BLE001 - a closed socket must not stop the queue
            log.debug("qcoder chat: could not send %s for %s", event.get("type"), self.id)


def model_names() -> list[str]:
    from qcoder_ds.models.catalogue import CATALOGUE

    return list(CATALOGUE)


def installed(name: str) -> bool:
    """Whether ``name`` can load without a download: assembled, all parts installed, or a
    local copy."""
    from importlib import metadata

    from qcoder_ds.models.catalogue import lookup
    from qcoder_ds.models.sources import cached_path, is_assembled

    entry = lookup(name)
    if entry is None:
        return False
    if entry.parts:
        if is_assembled(entry):
            return True
        try:
            return all(metadata.version(p.distribution) == entry.parts_version
                       for p in entry.parts)
        except metadata.PackageNotFoundError:
            return False
    if cached_path(entry).exists():
        return True
    try:  # a hub model already downloaded
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return bool(entry.hub_id) and isinstance(
        try_to_load_from_cache(entry.hub_id, "config.json"), str)


class ChatService:
    """Everything the handlers call; one per server (``web_app.settings["qcoder_chat"]``)."""

    def __init__(self, kernel_manager: Any = None, history: History | None = None,
                 settings: Settings | None = None,
                 load_engine: Callable[[str], Any] | None = None):
        self.kernel_manager = kernel_manager
        self.history = history or History()
        self.settings_store = settings or Settings()
        self.load_engine = load_engine or _load_engine
        self.engines: dict[str, Any] = {}
        self.copilots: dict[str, Copilot] = {}
        self.jobs: dict[str, Job] = {}
        self.queue: list[Job] = []
        self.running: Job | None = None
        self.finished_ids: OrderedDict[str, None] = OrderedDict()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="qcoder-chat")
        self._wake: asyncio.Event | None = None
        self._scheduler: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._default: Any = None

    # ------------------------------------------------------------------ models and settings

    def default_choice(self) -> Any:
        if self._default is None:
            from qcoder_ds.models.choice import default_model

            self._default = default_model()
        return self._default

    def known_models(self) -> list[str]:
        names = model_names()
        extra = [n for n in [self.default_choice().name, *self.engines] if n not in names]
        return names + extra

    def check_model(self, name: str) -> str:
        known = self.known_models()
        if name in known:
            return name
        lowered = {k.lower(): k for k in known}
        if name.strip().lower() in lowered:
            return lowered[name.strip().lower()]
        raise ChatError(f"unknown model {name!r}{did_you_mean(name, known, True)}; known: "
                        + ", ".join(known))

    def settings(self) -> dict[str, Any]:
        values = self.settings_store.load()
        if not values.get("model"):
            values["model"] = self.default_choice().name
        return values

    def update_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate every key first, so a bad request changes nothing."""
        if not isinstance(changes, dict):
            raise ChatError("send a JSON object with any of: model, repairs, check")
        unknown = sorted(set(changes) - set(Settings.DEFAULTS))
        if unknown:
            raise ChatError(f"unknown setting(s) {', '.join(map(repr, unknown))}; settings: "
                            "model, repairs, check")
        values = self.settings_store.load()
        if "model" in changes:
            if changes["model"] in (None, ""):
                values["model"] = None
            elif not isinstance(changes["model"], str):
                raise ChatError("model must be a model name (a string)")
            else:
                values["model"] = self.check_model(changes["model"])
        if "repairs" in changes:
            r = changes["repairs"]
            if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 10:
                raise ChatError(f"repairs must be a whole number from 0 to 10, not {r!r}")
            values["repairs"] = r
        if "check" in changes:
            if not isinstance(changes["check"], bool):
                raise ChatError(f"check must be true or false, not {changes['check']!r}")
            values["check"] = changes["check"]
        self.settings_store.save(values)
        return self.settings()

    def models(self) -> dict[str, Any]:
        choice = self.default_choice()
        from qcoder_ds.models.catalogue import lookup

        rows = []
        for name in self.known_models():
            entry = lookup(name)
            default = name == choice.name
            why = choice.why if default else (entry.role if entry else "loaded in this server")
            rows.append({"name": name, "installed": name in self.engines or installed(name),
                         "default": default, "why": why})
        return {"models": rows, "current": self.settings()["model"]}

    def use_engine(self, name: str, engine: Any) -> None:
        """Serve ``name`` with an engine already loaded (the benchmark's warm engine, tests)."""
        self.engines[name] = engine
        self.copilots.pop(name, None)

    # ------------------------------------------------------------------ requests

    def submit(self, message: dict[str, Any], emit: Emit, owner: Any = None) -> Job:
        """Check an ``ask`` message, queue it and start taking its kernel snapshot."""
        self._start()
        job_id = message.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise ChatError('an "ask" message needs an "id" (a non-empty string)')
        if job_id in self.jobs:
            raise ChatError(f"request id {job_id!r} is already in use; send a new id")
        action = message.get("action") or "ask"
        if action not in ACTIONS:
            raise ChatError(f"unknown action {action!r}; actions: {', '.join(ACTIONS)}")
        request = message.get("request") or ""
        if not isinstance(request, str):
            raise ChatError('"request" must be a string')
        cell = message.get("cell")
        if cell is not None and not isinstance(cell, dict):
            raise ChatError('"cell" must be an object {source, cell_type, index, error} or null')
        if action in ("explain", "fix") and not (cell and (cell.get("source") or "").strip()) \
                and not (message.get("selection") or "").strip():
            raise ChatError(f"{action} needs the active cell (or a selection): select a code "
                            "cell and try again")
        if action == "fix" and not (cell and cell.get("error")):
            raise ChatError("fix needs the cell's error: run the cell, then ask to fix it")
        if action == "ask" and not request.strip():
            raise ChatError("the request is empty: write what you want, e.g. "
                            "`total revenue per region`")
        model = message.get("model") or self.settings()["model"]
        model = self.check_model(model) if isinstance(model, str) else None
        if model is None:
            raise ChatError('"model" must be a model name or null')
        for key in ("notebook_path", "kernel_id", "selection"):
            if message.get(key) is not None and not isinstance(message[key], str):
                raise ChatError(f'"{key}" must be a string or null')
        job = Job(job_id, request, action, model, emit, owner,
                  message.get("notebook_path") or None, message.get("kernel_id") or None,
                  cell, message.get("selection") or None)
        if job.kernel_id and self.kernel_manager is not None:
            job.snapshot = asyncio.ensure_future(kctx.take(
                self.kernel_manager, job.kernel_id, request or action))
        self.jobs[job_id] = job
        self.queue.append(job)
        if job.notebook_path:
            self._remember(job.notebook_path, {"role": "user", "id": job_id, "text": request,
                                               "action": action, "cell": cell,
                                               "time": _now()})
        self._positions()
        assert self._wake is not None
        self._wake.set()
        return job

    def stop(self, job_id: str) -> bool:
        """Stop a queued or running request; False when there is no such request."""
        job = self.jobs.get(job_id)
        if job is None:
            return job_id in self.finished_ids
        job.cancel.set()
        if job in self.queue:
            self.queue.remove(job)
            self._positions()
            if job.snapshot is not None:  # it will not be read: delete its folder when taken
                job.snapshot.add_done_callback(_close_snapshot)
        self._end(job, {"type": "stopped"}, {"stopped": True, "text": "".join(job.streamed)})
        return True

    def drop_owner(self, owner: Any) -> None:
        """A socket closed: its queued requests go (nobody would read them); a running one
        finishes and lands in the notebook's history, so a reloaded page shows it."""
        for job in [j for j in self.queue if j.owner is owner]:
            self.stop(job.id)

    async def aclose(self) -> None:
        """Cancel every request and stop the queue (the server is stopping)."""
        self.shutdown()
        if self._scheduler is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._scheduler

    def shutdown(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel.set()
        if self._scheduler is not None:
            self._scheduler.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        for copilot in self.copilots.values():
            if copilot.sandbox is not None:
                with contextlib.suppress(Exception):
                    copilot.sandbox.close()

    # ------------------------------------------------------------------ the queue

    def _start(self) -> None:
        if self._scheduler is None or self._scheduler.done():
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._scheduler = asyncio.ensure_future(self._schedule())

    def _positions(self) -> None:
        ahead = 1 if self.running is not None else 0
        for i, job in enumerate(self.queue):
            if job.position != i + ahead:
                job.position = i + ahead
                job.send({"type": "queued", "position": job.position})

    async def _schedule(self) -> None:
        assert self._wake is not None
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            job = self.queue.pop(0)
            self.running = job
            self._positions()
            try:
                await self._run(job)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the queue
                log.exception("qcoder chat: request %s failed", job.id)
                self._end(job, {"type": "error", "message": f"internal error: {e}"},
                          {"error": str(e)})
            finally:
                self.running = None
                self.jobs.pop(job.id, None)
                self._positions()

    async def _run(self, job: Job) -> None:
        job.send({"type": "started"})
        snap = None
        try:
            if job.snapshot is not None:
                snap = await job.snapshot
            if job.cancel.is_set():
                return
            assert self._loop is not None
            answer = await self._loop.run_in_executor(self._executor, self._answer, job, snap)
            self._end(job, {"type": "done", "answer": answer}, {"answer": answer})
        except GenerationCancelled:
            self._end(job, {"type": "stopped"}, {"stopped": True,
                                                  "text": "".join(job.streamed)})
        except (QcoderError, ChatError) as e:
            self._end(job, {"type": "error", "message": str(e)}, {"error": str(e)})
        finally:
            if snap is not None:
                snap.close()

    def _end(self, job: Job, event: dict[str, Any], record: dict[str, Any]) -> None:
        if job.finished:
            return
        job.send(event)
        job.finished = True
        self.jobs.pop(job.id, None)
        self.finished_ids[job.id] = None
        while len(self.finished_ids) > 1000:
            self.finished_ids.popitem(last=False)
        if job.notebook_path:
            self._remember(job.notebook_path, {"role": "assistant", "id": job.id,
                                               "action": job.action, "model": job.model,
                                               "time": _now(), **record})

    def _remember(self, path: str, message: dict[str, Any]) -> None:
        """History is written off the event loop (an fsync can take a while on a busy disk)."""
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self._append, path, message)

    def _append(self, path: str, message: dict[str, Any]) -> None:
        try:
            self.history.append(path, message)
        except OSError as e:
            log.warning("qcoder chat: could not save the history of %s: %s", path, e)

    # ------------------------------------------------------------------ the worker thread

    def _copilot(self, model: str) -> Copilot:
        if model not in self.copilots:
            if model not in self.engines:
                self.engines[model] = self.load_engine(model)
            self.copilots[model] = Copilot(self.engines[model], model=model)
        return self.copilots[model]

    def _answer(self, job: Job, snap: kctx.Snapshot | None) -> dict[str, Any]:
        """Runs in the worker thread: the same ``Copilot.ask`` the magic calls."""
        loop = self._loop
        assert loop is not None

        def on_token(piece: str) -> None:
            if job.cancel.is_set():
                raise GenerationCancelled("stopped by the user")
            job.streamed.append(piece)
            loop.call_soon_threadsafe(job.send, {"type": "token", "text": piece})

        cell = job.cell or {}
        snap = snap or kctx.empty(job.request or job.action)
        settings = self.settings()
        opts = Options(check=bool(settings["check"]), repairs=int(settings["repairs"]))
        request = snap.request if job.request.strip() else ""
        code = job.selection or cell.get("source") or None
        started = time.perf_counter()
        if job.action == "explain":
            opts.task = Task.EXPLAIN
            text = None if request else _line_by_line(code or "", snap.namespace)
            if text is not None:
                on_token(text)
                return {"cell": "", "text": text, "task": Task.EXPLAIN.value, "ok": True,
                        "summary": "explained line by line from a run on copies of the data",
                        "checks": {}, "warnings": list(snap.warnings),
                        "metadata": {}, "metadata_key": "qcoder", "first_token_s": None,
                        "total_s": round(time.perf_counter() - started, 3)}
            request, code = request or "Explain this code line by line.", code
        elif job.action == "fix":
            opts.task = Task.FIX
            kctx.with_cell_error(snap, cell.get("source"), cell.get("error"))
            code = None
        else:
            opts.task = infer_task(request, snap.context)
            if job.selection:
                request += f"\n\nSelected code:\n```python\n{job.selection}\n```"
            code = None
        copilot = self._copilot(job.model)
        answer = copilot.ask(request, snap.namespace, opts, on_token=on_token,
                             cancel=job.cancel, code=code, context=snap.context)
        return answer_json(answer, job.model, snap.warnings)


def answer_json(answer: Answer, model: str, extra_warnings: list[str] | None = None
                ) -> dict[str, Any]:
    """The ``done`` event's answer; ``cell`` starts with the header line the magic writes and
    ``metadata`` is what the magic puts under the cell's ``qcoder`` metadata key."""
    cell = ""
    if answer.cell:
        cell = (f"# qcoder ({model}, {answer.task.value}, {answer.summary()})\n"
                + answer.cell.strip() + "\n")
    return {"cell": cell, "text": answer.text, "task": answer.task.value, "ok": answer.ok,
            "summary": answer.summary() if answer.task is not Task.EXPLAIN else "",
            "checks": dict(answer.checks),
            "warnings": list(answer.warnings) + list(extra_warnings or []),
            "metadata": answer.provenance(model), "metadata_key": "qcoder",
            "first_token_s": None if answer.first_token_s is None
            else round(answer.first_token_s, 3),
            "total_s": round(answer.total_s, 3)}


def _line_by_line(code: str, namespace: dict[str, Any]) -> str | None:
    """``%qcoder explain``'s explanation (the lessons' explainer, grounded in a run on copies
    of the data), or None when it is not installed or cannot run this code."""
    try:
        from qcoder_ds.lessons.explain import explain
    except ImportError:
        return None
    try:
        return explain(code, namespace=namespace, fmt="markdown")
    except QcoderError as e:
        log.info("qcoder chat: the line-by-line explainer could not run (%s)", e)
        return None
    except Exception:  # noqa: BLE001 - the model explains instead
        log.exception("qcoder chat: the line-by-line explainer failed")
        return None


def _load_engine(model: str) -> Any:
    from qcoder_ds.engine import Engine

    return Engine.load(model, progress=False)


def _close_snapshot(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
