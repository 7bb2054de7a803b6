"""One request end to end: context -> prompt -> model -> extract -> validate -> check -> cell.

The magic, ``qcoder ask`` and ``qcoder eval`` all call :meth:`Copilot.ask`, so what is measured
is what users get. The engine is anything with ``chat(messages, params, cancel)`` streaming text
pieces, ``count_tokens`` and ``max_context`` (``qcoder_ds.engine.Engine``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from qcoder_ds.copilot import context as ctxmod
from qcoder_ds.copilot import sql_rows
from qcoder_ds.copilot.checks import (
    RUN_RULES,
    STATIC_RULES,
    Cell,
    Rule,
    Verdict,
    apply,
    named_result,
    uncalled_function,
)
from qcoder_ds.copilot.errors import CopilotError, UnsafeCodeError
from qcoder_ds.copilot.examples import confirmed, shows_table
from qcoder_ds.copilot.extract import extract_code, extract_sql
from qcoder_ds.copilot.figure_checks import FIGURE_RULES
from qcoder_ds.copilot.prompts import Prompt, build_prompt, repair_messages
from qcoder_ds.copilot.python_fixes import PyContext, fix_python
from qcoder_ds.copilot.repair import Attempt, majority, problems
from qcoder_ds.copilot.safety import check_safety
from qcoder_ds.copilot.sandbox import Limits, Sandbox
from qcoder_ds.copilot.sql_values import check_values
from qcoder_ds.copilot.tasks import Task, infer_task
from qcoder_ds.copilot.validate import (
    Issue,
    Kind,
    check_uses_data,
    validate_python,
)
from qcoder_ds.copilot.validate_sql import sql_cell, validate_sql
from qcoder_ds.copilot.words import identifiers

log = logging.getLogger(__name__)

#: a request longer than this many characters is refused before anything is tokenized
MAX_REQUEST_CHARS = 20_000
_MAKE_DATA = ("create", "generate", "make", "build", "random", "simulate", "synthetic", "load",
              "read")
#: a request for a function gets its data as an argument, so it needs none in scope
_ASKS_FUNCTION = re.compile(r"\bdef \w+\(|\bfunction\b", re.I)
#: why generation stopped when it ran out of room: the answer is cut, not finished
_CUT = ("length", "context")
#: verdicts a cell that ran implies, left out of its header
_IMPLIED = {"computes something", "the result has values (not all NaN)"}
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class EngineLike(Protocol):
    max_context: int

    def chat(self, messages: list[dict[str, str]], params: Any = None,
             cancel: Any = None) -> Iterator[str]: ...

    def count_tokens(self, text: str) -> int: ...


@dataclass
class Options:
    """How one request is served (the magic's flags map onto these)."""

    task: Task | None = None
    check: bool = True  # run the candidate in the sandbox
    safe: bool = False  # block (not just warn about) unsafe code
    repairs: int = 2  # at most this many repair rounds
    samples: int = 1  # k candidates; >1 samples with temperature and votes on the results
    example_samples: int = 3  # more candidates when the request shows a result none gives
    temperature: float = 0.7  # for samples after the first, and for repairs
    context_tokens: int = 1500
    max_new_tokens: int = 384
    seed: int = 0
    result_name: str | None = None  # the variable holding the answer, if the request names one
    limits: Limits = field(default_factory=Limits)


@dataclass
class Answer:
    """What the copilot produced, how it was checked, and how long it took."""

    task: Task
    request: str
    cell: str = ""  # the code to insert (empty for explain)
    text: str = ""  # the explanation, or the raw model text
    prompt: Prompt | None = None
    attempts: list[Attempt] = field(default_factory=list)  # the chosen one and its repairs
    candidates: list[Attempt] = field(default_factory=list)  # every first-round answer
    example_repairs: list[Attempt] = field(default_factory=list)  # tried, none gave the example
    example_matched: bool = False  # the result is one the request shows
    checks: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    ok: bool = False
    first_token_s: float | None = None
    total_s: float = 0.0
    sql: str | None = None

    @property
    def repairs(self) -> int:
        return max(0, len(self.attempts) - 1)

    def summary(self) -> str:
        """What the checks verified and what they did not, for the cell's header: "checked:
        ran on a sample; one bar per region; not verified: the values". Only what a check
        did is claimed."""
        final = self.attempts[-1] if self.attempts else None
        if not self.ok:
            failed = [k for k, v in self.checks.items() if v in ("failed", "not found")]
            return "NOT passing the checks" + (f": {', '.join(failed[:3])}" if failed else "")
        done = []
        ran = self.checks.get("ran on sample")
        if ran == "passed":
            done.append("ran on a read-only copy of the database" if self.task is Task.SQL
                        else "ran on a sample")
        elif self.task is Task.SQL:
            done.append("checked against the schema, not run")
        else:
            done.append("not run")
        if final is not None:
            done += list(dict.fromkeys(v.verified for v in final.verdicts
                                       if v.passed and v.verified not in _IMPLIED))
        if self.example_matched:
            done.append("gives the request's example")
        return f"checked: {'; '.join(done)}; not verified: the values"

    def provenance(self, model: str) -> dict[str, Any]:
        """What goes in the inserted cell's metadata."""
        return {"model": model, "task": self.task.value,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "checks": dict(self.checks), "repairs": self.repairs, "ok": self.ok,
                "warnings": list(self.warnings), "seconds": round(self.total_s, 2)}


def check_request(request: str) -> str:
    """Refuse empty and oversized requests with a message that says what to do."""
    text = (request or "").strip()
    if not text:
        raise CopilotError("the request is empty: write what you want below `%%qcoder`, e.g. "
                           "`%%qcoder` + `total revenue per region`")
    if len(text) > MAX_REQUEST_CHARS:
        raise CopilotError(f"the request is {len(text):,} characters; the limit is "
                           f"{MAX_REQUEST_CHARS:,}. Put large text in a variable and refer to "
                           "the variable by name instead of pasting it")
    return text


@dataclass
class Request:
    """One request being served: what was asked, against what, and how. Built once by
    :meth:`Copilot.ask` (the request's words parsed here, once); every stage reads it, and
    what they produce goes on ``answer``."""

    text: str
    namespace: Mapping[str, Any]
    opts: Options
    ctx: ctxmod.KernelContext
    task: Task
    words: frozenset[str]  # the request's words, lower-cased
    answer: Answer
    started: float
    on_token: Callable[[str], None] | None = None
    cancel: Any = None
    code: str | None = None  # explain: the code to explain
    prompt: Prompt | None = None

    def say(self, text: str) -> None:
        if self.on_token:
            self.on_token(text)


class Copilot:
    """Serves requests with one engine and one sandbox (both reused across requests).

    :meth:`ask` runs the stages in order on one :class:`Request`: context (``_request``),
    prompt (``_prompt``), candidates (``_candidates``: generate, extract, fix, validate,
    check), choose (``_choose``: vote, repair) and cell (``_finish``)."""

    def __init__(self, engine: EngineLike, sandbox: Sandbox | None = None, model: str = ""):
        self.engine = engine
        self.sandbox = sandbox
        self.model = model

    def _sandbox(self, limits: Limits) -> Sandbox:
        if self.sandbox is None or self.sandbox.limits != limits:
            if self.sandbox is not None:
                self.sandbox.close()
            self.sandbox = Sandbox(limits)
        return self.sandbox

    # ---------------------------------------------------------------- main entry

    def ask(self, request: str, namespace: Mapping[str, Any], opts: Options | None = None,
            on_token: Callable[[str], None] | None = None, cancel: Any = None,
            code: str | None = None, context: ctxmod.KernelContext | None = None) -> Answer:
        """Serve one request against ``namespace`` (the kernel's user namespace).
        ``context``: the context already described where the full objects live (the chat
        server's ``namespace`` holds only sample copies, so it ships the kernel's own)."""
        req = self._request(request, namespace, opts or Options(), on_token, cancel, code,
                            context)
        req.prompt = self._prompt(req)
        req.answer.prompt = req.prompt
        if req.task is Task.EXPLAIN:
            return self._explain(req)
        self._candidates(req)
        return self._finish(req, self._choose(req))

    def check(self, request: str, namespace: Mapping[str, Any], code: str,
              opts: Options | None = None) -> Answer:
        """The verdict :meth:`ask` would give ``code`` (a cell or, for SQL, a query) as its
        answer to ``request``, with no model call: the same fixes, checks and header. A new
        check is measured with it on recorded answers (``benchmarks/checks_replay.py``)."""
        req = self._request(request, namespace, opts or Options(), None, None, None)
        req.prompt = self._prompt(req)
        fence = "sql" if req.task is Task.SQL else "python"
        attempt = self._checked(f"```{fence}\n{code}\n```", req)
        req.answer.attempts = req.answer.candidates = [attempt]
        req.answer.example_matched = self._matches_example(attempt, req.text)
        return self._finish(req, attempt)

    # ---------------------------------------------------------------- stages

    def _request(self, text: str, namespace: Mapping[str, Any], opts: Options,
                 on_token: Callable[[str], None] | None, cancel: Any,
                 code: str | None, context: ctxmod.KernelContext | None = None) -> Request:
        """Context: the live objects the request can use, its task, and its words."""
        started = time.perf_counter()
        text = ctxmod.interpolate(text or "", namespace)
        ctx = context if context is not None else ctxmod.collect(namespace, text)
        task = opts.task or infer_task(text, ctx)
        if task is Task.FIX and not (text or "").strip():
            text = "fix the cell"
        if task not in (Task.FIX, Task.EXPLAIN) or text:
            text = check_request(text)
        if opts.result_name is None and task in (Task.PANDAS, Task.FIX):
            opts = dataclasses.replace(opts, result_name=named_result(text, namespace))
        words = frozenset(w.lower() for w in identifiers(text))
        return Request(text, namespace, opts, ctx, task, words, Answer(task=task, request=text),
                       started, on_token, cancel, code)

    def _prompt(self, req: Request) -> Prompt:
        """The prompt, its context cut to what fits; a request that cannot be served is
        refused here, with what to do."""
        count = getattr(self.engine, "count_tokens", ctxmod.approx_tokens)
        room = int(getattr(self.engine, "max_context", 4096)) - req.opts.max_new_tokens - 400
        if count(req.text) > room:
            raise CopilotError(f"the request is {count(req.text)} tokens; with the answer it "
                               f"does not fit the model's {self.engine.max_context}-token "
                               "context. Shorten it")
        connection = ctxmod.require_sql(req.ctx) if req.task is Task.SQL else None
        _refuse_without_data(req)
        return build_prompt(req.task, req.text, req.ctx,
                            budget=max(200, min(req.opts.context_tokens, room)),
                            count_tokens=count, connection=connection, code=req.code)

    def _explain(self, req: Request) -> Answer:
        answer = req.answer
        answer.text = self._stream(req, req.prompt.messages, self._params(req.opts, 0),
                                   req.on_token, prefix="")[0]
        answer.ok = bool(answer.text.strip())
        answer.total_s = time.perf_counter() - req.started
        return answer

    def _candidates(self, req: Request) -> None:
        """The first answer (streamed), the other samples (not streamed: only the one chosen
        is shown), and more where the request shows an example result none of them gives."""
        answer, opts = req.answer, req.opts
        first = self._attempt(req, req.prompt.messages, 0, 0, req.on_token)
        answer.attempts, answer.candidates = [first], [first]
        if opts.samples > 1:
            req.say(f"\n# checking {opts.samples - 1} more candidate(s) and voting on the "
                    "results\n")
        for k in range(1, opts.samples):
            answer.candidates.append(self._attempt(req, req.prompt.messages, k, 0, None))
        if not self._wants_example(req.prompt, opts) or \
                any(self._matches_example(c, req.text) for c in answer.candidates):
            return
        req.say("\n# the request shows an example result; looking for an answer that gives "
                "it\n")
        for k in range(opts.samples, opts.samples + opts.example_samples):
            extra = self._attempt(req, req.prompt.messages, k, 0, None)
            answer.candidates.append(extra)
            if self._matches_example(extra, req.text):
                break

    def _choose(self, req: Request) -> Attempt:
        """The answer to show: one that gives the request's example, else the majority of
        those that passed; if none passed, the first one repaired."""
        answer = req.answer
        matching = [c for c in answer.candidates if self._matches_example(c, req.text)]
        answer.example_matched = bool(matching)
        final = majority(matching or answer.candidates)
        if final is None:
            self._repair(req)
            # a repaired cell can give the request's example too: say so
            answer.example_matched = self._matches_example(answer.attempts[-1], req.text)
            return answer.attempts[-1]
        if final is not answer.attempts[0]:
            answer.attempts = [final]
        if not matching and self._wants_example(req.prompt, req.opts):
            return self._repair_to_example(req, final)
        return final

    def _repair_to_example(self, req: Request, final: Attempt) -> Attempt:
        """The request shows the result it wants and no candidate gives it: up to
        ``opts.repairs`` rounds, each told what the last cell's result was. A repair that
        gives the example becomes the answer; otherwise the chosen one stays (not ok), and
        the rounds tried are kept on ``answer.example_repairs``."""
        answer, last = req.answer, final
        for round_ in range(1, req.opts.repairs + 1):
            found = [_example_issue(last)] if last.passed else problems(last)
            req.say(f"\n\n# repair {round_}: {found[0].splitlines()[0][:200]}\n")
            last = self._attempt(req, repair_messages(req.prompt, found), 0, round_,
                                 req.on_token)
            answer.example_repairs.append(last)
            if self._matches_example(last, req.text):
                answer.attempts = [final, *answer.example_repairs]
                answer.example_repairs = []
                answer.example_matched = True
                return last
        return final

    def _finish(self, req: Request, final: Attempt) -> Answer:
        """The cell, and what its checks said (to the user and in the cell's metadata)."""
        answer, opts, task = req.answer, req.opts, req.task
        answer.ok = final.passed
        answer.cell = _printable(final.code)
        answer.checks = self._checks(final, opts, task)
        if self._wants_example(req.prompt, opts):
            # the request shows the result it wants: a cell that does not give it is not ok,
            # however well it ran (on DS-1000, most such cells fail the hidden tests)
            answer.ok = answer.ok and answer.example_matched
            answer.checks["gives the request's example"] = \
                "passed" if final.passed and answer.example_matched else "not found"
        answer.warnings = [str(i) for i in final.issues if i.severity == "warning"]
        if final.run is not None and final.run.unavailable:
            answer.warnings.append("not copied into the check (not picklable): "
                                   + ", ".join(final.run.unavailable))
        if task is Task.SQL:
            answer.sql = _printable(final.sql) if final.sql is not None else None
        if opts.safe and any(i.kind == "unsafe" for i in final.issues):
            raise UnsafeCodeError("--safe blocked the generated code: " + "; ".join(
                str(i) for i in final.issues if i.kind == "unsafe"))
        answer.total_s = time.perf_counter() - req.started
        return answer

    @staticmethod
    def _wants_example(prompt: Prompt, opts: Options) -> bool:
        """Extra candidates are drawn only for a pandas request that shows a printed table."""
        return prompt.task is Task.PANDAS and opts.check and opts.example_samples > 0 and \
            shows_table(prompt.request)

    @staticmethod
    def _matches_example(attempt: Attempt, request: str) -> bool:
        return attempt.passed and attempt.run is not None and \
            confirmed(request, attempt.run.value)

    def _attempt(self, req: Request, messages: list[dict[str, str]], sample: int,
                 round_: int, on_token: Callable[[str], None] | None) -> Attempt:
        """Generate one answer and check it. Whatever the model wrote, the result is an
        attempt whose checks say what is wrong, never an exception: a check that fails on
        the text is a bug to fix, but the user gets a failed check, not a traceback."""
        text, why = self._stream(req, messages, self._params(req.opts, sample, round_),
                                 on_token, self._prefix(req.task))
        return self._checked(text, req, cut=why in _CUT)

    def _checked(self, text: str, req: Request, cut: bool = False) -> Attempt:
        """:meth:`_check`, with a check that fails on the text reported as a failed check."""
        try:
            return self._check(text, req, cut=cut)
        except CopilotError:
            raise  # the check itself could not start: the message says what to do
        except Exception as e:  # noqa: BLE001 - model text must never become a traceback
            log.exception("a check failed on the model's answer")
            return Attempt(answer=text, code="", issues=[Issue(
                Kind.CHECK_FAILED, f"the checks could not read this answer ({type(e).__name__}: "
                f"{str(e)[:200]}); write the cell again, plainly")])

    def _repair(self, req: Request) -> None:
        """Up to ``opts.repairs`` rounds, each told what was wrong with the last attempt;
        every attempt is kept on ``answer.attempts``."""
        chain = req.answer.attempts
        for round_ in range(1, req.opts.repairs + 1):
            found = problems(chain[-1])
            if chain[-1].passed or not found:
                return
            req.say(f"\n\n# repair {round_}: {found[0][:200]}\n")
            chain.append(self._attempt(req, repair_messages(req.prompt, found), 0, round_,
                                       req.on_token))

    # ---------------------------------------------------------------- generation

    def _params(self, opts: Options, sample: int, round_: int = 0) -> Any:
        """Greedy for the first answer; sampled for the other candidates and for repairs
        (greedy, the 0.5B model mostly repeats the answer it was told is wrong)."""
        from qcoder_ds.runtime.sampler import SamplingParams

        if sample > 0 or round_ > 0:
            return SamplingParams(max_new_tokens=opts.max_new_tokens,
                                  temperature=opts.temperature, top_p=0.95,
                                  seed=opts.seed + 1000 * sample + round_)
        return SamplingParams(max_new_tokens=opts.max_new_tokens, temperature=0.0)

    def _stream(self, req: Request, messages: list[dict[str, str]], params: Any,
                on_token: Callable[[str], None] | None, prefix: str) -> tuple[str, str | None]:
        """Stream one reply; return its text and why generation stopped (the engine's
        ``finish_reason``: "stop", "eos", "length" at the token budget; None if the engine
        does not say). With ``prefix`` (an open code fence, and imports) the reply starts
        inside the code block and stops at its closing fence: no prose to wait for."""
        kwargs: dict[str, Any] = {}
        if prefix and _takes_prefix(self.engine):
            kwargs["reply_prefix"] = prefix
            params = dataclasses.replace(params, stop=tuple(params.stop) + ("```",))
            if on_token:
                on_token(prefix)
        else:
            prefix = ""
        pieces = [prefix]
        stream = self.engine.chat(messages, params, req.cancel, **kwargs)
        for piece in stream:
            if req.answer.first_token_s is None:
                req.answer.first_token_s = time.perf_counter() - req.started
            pieces.append(piece)
            if on_token:
                on_token(piece)
        if prefix:
            pieces.append("\n```" if not pieces[-1].endswith("\n") else "```")
            if on_token:
                on_token(pieces[-1])
        return "".join(pieces), getattr(stream, "finish_reason", None)

    @staticmethod
    def _prefix(task: Task) -> str:
        """How the answer starts: the fence and the usual imports. (A comment naming the live
        data, tried too, made the 0.5B model continue with more comments echoing the prompt.)"""
        if task is Task.SQL:
            return "```sql\n"
        if task is Task.EXPLAIN:
            return ""
        lines = ["```python", "import pandas as pd"]
        if task is Task.PLOT:
            lines.append("import matplotlib.pyplot as plt")
        return "\n".join(lines) + "\n"

    # ---------------------------------------------------------------- checking

    def _check(self, text: str, req: Request, cut: bool = False) -> Attempt:
        """Extract, fix, validate and check one answer (see ``_check_sql`` for SQL)."""
        if req.task is Task.SQL:
            return self._check_sql(text, req, cut)
        attempt = _fixed_python(text, req)
        if cut:
            attempt.issues.append(_cut_issue(req.opts))
        code, opts = attempt.code, req.opts
        if not code.strip():
            attempt.issues.append(Issue("syntax", "the answer contains no code"))
            return attempt
        attempt.issues += validate_python(code, req.namespace)
        if req.task is Task.PANDAS and not attempt.errors and not _makes_data(req):
            attempt.issues += check_uses_data(ast.parse(code), req.namespace)
        attempt.issues += check_safety(code)
        cell = Cell(req.text, code, req.task, req.namespace,
                    result_name=opts.result_name, sample_rows=opts.limits.sample_rows)
        self._judge(attempt, STATIC_RULES, cell)  # each rule skips code that does not parse
        blocking = attempt.errors or (opts.safe and any(i.kind == "unsafe"
                                                        for i in attempt.issues))
        if opts.check and not blocking:
            called = None if opts.result_name else uncalled_function(cell.tree)
            attempt.run = self._sandbox(opts.limits).run(
                code + (f"\n{called}()" if called else ""), req.namespace,
                req.ctx.connections, result_name=opts.result_name)
            if called and attempt.run.ok:
                attempt.verdicts.append(Verdict(f"called {called}() with its defaults"))
            elif called:
                attempt.run.error = (f"calling {called}() with its default arguments failed: "
                                     f"{attempt.run.error}")
            if attempt.run.ok and req.task is Task.PLOT and not attempt.run.figures:
                attempt.run.ok = False
                attempt.run.error = "the cell drew no figure; draw the chart with matplotlib"
            if attempt.run.ok:
                cell.run = attempt.run
                self._judge(attempt, RUN_RULES + FIGURE_RULES, cell)
        return attempt

    @staticmethod
    def _judge(attempt: Attempt, rules: tuple[Rule, ...], cell: Cell) -> None:
        """Apply ``rules``; their issues join the attempt's (and so the repair prompt)."""
        seen = {v.verified for v in attempt.verdicts}
        for verdict in apply(rules, cell):
            if verdict.verified in seen and verdict.passed:
                continue
            attempt.verdicts = [v for v in attempt.verdicts if v.verified != verdict.verified]
            attempt.verdicts.append(verdict)
            attempt.issues += verdict.issues

    def _check_sql(self, text: str, req: Request, cut: bool = False) -> Attempt:
        info, opts = req.prompt.connection, req.opts
        assert info is not None
        result = validate_sql(extract_sql(text), info, request=req.text)
        if cut:
            result.issues.insert(0, _cut_issue(opts))
        if result.ok and opts.check:
            looked_up, found = check_values(result.sql, info, req.namespace.get(info.name),
                                            request=req.text)
            result.issues += found
            if looked_up != result.sql:  # a moved comparison can leave a join with no use
                again = validate_sql(looked_up, info, request=req.text)
                if again.ok:
                    looked_up = again.sql
                    result.issues += [i for i in again.issues if i.kind == "sql-fixed"]
            result.sql = looked_up
        cell = sql_cell(result.sql, info)
        attempt = Attempt(answer=text, code=cell, issues=list(result.issues), sql=result.sql)
        if opts.check and result.ok and not (opts.safe and any(i.kind == "unsafe"
                                                             for i in result.issues)):
            attempt.run = self._sandbox(opts.limits).run(cell, req.namespace,
                                                         req.ctx.connections)
            if attempt.run.unavailable:
                attempt.run = None  # e.g. a server database: validated, not executed
            elif attempt.run.ok:
                self._check_rows(attempt, info, req)
        return attempt

    def _check_rows(self, attempt: Attempt, info: ctxmod.ConnectionInfo, req: Request) -> None:
        """The checks on the rows the query returned (``sql_rows``): a NULL test that found
        nothing, and the fan-out (one table's rows repeated by a join; the probe runs only
        when the result has duplicate rows)."""
        empty = sql_rows.null_test_issue(attempt.sql or "", info, attempt.run.value)
        if empty is not None:
            attempt.verdicts.append(Verdict("its NULL test finds rows", [empty]))
            attempt.issues.append(empty)
        found = sql_rows.probe(attempt.sql or "", info)
        if found is None:
            return
        issue = None
        if (attempt.run.value or {}).get("duplicate_rows"):
            run = self._sandbox(req.opts.limits).run(found.cell, req.namespace,
                                                     req.ctx.connections)
            issue = sql_rows.verdict_issue(found, run.value if run.ok else None)
        attempt.verdicts.append(Verdict("each row once", [issue] if issue else []))
        attempt.issues += [issue] if issue else []

    @staticmethod
    def _checks(final: Attempt, opts: Options, task: Task) -> dict[str, str]:
        kinds = {i.kind for i in final.errors}
        checks = {"complete answer": "failed" if Kind.TRUNCATED in kinds else "passed",
                  "parse": "failed" if "syntax" in kinds else "passed"}
        if task is Task.SQL:
            checks["schema"] = "failed" if "sql" in kinds else "passed"
            checks["values"] = "failed" if "sql-value" in kinds else "passed"
            checks["query logic"] = "failed" if "sql-logic" in kinds else "passed"
        else:
            checks["names"] = "failed" if "undefined-name" in kinds else "passed"
            checks["columns"] = "failed" if "unknown-column" in kinds else "passed"
            checks["keeps data"] = "failed" if "rebinds-data" in kinds else "passed"
            if task is Task.PANDAS:
                checks["reads the data"] = "failed" if "ignores-data" in kinds else "passed"
        checks["safety"] = "warning" if any(i.kind == "unsafe" for i in final.issues) \
            else "passed"
        if final.run is None:
            checks["ran on sample"] = "skipped" if not opts.check or final.errors else \
                "not possible"
        else:
            checks["ran on sample"] = "passed" if final.run.ok else "failed"
        for verdict in final.verdicts:
            checks[verdict.verified] = "passed" if verdict.passed else "failed"
        if Kind.CHECK_FAILED in kinds:
            checks["checks"] = "failed"
        return checks


def _example_issue(attempt: Attempt) -> str:
    """What a repair is told when a cell runs but its result is not the one the request
    shows: the result it gave, as pandas prints it (the model compares the two tables)."""
    value = attempt.run.value if attempt.run is not None else None
    printed = ((value or {}).get("printed") or [(value or {}).get("repr") or ""])[0]
    shown = "\n".join(printed.splitlines()[:12])[:600]
    return ("the cell runs, but its result is not the one the request shows"
            + (f"; it gives:\n{shown}\n" if shown.strip() else "; ")
            + "Compute exactly the result the request shows, from the data in the kernel")


def _cut_issue(opts: Options) -> Issue:
    return Issue(Kind.TRUNCATED, f"the answer stopped at the {opts.max_new_tokens}-token "
                 "budget before it was finished; write a shorter, complete cell")


def _printable(text: str) -> str:
    """``text`` with control characters and broken Unicode shown as U+FFFD, so a junk
    answer can still be put in a notebook cell (and be seen to be junk)."""
    return _UNPRINTABLE.sub("\ufffd", text)


def _makes_data(req: Request) -> bool:
    """Whether the request asks for data to be made (then typing values in is the point): it
    says create/make/generate/... and names none of the live data ("create a sample table",
    not "create a column in `df`")."""
    if not req.words & set(_MAKE_DATA):
        return False
    names = set(identifiers(req.text)) & set(req.namespace)
    return not any(ctxmod.is_data(req.namespace.get(w)) for w in names)


def _refuse_without_data(req: Request) -> None:
    """A pandas or plot request with no data in scope, or a fix with no error, cannot be
    served: say what to do instead."""
    if req.task in (Task.PANDAS, Task.PLOT) and not req.ctx.items:
        # a plot of values the request gives ("vertical lines at 0.2 and 0.5") needs none
        literal_plot = req.task is Task.PLOT and any(ch.isdigit() for ch in req.text)
        if not literal_plot and not _ASKS_FUNCTION.search(req.text) and \
                not any(w in req.text.lower() for w in _MAKE_DATA):
            raise CopilotError(
                "no DataFrame, Series or array is in scope, so there is no data to work "
                "on: load it first (e.g. `df = pd.read_csv('sales.csv')`), or use "
                "`--sql` with a database connection")
    if req.task is Task.FIX and not req.ctx.last_error:
        raise CopilotError("there is no error to fix: `%qcoder fix` works after a cell "
                           "has raised an exception")


def _fixed_python(text: str, req: Request) -> Attempt:
    """The answer's code after the fixes that need no model (``python_fixes.RULES``)."""
    code, fixes = fix_python(extract_code(text, "python"),
                             PyContext(req.namespace, req.prompt.context_text))
    return Attempt(answer=text, code=code, issues=fixes)


def _takes_prefix(engine: Any) -> bool:
    return _has_param(type(engine), "reply_prefix")


@functools.lru_cache(maxsize=16)
def _has_param(cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(cls.chat).parameters
    except (TypeError, ValueError, AttributeError):
        return False
