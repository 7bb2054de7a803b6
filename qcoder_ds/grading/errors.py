"""Grading errors: each says which file or cell is wrong and what to do about it."""

from __future__ import annotations

from qcoder_ds.errors import QcoderError


class GradingError(QcoderError):
    """An assignment, submission or gradebook cannot be used as given."""


class AssignmentError(GradingError):
    """A source notebook breaks nbgrader's rules (metadata, delimiters, duplicate ids)."""


class GradebookError(GradingError):
    """The gradebook is missing an assignment or cannot be opened."""
