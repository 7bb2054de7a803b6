"""Whether the request's words name a table or one of its columns."""

from __future__ import annotations

from qcoder_ds.copilot.context import ConnectionInfo
from qcoder_ds.copilot.words import words

_STOP = {"a", "an", "the", "of", "in", "on", "and", "or", "to", "for", "by", "with", "is",
         "are", "has", "have", "id", "ids", "info", "details", "list", "all", "each"}


def mentioned(table: str, request_words: set[str], others: list[str]) -> bool:
    """Whether the request names ``table`` by a significant word of its name that the
    query's ``others`` tables do not share: "transcripts" names ``Transcripts``, not
    ``Transcript_Contents``. A name with no word of its own counts with all its words."""
    own_words = words(table) - _STOP
    own = own_words.difference(*(words(o) for o in others)) or own_words
    return bool(own & request_words)


def column_named(table: str, asked: set[str], others: list[str], info: ConnectionInfo) -> bool:
    """Whether the request names a column of ``table`` by a word that the ``others`` lack in
    their names and columns, or by a longer word that starts with one (``DestAirport``:
    "destination")."""
    def columns(name: str) -> list[str]:
        return next((list(c) for t, c in info.tables.items() if t.lower() == name.lower()), [])

    # a key named after another table (``visitor_ID`` beside ``visitor``) names that table
    theirs = set().union(*(words(c) for o in others for c in columns(o) + [o]))
    own = {w for c in columns(table) for w in words(c) - theirs - _STOP if len(w) > 2}
    return any(a == w or len(w) >= 4 and a.startswith(w) for a in asked for w in own)
