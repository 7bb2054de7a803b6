"""Reading a request's words: the one place that splits request text into words.

``identifiers`` are the names a request may use as written (``sales``, ``order_date``);
``words`` are lower-case words in a crude singular, for matching a request against table and
column names (``Has_Pet``, ``hasPet`` and ``has pets`` alike).
"""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


def identifiers(text: str) -> list[str]:
    """The names in ``text``, as written, in order (Python identifiers: ``df``, ``order_date``)."""
    return _IDENTIFIER.findall(text)


def words(text: str) -> set[str]:
    """Lower-case words of ``text`` (``Has_Pet``, ``hasPet`` and ``has pet`` alike), each also
    in a crude singular, so ``visitors`` matches ``visitor`` but not ``visit``."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    out = set()
    for w in re.findall(r"[a-z0-9]+", spaced.lower()):
        out.add(w)
        for suffix in ("ies", "es", "s"):
            if w.endswith(suffix) and len(w) > len(suffix) + 2:
                out.add(w[: -len(suffix)] + ("y" if suffix == "ies" else ""))
    return out
