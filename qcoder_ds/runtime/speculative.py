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

#: tokens drafted per step when the caller does not say
DEFAULT_DRAFT_TOKENS = 4

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

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def prepare(self, prompt_ids: np.ndarray, check: Callable[[], None]) -> None:
        pass

    def propose(self, ctx: list[int], k: int, pick: Pick, check: Callable[[], None],
                eos: frozenset[int]) -> Draft:
        return Draft(lookup(ctx, k, self.max_ngram, self.min_ngram))


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
                 draft_tokens: int = DEFAULT_DRAFT_TOKENS, **options):
        super().__init__(session, prompt_ids, params, cancel, **options)
        self.drafter = drafter
        self.draft_tokens = int(draft_tokens)
        self.passes = self.drafted = self.accepted = 0
        self.rng = np.random.default_rng(self.params.seed)
        self._greedy = Sampler(self.params)  # argmax after the repetition penalty
        self._track = self.params.repetition_penalty != 1.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Tokens the target emitted per verifying pass (1 = no gain)."""
        return (self.accepted + self.passes) / self.passes if self.passes else 0.0

    def _run(self):
        s, p = self.session, self.params
        self._check_cancel()
        t0 = time.perf_counter()
        self.reused_tokens = s.reuse_prefix(self.prompt_ids)
        prompt = self.prompt_ids.tolist()
        run_chunks(s, prompt[self.reused_tokens:-1], self.prefill_chunk, self._check_cancel)
        self.drafter.prepare(self.prompt_ids, self._check_cancel)
        self.prefill_seconds = time.perf_counter() - t0
        ctx = prompt
        while True:
            self._check_cancel()
            t = time.perf_counter()
            new = self._step(ctx)
            self.decode_seconds += time.perf_counter() - t
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

    def _step(self, ctx: list[int]) -> list[int]:
        """Draft, score in one target pass, verify; the caches keep only what was accepted."""
        s = self.session
        remaining = self.params.max_new_tokens - len(self.generated)
        k = max(0, min(self.draft_tokens, remaining - 1, s.max_context - len(ctx)))
        draft = Draft()
        if k:
            draft = self.drafter.propose(ctx, k, self._pick, self._check_cancel, self.eos)
            self._check_cancel()
        rows = s.forward(np.array([ctx[-1], *draft.tokens], dtype=np.int64), all_logits=True)
        new = self._verify(ctx, draft, rows)
        self.passes += 1
        self.drafted += len(draft.tokens)
        self.accepted += len(new) - 1
        keep(s, len(ctx) + len(new) - 1, ctx + new, self.prefill_chunk)
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
