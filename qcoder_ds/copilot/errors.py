"""Errors the copilot raises: each message says what went wrong and what to do."""

from __future__ import annotations

from qcoder_ds.errors import QcoderError


class CopilotError(QcoderError):
    """A request the copilot cannot serve as given (empty, too long, nothing to work on)."""


class DatabaseError(CopilotError):
    """A SQL connection in scope could not be read (locked, closed, unreadable)."""


class UnsafeCodeError(CopilotError):
    """``--safe`` is on and the generated code does something the safety check blocks."""
