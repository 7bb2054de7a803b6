"""Speculative decoding: a cheap drafter guesses k tokens, the target checks them in one pass.

Decode on a CPU is bound by memory bandwidth: one target pass over k + 1 tokens reads its
weights once, as a pass over one token does. When the drafter (a smaller model of the same
family, or n-grams of the prompt) guesses well, the target emits several tokens per pass.

One step (``SpeculativeGeneration._step``), with ``ctx`` = prompt + tokens emitted so far:

- the target's cache holds ``ctx[:-1]``; ``ctx[-1]`` is pending (not yet run);
- the drafter proposes d1..dk after ``ctx``;
- the target runs ``[ctx[-1], d1..dk]`` keeping every row of logits: row i is its next-token
  distribution after d_i (row 0 after ``ctx[-1]``);
- verification keeps d1..da and adds one token of the target's own: the correction at the
  first rejection, or a bonus token after k acceptances;
- both caches are cut back to what was kept *before* anything is yielded, since a consumer (a
  stop string, a closed stream) may stop at any yield.

Greedy: d_i is kept iff it is the target's argmax at that position (repetition penalty applied
over exactly the history before it), so the output is plain greedy decoding's, token for token.
Sampling (Leviathan et al. 2023; Chen et al. 2023): d_i ~ q is kept with probability
min(1, p(d_i) / q(d_i)); the first rejection draws from norm(max(0, p - q)); after k acceptances
the bonus is drawn from p. ``p`` is the distribution plain sampling draws from (penalty,
temperature, top-k, top-p), so every emitted token has exactly the target's distribution. A
prompt-lookup draft is deterministic: its q is one-hot.

On a quantized graph "token for token" holds up to rounding at near ties: ONNX Runtime's int4
kernels compute a one-row pass (plain decode) and a several-row pass (prefill, verification)
in different ways (up to ~0.3 apart in the 1.5B's logits), so the KV entries of accepted tokens
differ slightly from plain decoding's, and where the two best logits are within ~0.05 the
choice can flip (docs/runtime.md has the measured counts). Where the kernels agree (fp32, the
tests' tiny models) the output is plain greedy's exactly.

k adapts (:class:`DraftLength`): the k that maximises expected tokens per second from the
running acceptance rate, the drafter's measured cost per token and the verifying pass's cost
per row (Leviathan et al. 2023, section 3.4), between 0 (a plain step) and the most the caller
allows; each way of drafting (:meth:`LookupThenModel.source`) keeps its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from qcoder_ds.runtime import generate as _generate
from qcoder_ds.runtime.backend import DecoderSession, _shared
from qcoder_ds.runtime.generate import DEFAULT_PREFILL_CHUNK, TokenGeneration
from qcoder_ds.runtime.sampler import (
    Sampler,
    SamplingParams,
    sample_index,
    token_probabilities,
)

#: the most tokens drafted per step when the caller does not say (k adapts below it)
DEFAULT_DRAFT_TOKENS = 8

#: ``pick(logits, history) -> (token, q)``: how a drafter chooses, q None when greedy
Pick = Callable[[np.ndarray, Sequence[int]], tuple[int, "np.ndarray | None"]]


@dataclass
class Draft:
    """Proposed tokens, and the distribution each was drawn from (None: deterministic)."""

    tokens: list[int] = field(default_factory=list)
    probs: list[np.ndarray] | None = None


class Drafter(Protocol):
    """What proposes tokens: :class:`ModelDrafter` or :class:`PromptLookup`."""

    def prepare(self, prompt_ids: np.ndarray, check: Callable[[], None]) -> None:
        """Called once per generation, before the first :meth:`propose` (a model prefills)."""

    def propose(self, ctx: list[int], k: int, pick: Pick, check: Callable[[], None],
                eos: frozenset[int]) -> Draft:
        """Up to ``k`` tokens to follow ``ctx``; ``check`` raises if cancelled."""

    # optional: ``source(ctx) -> str``, which of its ways will draft after ``ctx`` (each way
    # has its own acceptance rate and cost, so its own k); without it, one way


def run_chunks(session: DecoderSession, ids: Sequence[int], chunk: int,
               check: Callable[[], None]) -> np.ndarray | None:
    """Feed ``ids`` in chunks, checking for cancellation between them; the last logits."""
    logits = None
    for start in range(0, len(ids), chunk):
        if start:
            check()
        logits = session.forward(np.asarray(ids[start:start + chunk], dtype=np.int64))
    return logits


def catch_up(session: DecoderSession, ids: Sequence[int], chunk: int,
             check: Callable[[], None]) -> np.ndarray:
    """Make the cache hold exactly ``ids`` (keeping what it shares with them, at least the last
    one run again) and return the logits after them."""
    same = _shared(session.cached_ids, np.asarray(ids, dtype=np.int64))
    if not session.cut(same):
        session.reset()
        same = 0
    return run_chunks(session, ids[same:], chunk, check)


def keep(session: DecoderSession, n: int, ids: Sequence[int], chunk: int) -> None:
    """Cut the cache to its first ``n`` tokens (``ids[:n]``); a backend that cannot rewind is
    refilled from scratch (correct, slow)."""
    if not session.cut(n):
        session.reset()
        run_chunks(session, ids[:n], chunk, lambda: None)


class DraftLength:
    """How many tokens to draft next. With acceptance rate a (each guess kept with
    probability a, independently) a step drafting k tokens emits (1 - a^(k+1)) / (1 - a)
    tokens on average (Leviathan et al. 2023, section 3.4). It costs a target pass over k + 1
    rows, V0 + k v seconds (a pass is not free in its rows: on 2 cores the 1.5B's 5-row pass
    takes 1.5x its one-row pass), plus k drafter steps of D seconds. The k in 0..``most`` with
    the most tokens per second is chosen (0: no draft, a plain one-row step); a, D, V0 and v
    are running estimates (v by least squares over the steps' row counts, a prior until k has
    varied). The evidence for a fades with every drafted or skipped step back to a prior of 0.8,
    so a way of drafting that stopped paying is tried again after a while. ``fixed`` pins k."""

    PRIOR_ROW_COST = 0.15  # v / V0 before it is measured

    def __init__(self, most: int, fixed: bool = False, decay: float = 0.8):
        self.most, self.fixed, self.decay = max(1, int(most)), fixed, decay
        self.kept = self.trials = 0.0  # faded counts of guesses kept and of trials
        self.draft_s: float | None = None  # drafter seconds per token
        self._fit = np.zeros(5)  # decayed sums of 1, k, k^2, s, k*s over verifying passes

    @property
    def acceptance(self) -> float:
        return (self.kept + 0.8) / (self.trials + 1.0)  # prior: one trial, 0.8 kept

    def pass_cost(self) -> tuple[float, float]:
        """(V0, v): a verifying pass over k + 1 rows takes V0 + k v seconds."""
        n, sk, skk, ss, sks = self._fit
        if n <= 0:
            return 1.0, self.PRIOR_ROW_COST
        var = skk / n - (sk / n) ** 2
        if var < 0.1:  # k has not varied enough to tell the slope
            base = ss / n / (1 + self.PRIOR_ROW_COST * sk / n)
            return base, self.PRIOR_ROW_COST * base
        v = (sks / n - sk / n * ss / n) / var
        base = max(ss / n - v * sk / n, 1e-9)
        return base, max(v, 0.0)

    def update(self, k: int, drafted: int, accepted: int, draft_s: float, step_s: float) -> None:
        """One step: ``k`` asked for, ``drafted`` proposed, ``accepted`` kept, the drafter's
        seconds and the rest of the step's (the verifying pass, its checks, the cache cut)."""
        d = self.decay
        if step_s > 0:
            self._fit = d * self._fit + np.array([1.0, drafted, drafted ** 2, step_s,
                                                  drafted * step_s])
        if k and not drafted:  # nothing to propose (no n-gram matched): no evidence either way
            return
        self.kept, self.trials = d * self.kept, d * self.trials  # a skipped step fades it
        if not drafted:
            return
        self.kept += accepted  # each guess a trial; a rejection ends the step
        self.trials += accepted + (accepted < drafted)
        per = draft_s / drafted
        self.draft_s = per if self.draft_s is None else d * self.draft_s + (1 - d) * per

    def next(self) -> int:
        if self.fixed:
            return self.most
        a = min(max(self.acceptance, 0.01), 0.99)
        base, row = self.pass_cost()  # c: a drafted token's cost in one-row passes
        c = (row + (self.draft_s or 0.0)) / base if self._fit[0] > 0 else self.PRIOR_ROW_COST
        return max(range(self.most + 1),
                   key=lambda k: (1 - a ** (k + 1)) / (1 - a) / (1 + k * c))


