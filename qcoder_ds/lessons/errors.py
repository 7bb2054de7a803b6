"""Lesson errors: each names the topic, template or line at fault and what to do."""

from __future__ import annotations

from qcoder_ds.errors import QcoderError


class LessonError(QcoderError):
    """Lesson content or a request for it cannot be used as given."""


class UnknownTopicError(LessonError):
    """No template in the curriculum matches the requested topic / level."""


class TemplateError(LessonError):
    """A template file is malformed (missing field, bad slot expression, bad TOML)."""


class GateError(LessonError):
    """An exercise failed the execution gate; nothing was written.

    ``report`` holds the per-exercise outcomes so the caller can show or save them.
    """

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class ExplainError(LessonError):
    """Code or SQL cannot be explained: it does not parse, or the dialect is unknown."""
