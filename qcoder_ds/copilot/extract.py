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


def _longest_parsing_prefix(body: str) -> str:
    lines = body.splitlines()
    for end in range(len(lines), 0, -1):
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
    try:
        tree = ast.parse(code)
    except SyntaxError:
        m = re.search(r"\b(WITH|SELECT)\b[^;`]*", code, re.I | re.S)
        return m.group(0).strip() if m else None
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.match(r"\s*(WITH|SELECT)\b", node.value, re.I):
                return node.value.strip().rstrip(";").strip()
    if re.match(r"\s*(WITH|SELECT)\b", code, re.I):
        return code.strip().rstrip(";")
    return None


def drop_context_echo(code: str, context: str) -> tuple[str, int]:
    """``code`` without the lines it copied from the prompt's data description, and how many.

    Only for code that does not parse: the 0.5B model sometimes continues its answer with the
    context block it was shown (``columns (name: dtype, nulls, stats):``, a CSV row), which is
    never Python. A line that parses on its own, or that is not a line of the description, is
    kept, so working code is never touched."""
    if parses(code):
        return code, 0
    described = {line.strip() for line in context.splitlines() if line.strip()}
    kept, dropped = [], 0
    for line in code.splitlines():
        if line.strip() in described and not line.lstrip().startswith("#") and \
                not parses(line.strip()):
            dropped += 1
            continue
        kept.append(line)
    return ("\n".join(kept), dropped) if dropped else (code, 0)


def parses(code: str) -> bool:
    """Whether ``code`` is valid Python."""
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True