class ModelDrafter:
    """A smaller model with the same vocabulary proposes tokens (the 0.5B for the 1.5B)."""

    def __init__(self, session: DecoderSession, prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        self.session = session
        self.prefill_chunk = prefill_chunk

    def prepare(self, prompt_ids: np.ndarray, check: Callable[[], None]) -> None:
        s = self.session
        reused = s.reuse_prefix(prompt_ids)
        run_chunks(s, prompt_ids[reused:-1].tolist(), self.prefill_chunk, check)

    def propose(self, ctx: list[int], k: int, pick: Pick, check: Callable[[], None],
                eos: frozenset[int]) -> Draft:
        s = self.session
        k = min(k, s.max_context - len(ctx) + 1)  # the drafter's own context may be shorter
        if k < 1:
            return Draft()
        logits = catch_up(s, ctx, self.prefill_chunk, check)
        draft = Draft(probs=[])
        while True:
            tok, q = pick(logits, ctx + draft.tokens)
            draft.tokens.append(tok)
            draft.probs.append(q)
            if len(draft.tokens) == k or tok in eos:  # nothing after an end is worth a guess
                break
            check()
            logits = s.forward(np.array([tok], dtype=np.int64))
        if draft.probs[0] is None:
            draft.probs = None
        return draft


class PromptLookup:
    """Drafts by copying (prompt-lookup decoding, Saxena 2023): the tokens that followed the
    latest earlier occurrence of the last n tokens, n from ``max_ngram`` down to ``min_ngram``.
    Code repairs, SQL over a shown schema and column names copy long spans of the prompt."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def prepare(self, prompt_ids: np.ndarray, check: Callable[[], None]) -> None:
        pass

    def propose(self, ctx: list[int], k: int, pick: Pick, check: Callable[[], None],
                eos: frozenset[int]) -> Draft:
        return Draft(lookup(ctx, k, self.max_ngram, self.min_ngram))


class LookupThenModel:
    """Prompt lookup where the context repeats itself (a cell being repaired, a shown schema),
    the model drafter elsewhere: a lookup draft costs nothing, a model draft a pass of the
    small model per token. Lookup needs an n-gram of ``min_ngram`` tokens or more to match, as
    one matching token is a weak guess (measured: 9-14% of such guesses kept on fresh answers)."""

    def __init__(self, model: ModelDrafter, max_ngram: int = 3, min_ngram: int = 2):
        self.model = model
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def prepare(self, prompt_ids: np.ndarray, check: Callable[[], None]) -> None:
        self.model.prepare(prompt_ids, check)

    def source(self, ctx: list[int]) -> str:
        return "lookup" if lookup(ctx, 1, self.max_ngram, self.min_ngram) else "model"

    def propose(self, ctx: list[int], k: int, pick: Pick, check: Callable[[], None],
                eos: frozenset[int]) -> Draft:
        copied = lookup(ctx, k, self.max_ngram, self.min_ngram)
        if copied:  # the small model's cache catches up when it drafts next
            return Draft(copied)
        return self.model.propose(ctx, k, pick, check, eos)


def lookup(ctx: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier match of ``ctx``'s last n-gram."""
    arr = np.asarray(ctx, dtype=np.int64)
    for n in range(max_ngram, min_ngram - 1, -1):
        if k < 1 or arr.size <= n:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)
        hits = np.flatnonzero((windows == arr[-n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return arr[start:start + k].tolist()
    return []


def verify_greedy(rows: np.ndarray, draft: Sequence[int],
                  choose: Callable[[np.ndarray, int], int]) -> list[int]:
    """The kept draft tokens plus the target's own next token; ``choose(row, i)`` is the
    target's greedy choice at draft position i."""
    for i, d in enumerate(draft):
        t = choose(rows[i], i)
        if t != d:
            return [*draft[:i], t]
    return [*draft, choose(rows[len(draft)], len(draft))]


def verify_sampled(target: Callable[[int], np.ndarray], draft: Sequence[int],
                   q: Sequence[np.ndarray] | None, rng: np.random.Generator) -> list[int]:
    """The accept/reject rule of speculative sampling; ``target(i)`` is p at draft position i
    and ``q[i]`` the distribution d_i was drawn from (None: each d_i was certain)."""
    for i, d in enumerate(draft):
        p = target(i)
        qd = 1.0 if q is None else float(q[i][d])
        if rng.random() * qd < p[d]:  # accept with probability min(1, p(d) / q(d))
            continue
        if q is None:
            residual = p.copy()
            residual[d] = 0.0  # max(0, p - one_hot(d))
        else:
            residual = np.maximum(p - q[i], 0.0)
        if residual.sum() <= 0.0:  # p == q up to rounding: any draw from p is right
            residual = p
        return [*draft[:i], sample_index(residual, rng)]
    return [*draft, sample_index(target(len(draft)), rng)]


class SpeculativeGeneration(TokenGeneration):
    """A :class:`TokenGeneration` whose tokens come from draft-and-verify steps (module
    docstring); the same stops, limits, cancellation and prompt caches, the same greedy
    tokens. After iteration: ``passes`` (target forward passes after the prefill),
    ``drafted`` and ``accepted`` (draft tokens proposed and kept)."""

    def __init__(self, session: DecoderSession, prompt_ids: Sequence[int],
                 params: SamplingParams | None = None, cancel=None, *, drafter: Drafter,
                 draft_tokens: int | None = None, **options):
        super().__init__(session, prompt_ids, params, cancel, **options)
        self.drafter = drafter
        self._lengths: dict[str, DraftLength] = {}  # per way of drafting (Drafter.source)
        self._most, self._fixed = draft_tokens or DEFAULT_DRAFT_TOKENS, draft_tokens is not None
        self.k_history: list[int] = []  # the k chosen at each step
        self.passes = self.drafted = self.accepted = 0
        self.rng = np.random.default_rng(self.params.seed)
        self._greedy = Sampler(self.params)  # argmax after the repetition penalty
        self._track = self.params.repetition_penalty != 1.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Tokens the target emitted per pass after the prompt's (1 = no gain)."""
        return (self.accepted + self.passes) / self.passes if self.passes else 0.0

    def _run(self):
        s, p = self.session, self.params
        self._check_cancel()
        t0 = time.perf_counter()
        self.reused_tokens = s.reuse_prefix(self.prompt_ids)
        prompt = self.prompt_ids.tolist()
        # the prompt in plain decoding's chunks, so the first token comes from the same logits
        logits = run_chunks(s, prompt[self.reused_tokens:], self.prefill_chunk,
                            self._check_cancel)
        if p.greedy:
            first = self._greedy(logits, prompt if self._track else ())
        else:
            first = sample_index(token_probabilities(logits, p, prompt if self._track else ()),
                                 self.rng)
        self.prefill_seconds = time.perf_counter() - t0
        ctx, new = prompt, [first]
        prepared = False  # the drafter reads the prompt after the first token is out
        while True:
            for tok in new:
                if tok in self.eos:
                    self.finish_reason = "eos"
                    return
                self.generated.append(tok)
                ctx.append(tok)
                yield tok
                if len(self.generated) >= p.max_new_tokens:
                    self.finish_reason = "length"
                    return
                if len(ctx) > s.max_context:  # as plain decode: the last token is never run
                    self.finish_reason = "context"
                    return
            self._check_cancel()
            t = time.perf_counter()
            if not prepared:
                self.drafter.prepare(self.prompt_ids, self._check_cancel)
                prepared = True
            new = self._step(ctx)
            self.decode_seconds += time.perf_counter() - t

    def _step(self, ctx: list[int]) -> list[int]:
        """Draft, score in one target pass, verify; the caches keep only what was accepted."""
        s = self.session
        remaining = self.params.max_new_tokens - len(self.generated)
        way = self.drafter.source(ctx) if hasattr(self.drafter, "source") else ""
        length = self._lengths.get(way)
        if length is None:
            length = self._lengths[way] = DraftLength(self._most, self._fixed)
        chosen = length.next()
        self.k_history.append(chosen)
        k = max(0, min(chosen, remaining - 1, s.max_context - len(ctx)))
        draft = Draft()
        t0 = time.perf_counter()
        if k:
            draft = self.drafter.propose(ctx, k, self._pick, self._check_cancel, self.eos)
            self._check_cancel()
        t1 = time.perf_counter()
        rows = s.forward(np.array([ctx[-1], *draft.tokens], dtype=np.int64), all_logits=True)
        new = self._verify(ctx, draft, rows)
        self.passes += 1
        self.drafted += len(draft.tokens)
        self.accepted += len(new) - 1
        keep(s, len(ctx) + len(new) - 1, ctx + new, self.prefill_chunk)
        length.update(k, len(draft.tokens), len(new) - 1, t1 - t0, time.perf_counter() - t1)
        return new

    def _verify(self, ctx: list[int], draft: Draft, rows: np.ndarray) -> list[int]:
        d = draft.tokens
        if self.params.greedy:
            return verify_greedy(rows, d, lambda row, i: self._greedy(row, self._hist(ctx, d, i)))
        return verify_sampled(
            lambda i: token_probabilities(rows[i], self.params, self._hist(ctx, d, i)),
            d, draft.probs, self.rng)

    def _hist(self, ctx: list[int], draft: list[int], i: int) -> Sequence[int]:
        """The ids before draft position i, when the repetition penalty needs them."""
        return ctx + draft[:i] if self._track else ()

    def _pick(self, logits: np.ndarray, history: Sequence[int]) -> tuple[int, np.ndarray | None]:
        """How a model drafter chooses: greedy as the target would, or a draw from its own
        processed distribution q (which verification then needs)."""
        if self.params.greedy:
            return self._greedy(logits, history if self._track else ()), None
        q = token_probabilities(logits, self.params, history if self._track else ())
        return sample_index(q, self.rng), q


_generate.SPECULATIVE = SpeculativeGeneration  # generate_tokens(..., drafter=...) uses it
