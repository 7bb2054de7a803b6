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
from qcoder_ds.copilot.checks import RUN_RULES, STATIC_RULES, Cell, Rule, apply, named_result
from qcoder_ds.copilot.errors import CopilotError, UnsafeCodeError
from qcoder_ds.copilot.examples import confirmed, shows_table
from qcoder_ds.copilot.extract import drop_context_echo, extract_code, extract_sql
from qcoder_ds.copilot.prompts import Prompt, build_prompt, repair_messages
from qcoder_ds.copilot.repair import Attempt, majority, problems
from qcoder_ds.copilot.safety import check_safety
from qcoder_ds.copilot.sandbox import Limits, Sandbox
from qcoder_ds.copilot.sql_values import check_values
from qcoder_ds.copilot.tasks import Task, infer_task
from qcoder_ds.copilot.validate import (
    Issue,
    Kind,
    check_uses_data,
    drop_rebinding,
    fix_old_pandas,
    fix_series_logic,
    validate_python,
)
from qcoder_ds.copilot.validate_sql import sql_cell, validate_sql

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
_IMPLIED = {"computes something"}
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


class Copilot:
    """Serves requests with one engine and one sandbox (both reused across requests)."""

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

    def _generate(self, messages: list[dict[str, str]], params: Any,
                  on_token: Callable[[str], None] | None, cancel: Any,
                  answer: Answer, started: float, prefix: str = "") -> str:
        """The text of one streamed reply (see :meth:`_stream`)."""
        return self._stream(messages, params, on_token, cancel, answer, started, prefix)[0]

    def _stream(self, messages: list[dict[str, str]], params: Any,
                on_token: Callable[[str], None] | None, cancel: Any,
                answer: Answer, started: float, prefix: str = "") -> tuple[str, str | None]:
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
        stream = self.engine.chat(messages, params, cancel, **kwargs)
        for piece in stream:
            if answer.first_token_s is None:
                answer.first_token_s = time.perf_counter() - started
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

    # ---------------------------------------------------------------- main entry

    def ask(self, request: str, namespace: Mapping[str, Any], opts: Options | None = None,
            on_token: Callable[[str], None] | None = None, cancel: Any = None,
            code: str | None = None) -> Answer:
        """Serve one request against ``namespace`` (the kernel's user namespace)."""
        opts = opts or Options()
        started = time.perf_counter()
        request = ctxmod.interpolate(request or "", namespace)
        ctx = ctxmod.collect(namespace, request)
        task = opts.task or infer_task(request, ctx)
        if task is Task.FIX and not (request or "").strip():
            request = "fix the cell"
        if task not in (Task.FIX, Task.EXPLAIN) or request:
            request = check_request(request)
        answer = Answer(task=task, request=request)
        if opts.result_name is None and task in (Task.PANDAS, Task.FIX):
            opts = dataclasses.replace(opts, result_name=named_result(request, namespace))
        count = getattr(self.engine, "count_tokens", ctxmod.approx_tokens)
        room = int(getattr(self.engine, "max_context", 4096)) - opts.max_new_tokens - 400
        budget = max(200, min(opts.context_tokens, room))
        if count(request) > room:
            raise CopilotError(f"the request is {count(request)} tokens; with the answer it "
                               f"does not fit the model's {self.engine.max_context}-token "
                               "context. Shorten it")
        connection = None
        if task is Task.SQL:
            connection = ctxmod.require_sql(ctx)
        elif task in (Task.PANDAS, Task.PLOT) and not ctx.items:
            # a plot of values the request gives ("vertical lines at 0.2 and 0.5") needs none
            literal_plot = task is Task.PLOT and any(ch.isdigit() for ch in request)
            if not literal_plot and not _ASKS_FUNCTION.search(request) and \
                    not any(w in request.lower() for w in _MAKE_DATA):
                raise CopilotError(
                    "no DataFrame, Series or array is in scope, so there is no data to work "
                    "on: load it first (e.g. `df = pd.read_csv('sales.csv')`), or use "
                    "`--sql` with a database connection")
        if task is Task.FIX and not ctx.last_error:
            raise CopilotError("there is no error to fix: `%qcoder fix` works after a cell "
                               "has raised an exception")
        prompt = build_prompt(task, request, ctx, budget=budget, count_tokens=count,
                              connection=connection, code=code)
        answer.prompt = prompt
        if task is Task.EXPLAIN:
            answer.text = self._generate(prompt.messages, self._params(opts, 0), on_token,
                                         cancel, answer, started)
            answer.ok = bool(answer.text.strip())
            answer.total_s = time.perf_counter() - started
            return answer

        first = self._attempt(prompt.messages, prompt, namespace, ctx, opts, 0, 0, on_token,
                              cancel, answer, started)
        answer.attempts = [first]
        answer.candidates = [first]
        if opts.samples > 1 and on_token:
            on_token(f"\n# checking {opts.samples - 1} more candidate(s) and voting on the "
                     "results\n")
        for k in range(1, opts.samples):  # not streamed: only the one chosen is shown
            answer.candidates.append(self._attempt(prompt.messages, prompt, namespace, ctx,
                                                   opts, k, 0, None, cancel, answer, started))
        if self._wants_example(prompt, opts) and \
                not any(self._matches_example(c, request) for c in answer.candidates):
            if on_token:
                on_token("\n# the request shows an example result; looking for an answer "
                         "that gives it\n")
            for k in range(opts.samples, opts.samples + opts.example_samples):
                extra = self._attempt(prompt.messages, prompt, namespace, ctx, opts, k, 0,
                                      None, cancel, answer, started)
                answer.candidates.append(extra)
                if self._matches_example(extra, request):
                    break
        matching = [c for c in answer.candidates if self._matches_example(c, request)]
        answer.example_matched = bool(matching)
        final = majority(matching or answer.candidates)
        if final is None:
            self._repair(prompt, namespace, ctx, opts, on_token, cancel, answer, started)
            final = answer.attempts[-1]
        elif final is not first:
            answer.attempts = [final]
        answer.ok = final.passed
        answer.cell = _printable(final.code)
        answer.checks = self._checks(final, opts, task)
        if self._wants_example(prompt, opts):
            answer.checks["gives the request's example"] = \
                "passed" if final.passed and answer.example_matched else "not found"
        answer.warnings = [str(i) for i in final.issues if i.severity == "warning"] + final.notes
        if final.run is not None and final.run.unavailable:
            answer.warnings.append("not copied into the check (not picklable): "
                                   + ", ".join(final.run.unavailable))
        if task is Task.SQL:
            answer.sql = _printable(final.sql) if final.sql is not None else None
        if opts.safe and any(i.kind == "unsafe" for i in final.issues):
            raise UnsafeCodeError("--safe blocked the generated code: " + "; ".join(
                str(i) for i in final.issues if i.kind == "unsafe"))
        answer.total_s = time.perf_counter() - started
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

    def _attempt(self, messages: list[dict[str, str]], prompt: Prompt,
                 namespace: Mapping[str, Any], ctx: ctxmod.KernelContext, opts: Options,
                 sample: int, round_: int, on_token, cancel, answer: Answer,
                 started: float) -> Attempt:
        """Generate one answer and check it. Whatever the model wrote, the result is an
        attempt whose checks say what is wrong, never an exception: a check that fails on
        the text is a bug to fix, but the user gets a failed check, not a traceback."""
        text, why = self._stream(messages, self._params(opts, sample, round_), on_token,
                                 cancel, answer, started, self._prefix(prompt.task))
        cut = why in _CUT
        try:
            return self._check(text, prompt, namespace, ctx, opts, cut)
        except CopilotError:
            raise  # the check itself could not start: the message says what to do
        except Exception as e:  # noqa: BLE001 - model text must never become a traceback
            log.exception("a check failed on the model's answer")
            return Attempt(answer=text, code="", issues=[Issue(
                Kind.CHECK_FAILED, f"the checks could not read this answer ({type(e).__name__}: "
                f"{str(e)[:200]}); write the cell again, plainly")])

    def _repair(self, prompt: Prompt, namespace: Mapping[str, Any], ctx: ctxmod.KernelContext,
                opts: Options, on_token, cancel, answer: Answer, started: float) -> None:
        """Up to ``opts.repairs`` rounds, each told what was wrong with the last attempt;
        every attempt is kept on ``answer.attempts``."""
        chain = answer.attempts
        for round_ in range(1, opts.repairs + 1):
            found = problems(chain[-1])
            if chain[-1].passed or not found:
                return
            if on_token:
                on_token(f"\n\n# repair {round_}: {found[0][:200]}\n")
            messages = repair_messages(prompt, found)
            chain.append(self._attempt(messages, prompt, namespace, ctx, opts, 0, round_,
                                       on_token, cancel, answer, started))

    # ---------------------------------------------------------------- checking

    def _check(self, text: str, prompt: Prompt, namespace: Mapping[str, Any],
               ctx: ctxmod.KernelContext, opts: Options, cut: bool = False) -> Attempt:
        if prompt.task is Task.SQL:
            return self._check_sql(text, prompt, namespace, ctx, opts, cut)
        code, echoed = drop_context_echo(extract_code(text, "python"), prompt.context_text)
        code, dropped = drop_rebinding(code, namespace)
        code, rewritten = fix_series_logic(code, namespace)
        code, modernized = fix_old_pandas(code)
        attempt = Attempt(answer=text, code=code)
        if echoed:
            attempt.notes.append(f"removed {echoed} line(s) copied from the data description")
        if dropped:
            attempt.notes.append("removed lines that re-created existing data: "
                                 + "; ".join(dropped))
        if rewritten:
            attempt.notes.append("combined Series conditions with & and |: "
                                 + "; ".join(rewritten))
        if modernized:
            attempt.notes.append("rewrote pandas calls the installed pandas no longer has: "
                                 + "; ".join(modernized))
        if cut:
            attempt.issues.append(_cut_issue(opts))
        if not code.strip():
            attempt.issues.append(Issue("syntax", "the answer contains no code"))
            return attempt
        attempt.issues += validate_python(code, namespace)
        if prompt.task is Task.PANDAS and not attempt.errors and \
                not _makes_data(prompt.request, namespace):
            attempt.issues += check_uses_data(ast.parse(code), namespace)
        attempt.issues += check_safety(code)
        cell = Cell(prompt.request, code, prompt.task, namespace,
                    result_name=opts.result_name, sample_rows=opts.limits.sample_rows)
        self._judge(attempt, STATIC_RULES, cell)  # each rule skips code that does not parse
        blocking = attempt.errors or (opts.safe and any(i.kind == "unsafe"
                                                        for i in attempt.issues))
        if opts.check and not blocking:
            attempt.run = self._sandbox(opts.limits).run(code, namespace, ctx.connections,
                                                         result_name=opts.result_name)
            if attempt.run.ok and prompt.task is Task.PLOT and not attempt.run.figures:
                attempt.run.ok = False
                attempt.run.error = "the cell drew no figure; draw the chart with matplotlib"
            if attempt.run.ok:
                cell.run = attempt.run
                self._judge(attempt, RUN_RULES, cell)
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

    def _check_sql(self, text: str, prompt: Prompt, namespace: Mapping[str, Any],
                   ctx: ctxmod.KernelContext, opts: Options, cut: bool = False) -> Attempt:
        info = prompt.connection
        assert info is not None
        sql = extract_sql(text)
        result = validate_sql(sql, info, request=prompt.request)
        if cut:
            result.issues.insert(0, _cut_issue(opts))
        if result.ok and opts.check:
            looked_up, found = check_values(result.sql, info, namespace.get(info.name))
            result.issues += found
            if looked_up != result.sql:  # a moved comparison can leave a join with no use
                again = validate_sql(looked_up, info, request=prompt.request)
                if again.ok:
                    looked_up = again.sql
                    result.issues += [i for i in again.issues if i.kind == "sql-fixed"]
            result.sql = looked_up
        cell = sql_cell(result.sql, info)
        attempt = Attempt(answer=text, code=cell, issues=list(result.issues), sql=result.sql)
        if opts.check and result.ok and not (opts.safe and any(i.kind == "unsafe"
                                                             for i in result.issues)):
            attempt.run = self._sandbox(opts.limits).run(cell, namespace, ctx.connections)
            if attempt.run.unavailable:
                attempt.run = None  # e.g. a server database: validated, not executed
        return attempt

    @staticmethod
    def _checks(final: Attempt, opts: Options, task: Task) -> dict[str, str]:
        kinds = {i.kind for i in final.errors}
        checks = {"complete answer": "failed" if Kind.TRUNCATED in kinds else "passed",
                  "parse": "failed" if "syntax" in kinds else "passed"}
        if task is Task.SQL:
            checks["schema"] = "failed" if "sql" in kinds else "passed"
            checks["values"] = "failed" if "sql-value" in kinds else "passed"
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


def _cut_issue(opts: Options) -> Issue:
    return Issue(Kind.TRUNCATED, f"the answer stopped at the {opts.max_new_tokens}-token "
                 "budget before it was finished; write a shorter, complete cell")


def _printable(text: str) -> str:
    """``text`` with control characters and broken Unicode shown as U+FFFD, so a junk
    answer can still be put in a notebook cell (and be seen to be junk)."""
    return _UNPRINTABLE.sub("\ufffd", text)


def _makes_data(request: str, namespace: Mapping[str, Any]) -> bool:
    """Whether the request asks for data to be made (then typing values in is the point): it
    says create/make/generate/... and names none of the live data ("create a sample table",
    not "create a column in `df`")."""
    words = re.findall(r"\w+", request)
    if not {w.lower() for w in words} & set(_MAKE_DATA):
        return False
    return not any(ctxmod._is_data(namespace.get(w)) for w in set(words) if w in namespace)


def _takes_prefix(engine: Any) -> bool:
    return _has_param(type(engine), "reply_prefix")


@functools.lru_cache(maxsize=16)
def _has_param(cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(cls.chat).parameters
    except (TypeError, ValueError, AttributeError):
        return False
