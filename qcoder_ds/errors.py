"""One exception family, so the CLI can print a clear message instead of a traceback."""


class QcoderError(Exception):
    """An error the user can act on: the message says what went wrong and how to fix it."""


class ModelError(QcoderError):
    """A model source is missing, corrupted, or not supported."""


class ContextLengthError(QcoderError):
    """A prompt does not fit in the model's context window."""


class GenerationCancelled(QcoderError):
    """A generation was stopped by the caller."""
