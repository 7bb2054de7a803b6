"""The one interface every backend (ONNX Runtime, OpenVINO) implements.

Generation talks only to a ``DecoderSession``; which runtime is underneath is a choice
made when the session is loaded, not a fork in the generation code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


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
