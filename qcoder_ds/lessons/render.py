"""An explanation as Markdown, as notebook cells, or as a standalone HTML page."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from qcoder_ds.lessons.explanation import Explanation, Step

if TYPE_CHECKING:
    import nbformat


def _docs_md(step: Step) -> str:
    if not step.calls:
        return ""
    items = [f"`{c['qualname']}`: {c['doc']}" for c in step.calls if c["doc"]]
    return ("\n\n" + "\n".join(f"  - {i}" for i in items)) if items else ""


def _lines(step: Step, language: str) -> str:
    if language == "sql":
        return f"Step {step.line}"
    return f"Line {step.line}" if step.end_line == step.line else \
        f"Lines {step.line}–{step.end_line}"


def to_markdown(ex: Explanation) -> str:
    """One section per statement: the code, what it does, what it did."""
    lang = "sql" if ex.language == "sql" else "python"
    what = "SQL" if lang == "sql" else "code"
    out = [f"# {ex.title}" if ex.title else f"# What this {what} does, step by step"]
    for s in ex.steps:
        out.append(f"\n## {_lines(s, ex.language)}\n\n```{lang}\n{s.code}\n```\n")
        out.append(f"**What it does:** {s.what}{_docs_md(s)}\n")
        if s.did:
            out.append(f"**What it did:** {s.did}\n")
    return "\n".join(out).strip() + "\n"


def to_cells(ex: Explanation) -> list[nbformat.NotebookNode]:
    """Markdown cells (one per statement), ready to insert into a notebook."""
    import nbformat  # the jupyter/teach extra: markdown and html render without it

    cells = []
    for s in ex.steps:
        lang = "sql" if ex.language == "sql" else "python"
        body = (f"**{_lines(s, ex.language)}**\n\n```{lang}\n{s.code}\n```\n\n"
                f"**What it does:** {s.what}{_docs_md(s)}")
        if s.did:
            body += f"\n\n**What it did:** {s.did}"
        cells.append(nbformat.v4.new_markdown_cell(body, metadata={"qcoder": {
            "role": "explanation", "line": s.line, "facts": s.facts}}))
    return cells


def to_notebook(ex: Explanation) -> nbformat.NotebookNode:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = to_cells(ex)
    return nb


def _inline(text: str) -> str:
    """Escape, then turn `code` spans and **bold** into HTML."""
    parts = html.escape(text).split("`")
    out = []
    for i, p in enumerate(parts):
        out.append(f"<code>{p}</code>" if i % 2 else p.replace("**", ""))
    return "".join(out)


def to_html(ex: Explanation) -> str:
    """A self-contained page: a table of code, what it does and what it did."""
    rows = []
    for s in ex.steps:
        docs = "".join(f"<li><code>{html.escape(c['qualname'])}</code>: {html.escape(c['doc'])}"
                       "</li>" for c in s.calls if c["doc"])
        rows.append(
            f"<tr><td class=ln>{html.escape(_lines(s, ex.language))}</td>"
            f"<td><pre>{html.escape(s.code)}</pre></td>"
            f"<td>{_inline(s.what)}{f'<ul>{docs}</ul>' if docs else ''}</td>"
            f"<td{' class=err' if s.error else ''}>{_inline(s.did)}</td></tr>")
    title = html.escape(ex.title or "Step by step")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border: 1px solid #ccc; padding: .5em; vertical-align: top; text-align: left; }}
pre {{ margin: 0; white-space: pre-wrap; }}
td.ln {{ white-space: nowrap; color: #555; }} td.err {{ color: #a00; }}
</style></head><body>
<h1>{title}</h1>
<table><thead><tr><th></th><th>Code</th><th>What it does</th><th>What it did</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


def render(ex: Explanation, fmt: str) -> str:
    """``fmt`` is markdown, html or ipynb (a notebook of explanation cells, as JSON)."""
    if fmt in ("md", "markdown"):
        return to_markdown(ex)
    if fmt == "html":
        return to_html(ex)
    if fmt in ("ipynb", "cells", "notebook"):
        import nbformat

        return nbformat.writes(to_notebook(ex))
    raise ValueError(f"unknown format {fmt!r}: use markdown, html or ipynb")
