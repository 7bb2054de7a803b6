"""Helpers of the chat server tests: a paced, cancellable scripted engine and socket helpers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from copilot.scripted import ScriptedEngine, _Stream

from qcoder_ds.errors import GenerationCancelled
from qcoder_ds.models.choice import default_model

MODEL = default_model().name  # the 0.5B: tests/conftest.py pins it through QCODER_MODEL


class _PacedStream:
    """The scripted reply, ``delay`` seconds a piece, stopping on ``cancel`` before a piece
    as the real TokenGeneration does (it raises GenerationCancelled)."""

    def __init__(self, reply: str, delay: float, cancel, engine: PacedEngine):
        self._inner = _Stream(reply)
        self.delay, self.cancel, self.engine = delay, cancel, engine
        self.finish_reason = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.cancel is not None and self.cancel.is_set():
            self.finish_reason = "cancelled"
            self.engine.cancelled += 1
            raise GenerationCancelled("generation cancelled")
        time.sleep(self.delay)
        try:
            piece = next(self._inner)
        except StopIteration:
            self.finish_reason = self._inner.finish_reason
            raise
        self.engine.pieces += 1
        return piece


class PacedEngine(ScriptedEngine):
    """tests/copilot's scripted engine, streamed at a pace and cancellable; ``default`` answers
    when the script is used up. Only the model is scripted: the server, the kernel, the
    pipeline and the sandbox are real."""

    def __init__(self, replies=(), delay: float = 0.0, default: str | None = None):
        super().__init__(replies)
        self.delay, self.default = delay, default
        self.pieces = 0
        self.cancelled = 0

    def chat(self, messages, params=None, cancel=None):
        self.calls.append(messages)
        if not self.replies and self.default is None:
            raise AssertionError("the pipeline asked for more answers than scripted")
        reply = self.replies.pop(0) if self.replies else self.default
        return _PacedStream(reply, self.delay, cancel, self)


def use(chat, engine) -> PacedEngine:
    chat.use_engine(MODEL, engine)
    return engine


async def receive(ws, timeout: float = 30.0) -> dict:
    text = await asyncio.wait_for(ws.read_message(), timeout)
    assert text is not None, "the socket closed"
    return json.loads(text)


async def until(ws, job_id: str | None, *types: str, timeout: float = 60.0) -> list[dict]:
    """Every event (of ``job_id``, or any) up to and including the first of ``types``."""
    events = []
    deadline = time.monotonic() + timeout
    while True:
        event = await receive(ws, max(0.1, deadline - time.monotonic()))
        if job_id is None or event.get("id") == job_id:
            events.append(event)
            if event["type"] in types:
                return events


def ask(request: str, **kw) -> dict:
    msg = {"type": "ask", "id": kw.pop("id", uuid.uuid4().hex[:8]), "request": request,
           "action": "ask", "notebook_path": None, "kernel_id": None, "cell": None,
           "selection": None, "model": None}
    msg.update(kw)
    return msg
