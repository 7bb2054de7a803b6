"""Per-student feedback (HTML and Markdown) that never shows a hidden test.

Each page lists every graded cell's score and what the student may see: test cells are
shown as released (hidden region removed); an error raised inside a hidden region is
reported only by its exception type; a cell with hidden tests never shows a traceback (its
context lines could quote the hidden code). As a last line of defence every text on the
page is scrubbed of any line of hidden-test code, however it got there (a student cell
that printed ``In`` history, for instance).
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbgrader import utils as nbutils

from qcoder_ds.grading.gradebook import GradebookStore
from qcoder_ds.grading.scoring import cell_kind, strip_ansi
from qcoder_ds.paths import atomic_write_text

BEGIN, END = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
_LINE = re.compile(r"(?:Cell In\s*\[\d*\]|<ipython-input-[^>]*>|ipykernel_\d+/\d+\.py),? "
                   r"line (\d+)")
_TRIVIAL = {"pass", "else:", "try:", "finally:", "except:", "return", "break", "continue",
            '"""', "'''", "", ")", "]", "}", "):"}


@dataclass
class HiddenRegion:
    lines: set[int]  # 1-based line numbers of the executed source inside a hidden region
    text: list[str]  # the hidden code lines (stripped), for scrubbing


def hidden_region(source: str) -> HiddenRegion:
    lines, text, inside = set(), [], False
    for no, line in enumerate(source.split("\n"), start=1):
        if BEGIN in line:
            inside = True
            lines.add(no)
        elif END in line:
            inside = False
            lines.add(no)
        elif inside:
            lines.add(no)
            if line.strip() not in _TRIVIAL and len(line.strip()) >= 4:
                text.append(line.strip())
    return HiddenRegion(lines, text)


def failing_line(traceback: list[str]) -> int | None:
    """The line of the test cell that was running: the outermost frame, which is the test
    cell's own; inner frames are in other cells (a student's function that raised), and
    their line numbers say nothing about the test's hidden region."""
    hits = _LINE.findall(strip_ansi("\n".join(traceback)))
    return int(hits[0]) if hits else None


class Scrubber:
    """Replace any hidden-test line that appears in a text."""

    def __init__(self, hidden_lines: list[str]) -> None:
        self.lines = sorted(set(hidden_lines), key=len, reverse=True)

    def __call__(self, s: str) -> str:
        for line in self.lines:
            if line in s:
                s = s.replace(line, "[hidden test]")
        return s


def _visible_error(result: dict, region: HiddenRegion | None) -> str:
    err = result.get("error")
    if result["kind"] != "test" or result["status"] in ("passed", "partial"):
        return ""
    if not err:
        return result.get("reason", "")
    if region is not None and region.lines:
        line = failing_line(err.get("traceback", []))
        if line is None or line in region.lines:
            return f"A hidden test failed ({err['ename']})."
        return f"{err['ename']}: {err['evalue']}".strip(": ")
    tb = "\n".join(err.get("traceback", [])).strip()
    return tb or f"{err['ename']}: {err['evalue']}"


def _output_text(out: NotebookNode) -> tuple[str, str | None]:
    """(text, png base64) of one output, for display."""
    kind = out.get("output_type")
    if kind == "stream":
        return out.get("text", ""), None
    if kind == "error":
        return strip_ansi("\n".join(out.get("traceback", []))) or out.get("ename", ""), None
    data = out.get("data", {})
    return data.get("text/plain", ""), data.get("image/png")


@dataclass
class Page:
    markdown: str
    html: str
    score: float
    max_score: float


