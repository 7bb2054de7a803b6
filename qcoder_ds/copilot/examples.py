"""The example result a request shows, used to confirm an answer.

Data-science questions often show the table they want ("desired output:", as in most of
DS-1000, which is made of such questions). When the checked cell's result, printed the way
pandas prints it, appears in the request, the answer does what the example asks; the copilot
then prefers it over candidates whose result the request does not show. Numbers are compared
to a relative 1e-3 (examples are typed with fewer digits than pandas prints).

Two kinds of accidental match are not confirmations:

- the input. A result equal to the input data, or one found only where the request shows the
  input table (the first rows of the input, a column of it), confirms nothing: the part of
  the request that prints an input object is masked before the result is looked for.
- a list that is not one. A result printed as a Python list (``[...]``) confirms only where
  the request shows that list in brackets, not where its items happen to follow each other
  in running text ("abc, def, ghi" is one joined string, not four items).
"""

from __future__ import annotations

import math
import re
from typing import Any

#: a result printed in fewer tokens than this would match by accident ("0", "True")
MIN_TOKENS = 4


def tokens(text: str, brackets: bool = False) -> list[str | float]:
    """Whitespace-separated tokens, numbers as floats; brackets and commas split tokens.
    With ``brackets``, square brackets are kept as tokens of their own (to compare lists)."""
    out: list[str | float] = []
    text = re.sub(r"([\[\]])", r" \1 ", text) if brackets else text
    for t in re.sub(r"[(),]" if brackets else r"[\[\](),]", " ", text).split():
        try:
            out.append(float(t))
        except ValueError:
            out.append(t.strip("'\""))
    return [t for t in out if t != ""]


def _same(a: str | float, b: str | float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= 1e-3 * max(1.0, abs(a), abs(b))
    return a == b


def _starts(needle: list[str | float], hay: list[str | float]) -> list[int]:
    """Where ``needle`` occurs as a contiguous run of ``hay``."""
    n = len(needle)
    return [i for i in range(len(hay) - n + 1)
            if all(_same(hay[i + j], needle[j]) for j in range(n))]


def appears_in(needle: list[str | float], hay: list[str | float],
               masked: frozenset[int] = frozenset()) -> bool:
    """Whether ``needle`` is a contiguous run of ``hay`` that touches no ``masked`` position."""
    n = len(needle)
    return any(not masked.intersection(range(i, i + n)) for i in _starts(needle, hay))


def _shown_inputs(hay: list[str | float], inputs: list[str]) -> frozenset[int]:
    """The positions of ``hay`` where the request prints one of the input objects."""
    out: set[int] = set()
    for form in inputs:
        needle = tokens(form)
        if len(needle) >= MIN_TOKENS:
            for i in _starts(needle, hay):
                out.update(range(i, i + len(needle)))
    return frozenset(out)


_LIST = re.compile(r"\[[^\[\]\n]*,[^\[\]\n]*,[^\[\]\n]*\]")
_CODE = re.compile(r"=|#|\bimport\b|^\s*(def|for|if|print|return)\b|\w\(")


#: the last line of a Series as pandas prints it ("Name: text, dtype: object")
_SERIES_FOOTER = re.compile(r"^\s*(?:Name: [^,\n]+, )?(?:Length: \d+, )?dtype: \w+\s*$")


def shows_table(request: str) -> bool:
    """Whether the request prints a table or list that is not code: three or more consecutive
    lines of several tokens, two with numbers in them (a DataFrame as pandas prints it), a
    Series as pandas prints it (its ``dtype:`` line), or a bracketed list of three or more
    items. Only then is it worth drawing extra candidates to
    find one that matches. Code in the request (``df = pd.DataFrame({'a': [1, 2, 3]})``) is
    not an example of the result."""
    run, numeric = 0, 0
    for line in request.splitlines():
        if _SERIES_FOOTER.match(line):
            return True
        if _CODE.search(line):
            run, numeric = 0, 0
            continue
        if _LIST.search(line):
            return True
        if len(line.split()) < 2 or line.rstrip().endswith((".", ":", "?")):
            run, numeric = 0, 0
            continue
        run += 1
        numeric += any(t.replace(".", "", 1).lstrip("-").isdigit() for t in line.split())
        if run >= 3 and numeric >= 2:
            return True
    return False


def confirmed(request: str, value: dict[str, Any] | None) -> bool:
    """Whether the request shows the result described by ``value`` (the sandbox's description
    of the cell's result: its printed forms, and whether it is just the input data)."""
    if not value or value.get("is_input"):
        return False
    hay = tokens(request)
    masked = _shown_inputs(hay, value.get("inputs_printed") or [])
    # a list written in the request's code (``pd.DataFrame({'text': ['abc', 'def']})``) is
    # the input being built, not an example of the result
    listed = tokens("\n".join(line for line in request.splitlines()
                              if not _CODE.search(line)), brackets=True)
    for form in value.get("printed") or []:
        if form.lstrip().startswith("["):  # a list, or an array as numpy prints it
            needle = tokens(form, brackets=True)
            if len(needle) >= MIN_TOKENS + 2 and appears_in(needle, listed):
                return True
            continue
        needle = tokens(form)
        if len(needle) >= MIN_TOKENS and appears_in(needle, hay, masked):
            return True
    return False
