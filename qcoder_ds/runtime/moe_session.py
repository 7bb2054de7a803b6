"""A mixture-of-experts decoder as a ``DecoderSession``: dense graphs per layer, experts from
the expert cache, routing in numpy.

Per layer: the backend's dense graph (attention with its in-place KV cache, post-attention
RMSNorm, router logits), then softmax + top-k over the router logits (renormalized when
``norm_topk_prob``), as transformers' Qwen3MoeTopKRouter computes them, then each chosen
expert runs once on the rows routed to it and the weighted outputs are added to the
residual. Before the experts run, layer l+1's router is applied to layer l's hidden state and
the experts it picks are handed to the cache's prefetch thread.

Generation, prefix reuse and the Engine see an ordinary DecoderSession.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from qcoder_ds.errors import ModelError
from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime.backend import DecoderSession
from qcoder_ds.runtime.expert_cache import ExpertCache

#: the routers of every layer, [layers, experts, hidden] float32 (for prefetch in numpy)
ROUTERS = "routers.npy"


def check_moe(cfg: ArchConfig, hf_config: Mapping | None = None) -> None:
    """Refuse MoE layouts this runtime does not build (dense MLP layers between MoE ones)."""
    if cfg.arch != "qwen3_moe" or not cfg.num_experts:
        raise ModelError(f"{cfg.arch!r} is not a mixture-of-experts model")
    if not 0 < cfg.num_experts_per_tok <= cfg.num_experts or not cfg.moe_intermediate_size:
        raise ModelError(f"bad MoE config: {cfg.num_experts} experts, "
                         f"{cfg.num_experts_per_tok} per token, "
                         f"moe_intermediate_size {cfg.moe_intermediate_size}")
    hf = hf_config or {}
    if hf.get("mlp_only_layers") or int(hf.get("decoder_sparse_step", 1) or 1) != 1:
        raise ModelError("qwen3_moe with dense MLP layers (mlp_only_layers or "
                         "decoder_sparse_step > 1) is not supported; every layer must be MoE")
    if cfg.num_heads % cfg.num_kv_heads:
        raise ModelError(f"num_heads {cfg.num_heads} is not a multiple of "
                         f"num_kv_heads {cfg.num_kv_heads}")


def new_export_id(cfg: ArchConfig, options: Mapping) -> str:
    """An id unique to one export run: a store from any other run is refused."""
    blob = json.dumps({"config": cfg.to_dict(), "options": dict(options),
                       "nonce": uuid.uuid4().hex}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def expert_blob_bytes(cfg: ArchConfig, weights: str = "int4", block: int = 32) -> int:
    """Bytes of one expert's blob in the ONNX Runtime store (gate_up and down, block-wise with
    zero points, each array 64-byte aligned): what one resident expert counts."""
    def matrix(n: int, k: int) -> list[int]:
        kb = -(-k // block)
        if weights == "fp32":
            return [n * k * 4]
        if weights == "int8":
            return [n * kb * block, n * kb * 4, n * kb]
        return [n * kb * block // 2, n * kb * 4, n * (-(-kb // 2))]

    h, i = cfg.hidden_size, cfg.moe_intermediate_size
    total = 0
    for size in matrix(2 * i, h) + matrix(h, i):
        total += (-total) % 64 + size
    return total


def moe_sizes(cfg: ArchConfig) -> dict[str, int]:
    """Parameter counts of a MoE decoder: all of them, the experts', and those one token
    reads (its top-k experts per layer plus every dense weight, embeddings and lm_head too)."""
    h, hd, layers = cfg.hidden_size, cfg.head_dim, cfg.num_layers
    attention = (h * cfg.num_heads * hd * 2 + h * cfg.num_kv_heads * hd * 2
                 + (2 * hd if cfg.qk_norm else 0) + 2 * h)
    router = cfg.num_experts * h
    expert = 3 * h * cfg.moe_intermediate_size
    embed = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2) + h
    dense = embed + layers * (attention + router)
    return {"total": dense + layers * cfg.num_experts * expert,
            "experts": layers * cfg.num_experts * expert,
            "per_expert": expert,
            "active_per_token": dense + layers * cfg.num_experts_per_tok * expert,
            "dense": dense}


def config_from_meta(meta: Mapping) -> ArchConfig:
    """The ArchConfig an export's config.json records."""
    fields = ArchConfig.__dataclass_fields__
    try:
        return ArchConfig(**{k: v for k, v in meta.items() if k in fields})
    except TypeError as e:
        raise ModelError(f"unreadable MoE export config ({e}); export again") from None


