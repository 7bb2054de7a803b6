"""The one interface every backend (ONNX Runtime, OpenVINO) implements.

Generation talks only to a ``DecoderSession``; which runtime is underneath is a choice
made when the session is loaded, not a fork in the generation code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from qcoder_ds.errors import ContextLengthError, QcoderError


class DecoderSession(ABC):
    """One loaded decoder with its own KV cache, batch size 1.

    The session remembers which token ids its cache holds, so a prompt that starts like the
    previous one (the same system prompt and schema or notebook context, a repair round that
    repeats the request, k samples of one prompt) only prefills what is new:
    :meth:`reuse_prefix`.

    A backend may keep several caches (``prefix_slots``): a notebook interleaves pandas, plot
    and SQL requests, whose prompts start differently, and with one cache each would evict
    the others' context. A prompt goes to the cache it shares most with; one that shares
    little with all of them takes an unused cache, else the least recently used one.
    """

    #: the longest context (prompt + generated tokens) this session accepts
    max_context: int
    #: number of tokens already in the KV cache
    position: int = 0
    #: vocabulary size (length of the logits vector)
    vocab_size: int
    #: the ids in the KV cache, in order (kept by :meth:`forward` and :meth:`reset`)
    cached_ids: list[int] | tuple = ()
    #: how many KV caches the session may keep (backends that can hold more override it)
    prefix_slots: int = 1
    #: a shared prefix shorter than this (or than half the cache) is not worth a cache's
    #: contents: pandas and plot prompts share only their first dozen tokens
    min_shared: int = 64
    #: True when ``forward(ids, all_logits=True)`` scores every position in one pass (the
    #: graph has ``logits_to_keep``); else it runs one token at a time, which gives the same
    #: logits but makes speculative decoding no faster than plain decode
    scores_all_positions: bool = False

    def reset(self) -> None:
        """Forget the KV cache; the next forward starts at position 0."""
        self._reset()
        self.position = 0
        self.cached_ids = []

    def forward(self, input_ids: np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Append ``input_ids`` (int64, shape ``[n]``) to the cache.

        Returns the float32 logits of the last position, shape ``[vocab_size]``, or with
        ``all_logits`` those of every new position, ``[n, vocab_size]`` (a speculative draft
        is scored in one pass). Raises ContextLengthError if ``position + n > max_context``.
        """
        ids = self.check_input(input_ids)
        logits = self._forward_all(ids) if all_logits else self._forward(ids)
        if len(self.cached_ids) != self.position - ids.size:  # unknown contents: never reused
            self.cached_ids = []
        else:
            if not isinstance(self.cached_ids, list):
                self.cached_ids = list(self.cached_ids)
            self.cached_ids.extend(ids.tolist())
        return logits

    def cut(self, n: int) -> bool:
        """Keep only the first ``n`` cached tokens (a rejected draft's rows go); False when this
        backend cannot rewind, and then nothing changed (the caller refills the cache)."""
        if n == self.position:
            return True
        if not 0 <= n < self.position or not self.rewind(n):
            return False
        self.position = n
        self.cached_ids = list(self.cached_ids[:n])
        return True

    def rewind(self, n: int) -> bool:
        """Keep only the first ``n`` cached tokens; False when this backend cannot (the caller
        then resets). Backends whose cache rows past ``position`` are never read override it."""
        return False

    def reuse_prefix(self, prompt_ids: np.ndarray) -> int:
        """Make the cache hold the longest prefix of ``prompt_ids`` it can keep (never all of
        it: the last token is run to get logits); return how many prompt tokens are cached."""
        if self.prefix_slots > 1:
            self._pick_slot(prompt_ids)
        cached = self.cached_ids
        same = _shared(cached, prompt_ids)
        if same and self.rewind(same):
            self.position = same
            self.cached_ids = list(cached[:same])
            return same
        self.reset()
        return 0

    def _pick_slot(self, prompt_ids: np.ndarray) -> None:
        """Switch to the cache that suits ``prompt_ids`` (see the class docstring)."""
        if not hasattr(self, "_parked"):
            self._slot, self._parked, self._used, self._clock = 0, {}, {}, 0
        held = {self._slot: (self.position, list(self.cached_ids)), **self._parked}

        def useful(slot: int) -> int:
            ids = held[slot][1]
            n = _shared(ids, prompt_ids)
            return n if n >= min(self.min_shared, max(1, len(ids) // 2)) else 0

        best = max(held, key=lambda s: (useful(s), s == self._slot))
        if not useful(best):
            free = sorted((s for s in range(self.prefix_slots) if s not in held or not held[s][1]),
                          key=lambda s: s != self._slot)  # an empty current cache first
            best = free[0] if free else min(held, key=lambda s: self._used.get(s, -1))
        if best != self._slot:
            self._parked[self._slot] = held[self._slot]
            self.position, self.cached_ids = self._parked.pop(best, (0, []))
            self._use_slot(best)
            self._slot = best
        self._clock += 1
        self._used[best] = self._clock

    def _use_slot(self, slot: int) -> None:
        """Make cache ``slot`` the one forward passes read and extend (creating it if new).
        Only called when ``prefix_slots > 1``, so a backend that sets it also overrides this."""
        raise QcoderError(f"{type(self).__name__} sets prefix_slots = {self.prefix_slots} "
                          f"but has no _use_slot to switch to cache {slot}")

    @abstractmethod
    def _reset(self) -> None:
        """Backend part of :meth:`reset`."""

    @abstractmethod
    def _forward(self, ids: np.ndarray) -> np.ndarray:
        """Backend part of :meth:`forward`: ``ids`` are checked; ``position`` is advanced here."""

    def _forward_all(self, ids: np.ndarray) -> np.ndarray:
        """Backend part of ``forward(ids, all_logits=True)``. This fallback runs one token at a
        time: the same logits, for backends whose graph cannot keep several positions."""
        return np.stack([self._forward(ids[i:i + 1]) for i in range(ids.size)])

    def check_input(self, input_ids: np.ndarray) -> np.ndarray:
        """Validate ids before a forward pass, so a bad call never touches the KV cache."""
        ids = np.asarray(input_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise QcoderError(f"forward needs a non-empty 1-D array of token ids, "
                              f"got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise QcoderError(f"token ids must be integers, got {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise QcoderError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        total = self.position + ids.size
        if total > self.max_context:
            raise ContextLengthError(
                f"{ids.size} new tokens after {self.position} would make {total}, more than this "
                f"session's context of {self.max_context} tokens")
        return ids


def _shared(cached: list[int] | tuple, prompt_ids: np.ndarray) -> int:
    """How many leading ids of ``prompt_ids`` a cache holding ``cached`` can keep (never the
    prompt's last one: it is run again to get logits)."""
    limit = min(len(cached), len(prompt_ids) - 1)
    if limit <= 0:
        return 0
    a = np.asarray(cached[:limit], dtype=np.int64)
    diff = np.nonzero(a != np.asarray(prompt_ids[:limit], dtype=np.int64))[0]
    return int(diff[0]) if diff.size else limit
