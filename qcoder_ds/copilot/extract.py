"""Getting the code out of a chat answer: the fenced block(s), or the whole answer if bare."""

from __future__ import annotations

import ast
import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block as (language, body); an unterminated last block counts too."""
    return [(m.group(1).lower(), m.group(2).rstrip()) for m in _FENCE.finditer(text)]


def extract_code(text: str, language: str = "python") -> str:
    """The code to put in the cell.

    Prefers blocks tagged ``language``; joins several of them (models often split imports and
    code). Without fences, takes the answer itself when it parses (for SQL: when it starts with
    a SQL keyword), else the longest prefix of lines that parses.
    """
    blocks = code_blocks(text)
    aliases = {"python": {"python", "py", "python3", "ipython"}, "sql": {"sql", "sqlite"}}
    wanted = aliases.get(language, {language})
    tagged = [b for lang, b in blocks if lang in wanted]
    if tagged:
        return "\n\n".join(tagged).strip()
    untagged = [b for lang, b in blocks if not lang]
    if untagged:
        return "\n\n".join(untagged).strip()
    if blocks:
        return blocks[0][1].strip()
    body = text.strip()
    if language == "sql":
        m = re.search(r"\b(WITH|SELECT)\b.*", body, re.S | re.I)
        return m.group(0).strip().rstrip(";") if m else body
    return _longest_parsing_prefix(body)


#: how many shorter prefixes are tried before an unparsable answer is kept as it is
_PREFIX_TRIES = 200


def _longest_parsing_prefix(body: str) -> str:
    """The longest run of leading lines that parses, searched down from the line Python's
    parser stopped at (so 10,000 lines of junk cost a few hundred parses, not 10,000)."""
    lines = body.splitlines()
    tree, error = parse_python(body)
    if tree is not None:
        return body
    stop = len(lines)
    if isinstance(error, SyntaxError) and error.lineno:
        stop = min(stop, error.lineno)
    for end in range(stop, max(0, stop - _PREFIX_TRIES), -1):
        chunk = "\n".join(lines[:end])
        if parses(chunk):
            return chunk.strip()
    return body


def extract_sql(text: str) -> str:
    """A SQL answer: the ```sql block, or a query pulled out of a Python block or bare text."""
    blocks = code_blocks(text)
    for lang, body in blocks:
        if lang in ("sql", "sqlite"):
            return body.strip().rstrip(";").strip()
    for _lang, body in blocks:
        q = _sql_in_python(body)
        if q:
            return q
    return extract_code(text, "sql").strip().rstrip(";").strip()


def _sql_in_python(code: str) -> str | None:
    """The first string literal in ``code`` that looks like a query."""
    tree, _ = parse_python(code)
    if tree is None:
        m = re.search(r"\b(WITH|SELECT)\b[^;`]*", code, re.I | re.S)
        return m.group(0).strip() if m else None
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.match(r"\s*(WITH|SELECT)\b", node.value, re.I):
                return node.value.strip().rstrip(";").strip()
    if re.match(r"\s*(WITH|SELECT)\b", code, re.I):
        return code.strip().rstrip(";")
    return None


#: a comment this long that begins a line of the description is a copy cut off by the budget
_ECHO_MIN_PREFIX = 12


def drop_context_echo(code: str, context: str) -> tuple[str, int]:
    """``code`` without the lines it copied from the prompt's data description, and how many.

    Models continue their answer with the context block they were shown, in two forms: as
    bare lines (``columns (name: dtype, nulls, stats):``, a CSV row), which are never Python,
    and as ``#`` comments, which parse and so pass every check while computing nothing (the
    1.5B model wrote such comments until its token budget ended). Bare copied lines go when
    they do not parse; copied comments always go, since a comment changes nothing the cell
    does. A line that is not a line of the description is kept, so working code is never
    touched."""
    described = [_echo_key(line) for line in context.splitlines()]
    described_set = {d for d in described if d}
    bare = {line.strip() for line in context.splitlines() if line.strip()}
    whole = parses(code)
    kept, dropped = [], 0
    lines = code.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("#"):
            if _copied_comment(_echo_key(stripped), described, described_set,
                               cut=i == len(lines) - 1):
                dropped += 1
                continue
        elif not whole and stripped in bare and not parses(stripped):
            dropped += 1
            continue
        kept.append(line)
    return ("\n".join(kept).strip("\n"), dropped) if dropped else (code, 0)


def _echo_key(line: str) -> str:
    """A description or comment line compared without its ``#`` marks, case and spacing."""
    return " ".join(re.sub(r"^[#\s]+", "", line).split()).lower()


def _copied_comment(key: str, described: list[str], described_set: set[str],
                    cut: bool) -> bool:
    """A comment that is a line of the description, or (on the answer's last line, where the
    token budget cuts) the start of one."""
    if not key:
        return False
    if key in described_set:
        return True
    return cut and len(key) >= _ECHO_MIN_PREFIX and any(d.startswith(key) for d in described
                                                        if d)


#: what ``ast.parse`` raises on text a model can write: bad syntax, NUL bytes (ValueError
#: before Python 3.12), lone surrogates (UnicodeError), and nesting or length the parser
#: gives up on (MemoryError, RecursionError)
PARSE_ERRORS = (SyntaxError, ValueError, UnicodeError, MemoryError, RecursionError)


def parse_python(code: str) -> tuple[ast.Module | None, BaseException | None]:
    """The module, or None and why not; never raises on any text."""
    try:
        return ast.parse(code), None
    except PARSE_ERRORS as e:
        return None, e


def parse_problem(error: BaseException) -> str:
    """What :func:`parse_python`'s error means, in words the model and the user can act on."""
    if isinstance(error, SyntaxError) and not isinstance(error, UnicodeError):
        return f"SyntaxError: {error.msg}"
    if isinstance(error, UnicodeError):
        return "the code contains characters that are not valid text (broken Unicode)"
    if isinstance(error, ValueError):
        return "the code contains NUL bytes: binary data, not Python"
    return "the code is nested too deeply or is too long for Python's parser"


def parses(code: str) -> bool:
    """Whether ``code`` is valid Python."""
    return parse_python(code)[0] is not None
