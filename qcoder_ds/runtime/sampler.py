"""Turning one logits vector into one token: greedy, temperature, top-k, top-p, repetition penalty.

Pure numpy on the last position's logits, so it is the same for every backend. The order of
the transformations is Hugging Face's (repetition penalty, then temperature, then top-k, then
top-p), so a setting means what users of ``transformers.generate`` expect it to mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from qcoder_ds.errors import QcoderError

# the nucleus is looked for among this many best tokens first; a full sort of a 150k
# vocabulary costs milliseconds per token, and the nucleus is almost always far smaller
_NUCLEUS_CANDIDATES = 1024


class SamplingParamsError(QcoderError):
    """A sampling parameter is outside the range where it means anything."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. ``temperature == 0`` means greedy (argmax)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability sums to top_p
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in prompt or output
    seed: int | None = None  # same seed + same params + same logits = same tokens
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings
    stop_token_ids: tuple[int, ...] = field(default=())  # extra end ids beside the tokenizer's EOS

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a lone string is one stop string, not its characters
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.max_new_tokens < 1:
            raise SamplingParamsError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise SamplingParamsError(
                f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise SamplingParamsError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SamplingParamsError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")
        if not (self.repetition_penalty > 0.0 and np.isfinite(self.repetition_penalty)):
            raise SamplingParamsError(
                f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}"
            )
        if any(not s for s in self.stop):
            raise SamplingParamsError("an empty stop string would stop before the first token")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Picks tokens for one generation; holds the random state so a seed replays exactly."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Iterable[int] = ()) -> int:
        """The next token given the last position's logits and the ids seen so far."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 1:
            raise SamplingParamsError(f"expected one logits vector, got shape {logits.shape}")
        if p.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, history, p.repetition_penalty)
        if p.greedy:
            return int(np.argmax(logits))
        return sample_from_logits(logits, p.temperature, p.top_k, p.top_p, self.rng)


def apply_repetition_penalty(logits: np.ndarray, history: Iterable[int], penalty: float
                             ) -> np.ndarray:
    """CTRL's penalty as transformers applies it: positive logits / penalty, negative * penalty."""
    ids = np.unique(np.fromiter(history, dtype=np.int64))
    if ids.size == 0:
        return logits
    ids = ids[(ids >= 0) & (ids < logits.shape[0])]
    out = logits.copy()
    seen = out[ids]
    out[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
    return out


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits (all of them when k is 0 or >= the vocabulary)."""
    n = logits.shape[0]
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.argpartition(logits, n - k)[n - k:]


def nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Positions (into ``probs``) of the smallest set whose probability sum reaches top_p.

    Ties at the boundary follow a stable sort, and the most likely token is always kept.
    """
    if top_p >= 1.0:
        return np.arange(probs.shape[0])
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    # keep tokens whose preceding mass is still below top_p (the one that crosses it stays)
    keep = int(np.searchsorted(cum, top_p, side="left")) + 1
    return order[: min(keep, order.shape[0])]


def sample_from_logits(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
                       rng: np.random.Generator) -> int:
    """Draw one token after temperature scaling and top-k / top-p filtering.

    Works on float32 and touches the whole vocabulary only for one exp (and one partial
    partition), since this runs once per generated token.
    """
    x = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    n = x.shape[0]
    cand = None  # indices into the vocabulary when x is a subset
    if 0 < top_k < n:
        cand = np.argpartition(x, n - top_k)[n - top_k:]
        x = x[cand]
    e = np.exp(x - x.max())  # unnormalised probabilities
    if top_p < 1.0:
        sel = _nucleus_of(x, e, top_p)
        cand = sel if cand is None else cand[sel]
        e = e[sel]
    p = e.astype(np.float64) / e.sum(dtype=np.float64)
    i = int(rng.choice(p.shape[0], p=p))
    return i if cand is None else int(cand[i])


def _nucleus_of(x: np.ndarray, e: np.ndarray, top_p: float) -> np.ndarray:
    """Positions of the nucleus of logits ``x`` (``e`` their unnormalised probabilities)."""
    total = float(e.sum(dtype=np.float64))
    order = None
    if x.shape[0] > _NUCLEUS_CANDIDATES:
        # the nucleus usually lies among the best few hundred: sort only those when they
        # already hold top_p of the mass, else sort everything (a full sort of a 150k
        # vocabulary costs ~10 ms, more than a draft token's whole forward pass)
        best = np.argpartition(x, -_NUCLEUS_CANDIDATES)[-_NUCLEUS_CANDIDATES:]
        if e[best].sum(dtype=np.float64) >= top_p * total:
            order = best[np.argsort(-x[best], kind="stable")]
    if order is None:
        order = np.argsort(-x, kind="stable")
    cum = np.cumsum(e[order], dtype=np.float64)
    keep = int(np.searchsorted(cum, top_p * total, side="left")) + 1
    return order[:keep]


def token_probabilities(logits: np.ndarray, params: SamplingParams,
                        history: Iterable[int] = ()) -> np.ndarray:
    """The distribution :class:`Sampler` draws the next token from, over the whole vocabulary
    (float64): what speculative sampling's accept/reject rule compares, so that its output has
    exactly this distribution. Greedy is one-hot at the argmax."""
    x = np.asarray(logits, dtype=np.float32)
    if params.repetition_penalty != 1.0:
        x = apply_repetition_penalty(x, history, params.repetition_penalty)
    n = x.shape[0]
    probs = np.zeros(n, dtype=np.float64)
    if params.greedy:
        probs[int(np.argmax(x))] = 1.0
        return probs
    x = x / np.float32(params.temperature)
    cand = np.arange(n)
    if 0 < params.top_k < n:
        cand = np.argpartition(x, n - params.top_k)[n - params.top_k:]
    xs = x[cand]
    e = np.exp(xs - xs.max())
    if params.top_p < 1.0:
        sel = _nucleus_of(xs, e, params.top_p)
        cand, e = cand[sel], e[sel]
    probs[cand] = e.astype(np.float64) / e.sum(dtype=np.float64)
    return probs


def sample_index(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from ``probs`` (non-negative, not necessarily normalised)."""
    cum = np.cumsum(probs, dtype=np.float64)
    i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return min(i, probs.shape[0] - 1)