def render_notebook(student: str, assignment: str, notebook: str, results: list[dict],
                    executed: NotebookNode | None, released: NotebookNode,
                    instructor: NotebookNode, report: dict | None) -> Page:
    """One notebook's feedback page for one student."""
    inst_by_id = {c.metadata.nbgrader["grade_id"]: c for c in instructor.cells
                  if "nbgrader" in c.metadata and "grade_id" in c.metadata.nbgrader}
    rel_by_id = {c.metadata.nbgrader["grade_id"]: c for c in released.cells
                 if "nbgrader" in c.metadata and "grade_id" in c.metadata.nbgrader}
    regions = {g: hidden_region(c.source) for g, c in inst_by_id.items()}
    scrub = Scrubber([t for r in regions.values() for t in r.text])
    by_id = {r["grade_id"]: r for r in results}
    graded = [r for r in results if r["kind"] in ("test", "manual", "task")]
    score = sum(r["score"] or 0.0 for r in graded)
    max_score = sum(r["max_score"] for r in graded)
    md = [f"# {notebook} — feedback for {student}", "",
          f"Assignment **{assignment}**. Score: **{score:g} / {max_score:g}** "
          "(cells graded by hand count 0 until graded).", ""]
    hp = [f"<h1>{html.escape(notebook)} — feedback for {html.escape(student)}</h1>",
          f"<p>Assignment <b>{html.escape(assignment)}</b>. Score: <b>{score:g} / "
          f"{max_score:g}</b> (cells graded by hand count 0 until graded).</p>"]
    nb_report = next((n for n in (report or {}).get("notebooks", [])
                      if n.get("notebook") == notebook), None)
    notes = list((report or {}).get("problems", []))
    if nb_report:
        if nb_report.get("reason"):
            notes.append(nb_report["reason"])
        notes.extend(nb_report.get("events", []))
    if notes:
        md += ["## Notes", ""] + [f"- {scrub(n)}" for n in notes] + [""]
        hp += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(scrub(n))}</li>" for n in notes] + \
            ["</ul>"]
    md += ["## Scores", "", "| cell | score | status |", "|---|---|---|"]
    hp += ["<h2>Scores</h2><table><tr><th>cell</th><th>score</th><th>status</th></tr>"]
    for r in graded:
        s = "—" if r["score"] is None else f"{r['score']:g}"
        status = r["status"] + (f": {r['reason']}" if r["reason"] else "")
        md.append(f"| {r['grade_id']} | {s} / {r['max_score']:g} | {scrub(status)} |")
        hp.append(f"<tr><td>{html.escape(r['grade_id'])}</td><td>{s} / {r['max_score']:g}</td>"
                  f"<td>{html.escape(scrub(status))}</td></tr>")
    md.append("")
    hp.append("</table>")
    md += ["## Notebook", ""]
    hp.append("<h2>Notebook</h2>")
    cells = executed.cells if executed is not None else released.cells
    for cell in cells:
        meta = cell.metadata.get("nbgrader", {})
        gid = meta.get("grade_id")
        kind = cell_kind(cell) if "nbgrader" in cell.metadata else None
        source = cell.source
        if gid in rel_by_id and kind in ("test", "task") or (gid in rel_by_id and
                                                             nbutils.is_locked(cell)):
            source = rel_by_id[gid].source  # the released text: hidden tests removed
        source = scrub(source)
        res = by_id.get(gid) if gid else None
        if cell.cell_type == "markdown":
            md += [source, ""]
            hp.append(f"<div class='md'><pre>{html.escape(source)}</pre></div>")
        else:
            md += ["```python", source, "```", ""]
            hp.append(f"<pre class='code'>{html.escape(source)}</pre>")
            region = regions.get(gid) if kind == "test" else None
            hide_outputs = region is not None and bool(region.lines)
            for out in cell.get("outputs", []):
                if hide_outputs and out.get("output_type") == "error":
                    continue  # reported below, without the hidden code
                text, png = _output_text(out)
                text = scrub(strip_ansi(text))
                if text:
                    md += ["```", text.rstrip("\n"), "```", ""]
                    hp.append(f"<pre class='out'>{html.escape(text)}</pre>")
                if png:
                    hp.append(f"<img src='data:image/png;base64,{png.strip()}'/>")
        if res is not None and res["kind"] in ("test", "manual", "task"):
            s = "—" if res["score"] is None else f"{res['score']:g}"
            line = f"Score: {s} / {res['max_score']:g}"
            err = scrub(_visible_error(res, regions.get(gid)))
            md += [f"**{line}**" + (f" — {scrub(res['reason'])}" if res["reason"] else ""), ""]
            hp.append(f"<p class='score'><b>{line}</b>"
                      + (f" — {html.escape(scrub(res['reason']))}" if res["reason"] else "")
                      + "</p>")
            if err:
                md += ["```", err, "```", ""]
                hp.append(f"<pre class='err'>{html.escape(err)}</pre>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}pre{background:#f6f6f6;"
             "padding:.5em;white-space:pre-wrap}.err{background:#fee}.score{color:#225}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(notebook)}</title><style>{style}</style></head><body>"
            + "\n".join(hp) + "</body></html>\n")
    return Page("\n".join(md) + "\n", page, score, max_score)


def write_feedback(gradebook: str | os.PathLike, assignment: str,
                   autograded: str | os.PathLike | None, out_dir: str | os.PathLike,
                   students: list[str] | None = None) -> list[Path]:
    """Write ``out_dir/<student>/<assignment>/<notebook>.{html,md}`` for graded students."""
    written: list[Path] = []
    with GradebookStore(gradebook) as store:
        defs = store.assignment_defs(assignment)
        reports = store.submission_reports(assignment)
        for student in sorted(reports):
            if students and student not in students:
                continue
            results = store.cell_results(assignment, student)
            for d in defs:
                executed = None
                if autograded is not None:
                    p = Path(autograded) / student / assignment / f"{d.name}.ipynb"
                    if p.is_file():
                        executed = nbformat.read(str(p), as_version=4)
                page = render_notebook(student, assignment, d.name,
                                       [r for r in results if r["notebook"] == d.name],
                                       executed, d.released, d.instructor, reports[student])
                base = Path(out_dir) / student / assignment
                for ext, text in (("html", page.html), ("md", page.markdown)):
                    atomic_write_text(base / f"{d.name}.{ext}", text)
                    written.append(base / f"{d.name}.{ext}")
    return written
