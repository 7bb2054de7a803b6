"""The one interface every backend (ONNX Runtime, OpenVINO) implements.

Generation talks only to a ``DecoderSession``; which runtime is underneath is a choice
made when the session is loaded, not a fork in the generation code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from qcoder_ds.errors import ContextLengthError, QcoderError


class DecoderSession(ABC):
    """One loaded decoder with its own KV cache, batch size 1."""

    #: the longest context (prompt + generated tokens) this session accepts
    max_context: int
    #: number of tokens already in the KV cache
    position: int = 0
    #: vocabulary size (length of the logits vector)
    vocab_size: int

    @abstractmethod
    def reset(self) -> None:
        """Forget the KV cache; the next forward starts at position 0."""

    @abstractmethod
    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        """Append ``input_ids`` (int64, shape ``[n]``) to the cache.

        Returns the float32 logits of the last position, shape ``[vocab_size]``.
        Raises ContextLengthError if ``position + n > max_context``.
        """

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
