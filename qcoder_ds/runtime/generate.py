"""The generation loop: prompt ids in, a stream of token ids (or text) out, on any DecoderSession.

Semantics worth knowing:

- **Cancellation** raises :class:`~qcoder_ds.errors.GenerationCancelled` from the iterator. The
  event is checked before the prefill, between prefill chunks and before every decode step, so
  a stop takes effect within one forward pass. Raising (rather than ending quietly) lets a caller
  tell "the model finished" from "the user stopped it"; tokens/text already yielded stay valid.
- **Stop strings** end the text stream *before* the stop string, which is never emitted. Text that
  could be the beginning of a stop string is held back until the next tokens decide it.
- **EOS ids** (the tokenizer's plus ``SamplingParams.stop_token_ids``) end generation; they are
  not yielded.
- **Context**: the prompt must leave room for at least one new token. A longer prompt raises
  :class:`~qcoder_ds.errors.ContextLengthError` with the numbers, or, with ``truncate=True``,
  loses its oldest tokens so that ``max_new_tokens`` (at most half the context) still fit.
  Generation also ends (finish reason ``"context"``) when the context is full.
- **Prefill** runs in chunks of ``prefill_chunk`` tokens; the logits are the same as one shot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from qcoder_ds.errors import ContextLengthError, GenerationCancelled, QcoderError
from qcoder_ds.runtime.backend import DecoderSession
from qcoder_ds.runtime.sampler import Sampler, SamplingParams

DEFAULT_PREFILL_CHUNK = 512


class EmptyPromptError(QcoderError):
    """There is nothing to continue from."""


class Detokenizer(Protocol):
    """What generation needs from a tokenizer (qcoder_ds.models.tokenizer.Tokenizer has it)."""

    eos_token_ids: Sequence[int]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


class TokenGeneration:
    """An iterator over generated token ids, with what happened recorded on it.

    After iteration: ``finish_reason`` is ``"eos"``, ``"length"`` (max_new_tokens),
    ``"context"`` (context window full) or ``"stop"`` (a stop string, set by TextStream).
    """

    def __init__(self, session: DecoderSession, prompt_ids: Sequence[int],
                 params: SamplingParams | None = None, cancel: threading.Event | None = None, *,
                 eos_token_ids: Sequence[int] = (), prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                 truncate: bool = False):
        self.params = params or SamplingParams()
        self.session = session
        self.cancel = cancel
        if prefill_chunk < 1:
            raise QcoderError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.prefill_chunk = int(prefill_chunk)
        self.eos = frozenset(int(t) for t in eos_token_ids) | frozenset(self.params.stop_token_ids)
        ids = np.asarray(list(prompt_ids), dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise EmptyPromptError("the prompt is empty: give the model some text to continue")
        limit = session.max_context
        self.truncated = 0
        if ids.size >= limit:
            if not truncate:
                raise ContextLengthError(
                    f"the prompt is {ids.size} tokens but the model's context holds {limit} "
                    f"(prompt and new tokens together); shorten the prompt, or ask for "
                    f"truncation to drop its oldest {ids.size - limit + 1}+ tokens"
                )
            keep = limit - min(self.params.max_new_tokens, limit // 2)
            self.truncated = int(ids.size - keep)
            ids = ids[-keep:]
        self.prompt_ids = ids
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.prefill_seconds = 0.0
        self.decode_seconds = 0.0
        self.reused_tokens = 0  # prompt tokens found already in the session's KV cache
        self._it = self._run()

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        return next(self._it)

    def close(self) -> None:
        """Stop early (e.g. a stop string was found); no further forward pass runs."""
        self._it.close()

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            self.finish_reason = "cancelled"
            raise GenerationCancelled(
                f"generation cancelled after {len(self.generated)} new tokens"
            )

    def _run(self) -> Iterator[int]:
        s, p = self.session, self.params
        sampler = Sampler(p)
        self._check_cancel()
        t0 = time.perf_counter()
        self.reused_tokens = s.reuse_prefix(self.prompt_ids)
        logits = None
        for start in range(self.reused_tokens, self.prompt_ids.size, self.prefill_chunk):
            if start > self.reused_tokens:
                self._check_cancel()
            logits = s.forward(self.prompt_ids[start:start + self.prefill_chunk])
        self.prefill_seconds = time.perf_counter() - t0
        track = p.repetition_penalty != 1.0  # the penalty needs every id seen so far
        history: list[int] = self.prompt_ids.tolist() if track else []
        while True:
            tok = sampler(logits, history)
            if tok in self.eos:
                self.finish_reason = "eos"
                return
            self.generated.append(tok)
            if track:
                history.append(tok)
            yield tok
            if len(self.generated) >= p.max_new_tokens:
                self.finish_reason = "length"
                return
            if s.position >= s.max_context:
                self.finish_reason = "context"
                return
            self._check_cancel()
            t = time.perf_counter()
            logits = s.forward(np.array([tok], dtype=np.int64))
            self.decode_seconds += time.perf_counter() - t


#: the speculative generation class; runtime/speculative.py, which builds on this module,
#: registers it when imported (so this module does not import it back)
SPECULATIVE: Callable[..., TokenGeneration] | None = None


def generate_tokens(session: DecoderSession, prompt_ids: Sequence[int],
                    params: SamplingParams | None = None, cancel: threading.Event | None = None,
                    **options) -> TokenGeneration:
    """Generate token ids after ``prompt_ids``; see the module docstring for the rules.

    ``options``: ``eos_token_ids``, ``prefill_chunk``, ``truncate`` (see TokenGeneration);
    ``drafter`` (and ``draft_tokens``) for speculative decoding (runtime/speculative.py): the
    same greedy tokens, the same sampling distribution, fewer target passes.
    """
    if options.get("drafter") is not None:
        if SPECULATIVE is None:
            raise QcoderError("a drafter needs qcoder_ds.runtime.speculative imported "
                              "(Engine.load imports it)")
        return SPECULATIVE(session, prompt_ids, params, cancel, **options)
    options.pop("drafter", None)
    options.pop("draft_tokens", None)
    return TokenGeneration(session, prompt_ids, params, cancel, **options)


class IncrementalDecoder:
    """Token ids in, text out, never half a UTF-8 character.

    It decodes a short window of recent ids (with one token of left context so that
    word-joining decoders keep their spaces) and emits only the part that grew and is not
    an incomplete byte sequence (decoded as U+FFFD), the way transformers' TextStreamer and
    vLLM do it. Works with any tokenizer that has ``decode``; used when the tokenizer has no
    ``detokenizer()`` of its own (qcoder_ds.models.tokenizer.Tokenizer has one).
    """

    def __init__(self, tokenizer: Detokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip) if ids else ""

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return text[len(prefix):]
        return ""

    def finish(self) -> str:
        """Whatever is still undecided (an incomplete character at the very end)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):]


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class TextStream:
    """An iterator over text pieces of one generation, with stop strings applied.

    ``text`` is everything emitted; ``tokens`` the TokenGeneration underneath (ids, timings,
    ``finish_reason``).
    """

    def __init__(self, tokens: TokenGeneration, tokenizer: Detokenizer):
        self.tokens = tokens
        # the tokenizer's own streaming decoder when it has one, else the generic one here
        make = getattr(tokenizer, "detokenizer", None)
        self.decoder = (make(skip_special_tokens=True) if callable(make)
                        else IncrementalDecoder(tokenizer))
        self.stops = tokens.params.stop
        self.text = ""
        self._it = self._run()

    @property
    def finish_reason(self) -> str | None:
        return self.tokens.finish_reason

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._it)

    def close(self) -> None:
        self._it.close()
        self.tokens.close()

    def _emit(self, piece: str) -> str:
        self.text += piece
        return piece

    def _run(self) -> Iterator[str]:
        pending = ""
        for tok in self.tokens:
            pending += self.decoder.push(tok)
            if not pending:
                continue
            if self.stops:
                hits = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
                if hits:
                    cut = min(hits)
                    self.tokens.close()
                    self.tokens.finish_reason = "stop"
                    if cut:
                        yield self._emit(pending[:cut])
                    return
                hold = _held_back(pending, self.stops)
                ready, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
            else:
                ready, pending = pending, ""
            if ready:
                yield self._emit(ready)
        pending += self.decoder.finish()
        if self.stops:
            hits = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
            if hits:
                self.tokens.finish_reason = "stop"
                pending = pending[:min(hits)]
        if pending:
            yield self._emit(pending)


def generate_text(session: DecoderSession, tokenizer: Detokenizer, prompt_ids: Sequence[int],
                  params: SamplingParams | None = None, cancel: threading.Event | None = None,
                  **options) -> TextStream:
    """Stream the text the model writes after ``prompt_ids``, stopping at EOS or a stop string."""
    options.setdefault("eos_token_ids", tuple(getattr(tokenizer, "eos_token_ids", ()) or ()))
    return TextStream(generate_tokens(session, prompt_ids, params, cancel, **options), tokenizer)
