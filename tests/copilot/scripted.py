"""A scripted engine for pipeline tests: replies are fixed, so the checks around them are tested.

The real model is exercised by the few ``slow`` tests; here the point is what the pipeline does
with a given answer (validate, run, repair), which needs answers we choose.
"""

from __future__ import annotations


class Cut(str):
    """A reply that generation ended at the token budget (``finish_reason`` "length")."""

    finish_reason = "length"


class _Stream:
    """Like the engine's TextStream: iterates the reply's pieces, then says why it ended."""

    def __init__(self, reply: str):
        self._pieces = iter([reply[i:i + 7] for i in range(0, len(reply), 7)])
        self._why = getattr(reply, "finish_reason", "eos")
        self.finish_reason: str | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            self.finish_reason = self._why
            raise


class ScriptedEngine:
    max_context = 4096

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls: list[list[dict]] = []

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    def chat(self, messages, params=None, cancel=None):
        self.calls.append(messages)
        if not self.replies:
            raise AssertionError("the pipeline asked for more answers than scripted")
        return _Stream(self.replies.pop(0))