class DenseLayers(Protocol):
    """The backend's dense part: one call per layer, then the head."""

    def layer(self, i: int, x: np.ndarray, position: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Layer i on x (int64 ids [n] for layer 0, else float32 [n, hidden]) at
        ``position``: (normed hidden [n, H], residual [n, H], router logits [n, E])."""

    def head(self, hidden: np.ndarray) -> np.ndarray:
        """Final norm + lm_head: [n, H] -> logits [n, V]."""

    def rewind(self, n: int) -> bool: ...

    def reset(self) -> None: ...


def route(logits: np.ndarray, top_k: int, norm_topk_prob: bool
          ) -> tuple[np.ndarray, np.ndarray]:
    """(experts [n, k] by weight descending, weights [n, k] float32) from router logits
    [n, E]: softmax in float32, top-k, renormalized over the k when ``norm_topk_prob``."""
    z = logits.astype(np.float32, copy=False)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    # stable sort on -p: among equal probabilities the lower expert index first, as torch
    top = np.argsort(-p, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(p, top, axis=-1)
    if norm_topk_prob:
        w = w / w.sum(axis=-1, keepdims=True)
    return top, w.astype(np.float32)


#: prefetch switches itself off when, after this many experts predicted, fewer than
#: MIN_PREDICTION_ACCURACY of them were used (a random-weight model's predictions are no better
#: than chance: benchmarks/results/moe-cache.json), or after PREFETCH_PROBATION / 4 experts it
#: built, fewer than MIN_BUILDS_USED of those were used: a prefetched build that is not used
#: costs a whole build on a core the decoder wants, and one that is used saves at most one
#: (at the 30B's shape ~30% were used, and before this rule decode ran 13-15% faster with
#: prefetch off: benchmarks/README.md, mixture-of-experts)
PREFETCH_PROBATION = 512
MIN_PREDICTION_ACCURACY = 0.3
MIN_BUILDS_USED = 0.5


class MoeDecoderSession(DecoderSession):
    """A Qwen3-MoE decoder: ``dense`` per-layer graphs plus experts from ``cache``.

    ``routers`` [layers, experts, hidden] float32 are the router weights, used in numpy for
    prefetch only (routing itself uses the graph's logits). ``trace`` is a
    ``moe_trace.TraceWriter`` (or None) that gets every token's experts per layer.
    ``record_routing`` keeps the last forward's experts per layer (tests). With ``threads``
    of 2 or more a layer's experts run on two threads at once (each expert session has one
    thread, so one at a time would leave the other core idle).

    ``kernel`` (a :class:`~qcoder_ds.runtime.decode_kernel.DecodePlan` made without experts)
    decodes one-token steps in C, layer by layer, each layer's experts from the cache, on the
    dense graphs' KV caches (``kv``: their addresses); prefill stays on the graphs.
    """

    def __init__(self, dense: DenseLayers, cache: ExpertCache, cfg: ArchConfig,
                 max_context: int, vocab_size: int, routers: np.ndarray | None = None,
                 prefetch: bool = True, trace: Any = None, record_routing: bool = False,
                 threads: int = 1, kernel: Any = None, kv: tuple[int, ...] = ()):
        self.dense, self.cache, self.config = dense, cache, cfg
        self.kernel, self._kv = kernel, kv
        self.max_context, self.vocab_size = max_context, vocab_size
        self.routers = routers
        self.prefetch = prefetch and routers is not None and not cache.fully_resident
        self.trace = trace
        self.record_routing = record_routing
        self.last_routing: list[np.ndarray] = []
        self.prefetch_off = ""  # why prefetch switched itself off, if it did
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="qcoder-experts")
                      if threads > 1 else None)
        self.scores_all_positions = True
        self.position = 0

    def _reset(self) -> None:
        self.dense.reset()

    def rewind(self, n: int) -> bool:
        return self.dense.rewind(n)

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        return self._run(ids, 1)[-1]

    def _forward_all(self, ids: np.ndarray) -> np.ndarray:
        return self._run(ids, ids.size)

    def _run(self, ids: np.ndarray, keep: int) -> np.ndarray:
        if self.kernel is not None and ids.size == 1:
            return self._step(int(ids.reshape(-1)[0]))
        cfg, cache = self.config, self.cache
        layers = cfg.num_layers
        x: np.ndarray = ids.astype(np.int64, copy=False)
        routing: list[np.ndarray] = []
        for i in range(layers):
            h, residual, logits = self.dense.layer(i, x, self.position)
            if (i == layers - 1 and keep < h.shape[0] and self.trace is None
                    and not self.record_routing):
                # only the rows that need logits go on (a trace wants every token's experts)
                h, residual, logits = h[-keep:], residual[-keep:], logits[-keep:]
            top, weights = route(logits, cfg.num_experts_per_tok, cfg.norm_topk_prob)
            routing.append(top)
            used = sorted({int(e) for e in np.unique(top)})
            keys = [(i, e) for e in used]
            cache.protect(keys)
            if self.prefetch and i + 1 < layers and self._prefetch_pays():
                self._prefetch(i + 1, h)
            x = residual + self._experts(i, h, top, weights, used)
            cache.layer_done(i, keys)
        self.position += ids.size
        if self.trace is not None:
            self._write_trace(routing, ids.size)
        if self.record_routing:
            self.last_routing = routing
        return self.dense.head(x[-keep:])

    def _step(self, token: int) -> np.ndarray:
        """One token in the decode kernel: each layer's attention and routing, then its
        experts from the cache (a miss read here), as ``_run`` looks them up."""
        cfg, cache, kernel = self.config, self.cache, self.kernel
        layers = cfg.num_layers
        kernel.begin(token, self.position, self._kv)
        h = np.empty((1, cfg.hidden_size), np.float32)
        routing: list[np.ndarray] = []
        for i in range(layers):
            top = kernel.attend(i, h[0] if self.prefetch else None)
            routing.append(top[None].astype(np.int64))
            used = sorted({int(e) for e in top})
            keys = [(i, e) for e in used]
            cache.protect(keys)
            if self.prefetch and i + 1 < layers and self._prefetch_pays():
                self._prefetch(i + 1, h)
            experts = {e: cache.get((i, e)) for e in used}
            kernel.experts(i, [experts[int(e)].arrays for e in top])
            cache.layer_done(i, keys)
        self.position += 1
        if self.trace is not None:
            self._write_trace(routing, 1)
        if self.record_routing:
            self.last_routing = routing
        logits = np.empty((1, self.vocab_size), np.float32)
        kernel.finish(logits[0])
        return logits

    def _experts(self, layer: int, h: np.ndarray, top: np.ndarray, weights: np.ndarray,
                 used: Sequence[int]) -> np.ndarray:
        """Sum over each row's experts of weight * expert(row), each expert run once on all
        of its rows. With a pool thread, the two threads take experts from either end of one
        queue: the pool thread from the front, where the experts that must be built wait (a
        build costs ~20 calls), this thread from the back, where the resident ones are; so a
        build overlaps the calls instead of holding up half of them. Every expert's output is
        kept and they are added here in sorted order: the numbers never depend on threads,
        schedule or budget."""
        one_row = h.shape[0] == 1  # decode: every expert takes the one row (no gathering)
        x = np.ascontiguousarray(h) if one_row else h
        results: dict[int, np.ndarray] = {}

        def run(e: int) -> None:
            if one_row:
                results[e] = self.cache.get((layer, e)).run(x)
            else:
                rows, _ = np.nonzero(top == e)
                results[e] = self.cache.get((layer, e)).run(np.ascontiguousarray(h[rows]))

        queue = deque(sorted(used, key=lambda e: self.cache.ready((layer, e))))

        def drain(take: Callable[[], int]) -> None:
            while True:
                try:
                    e = take()
                except IndexError:
                    return
                run(e)

        other = (self._pool.submit(drain, queue.popleft)
                 if self._pool is not None and len(queue) > 1 else None)
        try:
            drain(queue.pop)
        finally:
            if other is not None:
                other.result()
        out = np.zeros_like(h)
        if one_row:
            weight = {int(e): weights[0, j] for j, e in enumerate(top[0])}
            for e in used:
                out += results[e] * weight[e]
        else:
            for e in used:
                rows, slot = np.nonzero(top == e)
                out[rows] += results[e] * weights[rows, slot][:, None]
        return out

    def _prefetch_pays(self) -> bool:
        """False (for good) once prefetch has shown that its guesses, or its builds, are
        mostly wasted."""
        st = self.cache.stats
        if st.prefetch_predicted >= PREFETCH_PROBATION and \
                st.prefetch_predicted_used < MIN_PREDICTION_ACCURACY * st.prefetch_predicted:
            self.prefetch = False
            self.prefetch_off = (f"prefetch switched off: {st.prefetch_predicted_used} of "
                                 f"{st.prefetch_predicted} predicted experts were used")
            return False
        if st.prefetch_loaded >= PREFETCH_PROBATION // 4 and \
                st.prefetch_loaded_used < MIN_BUILDS_USED * st.prefetch_loaded:
            self.prefetch = False
            self.prefetch_off = (f"prefetch switched off: {st.prefetch_loaded_used} of the "
                                 f"{st.prefetch_loaded} experts it built were used")
            return False
        return True

    def _prefetch(self, layer: int, h: np.ndarray) -> None:
        """Experts layer ``layer`` will likely use: its router on this layer's hidden state
        (last row only in prefill: the rows before it are past by the time they matter)."""
        logits = h[-1:] @ self.routers[layer].T
        top, _ = route(logits, self.config.num_experts_per_tok, self.config.norm_topk_prob)
        self.cache.prefetch(layer, [(layer, int(e)) for e in top[0]])

    def _write_trace(self, routing: list[np.ndarray], n: int) -> None:
        for t in range(n):
            self.trace.token([[int(e) for e in r[t]] for r in routing])

    def cache_stats(self) -> dict:
        """The expert cache's counters (hits, misses, bytes read, prefetch accuracy)."""
        return {**self.cache.describe(), "fused": False,
                "prefetch": self.prefetch, "prefetch_off": self.prefetch_off,
                "expert_threads": 2 if self._pool is not None else 1,
                "decode_kernel": self.kernel is not None}

    @property
    def decode_kernel(self) -> bool:
        """Whether one-token steps run in the decode kernel."""
        return self.kernel is not None

    def close(self) -> None:
        """Stop the prefetch, expert and decode kernel threads; finish the trace file."""
        self.kernel = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.cache.close()
        if self.trace is not None:
            self.trace.close()
            self.trace = None

    def __del__(self):
        # the prefetch thread holds the cache (and its experts) until told to stop
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
