"""A decoder graph on ONNX Runtime's CPU EP, batch 1, with an in-place KV cache.

``OrtDecoderSession`` keeps each layer's KV cache as one preallocated OrtValue of
``max_context`` positions, bound (IOBinding) both as the layer's past input and its present
output: GroupQueryAttention appends the new keys/values in place, and nothing is copied
between steps. The same graph does prefill (any chunk length), one-token decode, and scoring
a speculative draft (``logits_to_keep`` = k + 1, bound only for that call). Rewinding the cache
is free: rows past ``position`` are never read, and the next step overwrites them.

Dense exports (:mod:`qcoder_ds.runtime.ort_backend`) and the fully resident mixture-of-experts
graph (:mod:`qcoder_ds.runtime.moe_ort`) both run on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from qcoder_ds.errors import ContextLengthError, ModelError, QcoderError
from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime.backend import DecoderSession

#: at most this much memory for all prompt caches together (``DecoderSession.prefix_slots``;
#: each allocated only when a prompt needs it): three for the 0.5B and 1.5B models at 4096
#: positions (96 and 224 MiB each), a single one for a model whose cache is larger
CACHE_BYTES = 768 << 20
MAX_PREFIX_SLOTS = 3


def decoder_options(threads: int, spinning: bool = True) -> ort.SessionOptions:
    """Session options of a whole decoder graph: ``threads`` intra-op threads, sequential."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtDecoderSession(DecoderSession):
    """A decoder on ONNX Runtime's CPU EP, batch 1, with its KV cache bound in place.

    ``model`` is the graph's file, or its serialized bytes with ``options`` that say where
    its external data is (the fully resident mixture-of-experts graph, assembled at load)."""

    def __init__(self, model: Path | bytes, cfg: ArchConfig, threads: int, max_context: int,
                 spinning: bool = True, options: ort.SessionOptions | None = None):
        if max_context > cfg.max_position_embeddings:
            raise ContextLengthError(
                f"max_context {max_context} exceeds the model's "
                f"{cfg.max_position_embeddings} positions")
        self.config = cfg
        self.max_context = max_context
        so = options or decoder_options(threads, spinning)
        what = model if isinstance(model, Path) else "the assembled model graph"
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types
            raise ModelError(f"{what}: ONNX Runtime cannot load this export ({e})") from None
        out = {o.name: o for o in self.session.get_outputs()}
        self.vocab_size = int(out["logits"].shape[-1])
        self._kv_shape = [1, cfg.num_kv_heads, max_context, cfg.head_dim]
        cache_bytes = 2 * cfg.num_layers * int(np.prod(self._kv_shape)) * 4
        self.prefix_slots = max(1, min(MAX_PREFIX_SLOTS, CACHE_BYTES // cache_bytes))
        self._caches: dict[int, list[ort.OrtValue]] = {}
        self._bind = self.session.io_binding()
        self._use_slot(0)
        self._logits = ort.OrtValue.ortvalue_from_shape_and_type([1, 1, self.vocab_size],
                                                                 np.float32)
        # exports before exporter version 3 have no logits_to_keep: they score one at a time
        self.scores_all_positions = any(i.name == "logits_to_keep"
                                        for i in self.session.get_inputs())
        self._keep_one = ort.OrtValue.ortvalue_from_numpy(np.array([1], np.int64))
        self._bind_last_only()
        self.position = 0

    def _bind_last_only(self) -> None:
        """The binding plain prefill and decode run with: one row of logits, into one buffer."""
        if self.scores_all_positions:
            self._bind.bind_ortvalue_input("logits_to_keep", self._keep_one)
        self._bind.bind_ortvalue_output("logits", self._logits)

    def _use_slot(self, slot: int) -> None:
        """Bind cache ``slot`` (allocated on first use) as every layer's past and present: the
        attention node appends to it in place."""
        if slot not in self._caches:
            self._caches[slot] = [ort.OrtValue.ortvalue_from_shape_and_type(self._kv_shape,
                                                                           np.float32)
                                  for _ in range(2 * self.config.num_layers)]
        bufs = iter(self._caches[slot])
        for i in range(self.config.num_layers):
            for kind in ("key", "value"):
                buf = next(bufs)
                self._bind.bind_ortvalue_input(f"past_key_values.{i}.{kind}", buf)
                self._bind.bind_ortvalue_output(f"present.{i}.{kind}", buf)

    def _reset(self) -> None:
        pass  # stale cache rows past `position` are never read

    def rewind(self, n: int) -> bool:
        return 0 <= n <= self.position  # the same reason: rows past `n` are overwritten

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        self._run(ids)
        return self._logits.numpy()[0, 0].copy()

    def _forward_all(self, ids: np.ndarray) -> np.ndarray:
        """Logits of every new position, bound for this call only (plain decode's binding,
        one row, is put back, so it pays nothing for this)."""
        if not self.scores_all_positions:
            return super()._forward_all(ids)
        n = ids.size
        keep = ort.OrtValue.ortvalue_from_numpy(np.array([n], np.int64))
        out = ort.OrtValue.ortvalue_from_shape_and_type([1, n, self.vocab_size], np.float32)
        self._bind.bind_ortvalue_input("logits_to_keep", keep)
        self._bind.bind_ortvalue_output("logits", out)
        try:
            self._run(ids)
        finally:
            self._bind_last_only()
        return out.numpy()[0].copy()

    def _run(self, ids: np.ndarray) -> None:
        n = ids.size
        total = self.position + n
        self._bind.bind_cpu_input("input_ids", ids.astype(np.int64).reshape(1, n))
        self._bind.bind_cpu_input("seqlens_k", np.array([total - 1], np.int32))
        self._bind.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        try:
            self.session.run_with_iobinding(self._bind)
        except Exception as e:  # ORT's own exception types; the cache up to `position` is intact
            raise QcoderError(f"ONNX Runtime failed on {n} tokens at position "
                              f"{self.position}: {e}") from None
        self.position = total
