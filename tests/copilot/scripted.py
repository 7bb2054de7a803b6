"""A scripted engine for pipeline tests: replies are fixed, so the checks around them are tested.

The real model is exercised by the few ``slow`` tests; here the point is what the pipeline does
with a given answer (validate, run, repair), which needs answers we choose.
"""

from __future__ import annotations


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
        reply = self.replies.pop(0)
        for i in range(0, len(reply), 7):
            yield reply[i:i + 7]
