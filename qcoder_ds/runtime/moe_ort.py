"""Qwen3-MoE on ONNX Runtime: export (dense graphs + expert store) and the loaded session.

``export_moe_onnx`` writes into an export folder: ``layer_{i}.onnx`` and ``head.onnx`` (their
weights in ``dense.onnx.data``), ``routers.npy`` (the routers for prefetch), the expert store
(``experts.bin`` + ``experts.json``) and returns what ``config.json`` records under ``moe``.
Experts are quantized and written one by one as the export runs.

``load_moe_onnx`` opens it. When every expert fits: as :class:`OrtResidentMoe`, the whole
model in one graph with a ``QMoE`` op per layer. Otherwise as a
:class:`~qcoder_ds.runtime.moe_session.MoeDecoderSession`: each layer's KV cache is one
preallocated OrtValue bound as that layer's past and present (GroupQueryAttention appends in
place, as in the dense backend); the RoPE tables are one pair of OrtValues bound to every
layer; each resident expert is its blob, run by the expert kernel
(:mod:`qcoder_ds.runtime.expert_kernel`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import google.protobuf.message
import numpy as np
import onnx
import onnxruntime as ort

from qcoder_ds.errors import ContextLengthError, ModelError, QcoderError
from qcoder_ds.models.checkpoint import Checkpoint
from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime.decode_kernel import decode_plan, float_view
from qcoder_ds.runtime.expert_cache import (
    AUTO_SHARE,
    DEFAULT_POLICY,
    ExpertCache,
    available_memory,
    parse_budget,
    resident_cost,
)
from qcoder_ds.runtime.expert_kernel import BlobExpertBuilder
from qcoder_ds.runtime.expert_store import ExpertStore, ExpertStoreWriter
from qcoder_ds.runtime.moe_onnx import (
    DENSE_DATA,
    build_head,
    build_layer,
    expert_arrays,
    qmoe_weights,
    resident_model,
    rope_tables,
)
from qcoder_ds.runtime.moe_session import (
    ROUTERS,
    MoeDecoderSession,
    check_moe,
    config_from_meta,
    new_export_id,
)
from qcoder_ds.runtime.onnx_graph import OnnxExportOptions, save_model
from qcoder_ds.runtime.ort_session import OrtDecoderSession, decoder_options

HEAD = "head.onnx"


def layer_file(i: int) -> str:
    return f"layer_{i}.onnx"


def export_moe_onnx(ckpt: Checkpoint, out: Path, opts: OnnxExportOptions,
                    progress: bool = False) -> dict[str, Any]:
    """Write the MoE export's files into ``out`` (an empty temp folder the caller renames);
    return the ``moe`` section of its config.json."""
    cfg = ckpt.config
    check_moe(cfg, getattr(ckpt, "hf_config", None))
    out = Path(out)
    quant = {"backend": "onnx", "weights": opts.weights, "block_size": opts.block_size,
             "symmetric": opts.symmetric, "accuracy_level": opts.accuracy_level}
    export_id = new_export_id(cfg, quant)
    writer = ExpertStoreWriter(out, cfg.num_layers, cfg.num_experts, export_id, quant)
    routers = np.empty((cfg.num_layers, cfg.num_experts, cfg.hidden_size), np.float32)
    layers: Any = range(cfg.num_layers)
    if progress:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc=f"exporting MoE ONNX ({opts.weights})", unit="layer")
    try:
        with open(out / DENSE_DATA, "wb") as data:
            for i in layers:
                save_model(build_layer(cfg, ckpt.tensor, data, opts, i), out / layer_file(i))
                p = f"model.layers.{i}.mlp."
                routers[i] = ckpt.tensor(p + "gate.weight")
                for e in range(cfg.num_experts):
                    q = f"{p}experts.{e}."
                    writer.add(i, e, expert_arrays(
                        ckpt.tensor(q + "gate_proj.weight"), ckpt.tensor(q + "up_proj.weight"),
                        ckpt.tensor(q + "down_proj.weight"), opts.weights, opts.block_size,
                        opts.symmetric))
            save_model(build_head(cfg, ckpt.tensor, data, opts), out / HEAD)
        np.save(out / ROUTERS, routers)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    store = ExpertStore(out, export_id, verify=False)
    meta = {"export_id": export_id, "expert_bytes": store.blob_bytes,
            "store_bytes": store.total_bytes, "quantization": quant}
    store.close()
    return meta


def is_moe_export(meta: dict) -> bool:
    return bool(meta.get("moe"))


#: memory of the one-graph resident mode per byte of the experts' blobs: the stacked arrays
#: (read by the graph and the decode kernel) and ONNX Runtime's prepacked copy of them. The
#: 4-layer synthetic model at the 30B's shapes peaked at 3.27 GiB for 1.28 GiB of blobs; the
#: per-layer path holding every expert, at ~1.5 (benchmarks/README.md, mixture-of-experts).
FUSED_FACTOR = 2.4


def _room(expert_ram: str | int | None) -> float:
    """The memory ``expert_ram`` allows for the one-graph mode: ``all`` any, ``auto`` (the
    default) 60% of what is available now, else what it says."""
    text = "auto" if expert_ram is None else str(expert_ram).strip().lower()
    if text == "all":
        return float("inf")
    if text == "auto":
        avail = available_memory()
        return avail * AUTO_SHARE if avail else float("inf")
    return float(parse_budget(expert_ram, 0))


KERNEL_NEEDS = ("the decode kernel needs AVX-512 VNNI and an int4 export in blocks of 32 or "
                "64 (accuracy level 4) whose hidden, attention and expert sizes are multiples "
                "of 128")


def _graphs(out_dir: Path, cfg: ArchConfig) -> tuple[list[onnx.ModelProto], onnx.ModelProto]:
    """The export's layer graphs and head, without their weights."""
    try:
        layers = [onnx.load(str(out_dir / layer_file(i)), load_external_data=False)
                  for i in range(cfg.num_layers)]
        head = onnx.load(str(out_dir / HEAD), load_external_data=False)
    except (OSError, google.protobuf.message.DecodeError) as e:
        raise ModelError(f"{out_dir}: cannot read this MoE export's graphs ({e}); "
                         f"export again") from None
    return layers, head


class OrtResidentMoe(OrtDecoderSession):
    """The fully resident mode: the whole model in one graph (:func:`resident_model`), each
    layer's experts in one ``QMoE`` op, so a token is one session run, like a dense model's.
    Built from every blob of the store at load; the stacked expert arrays are handed to ONNX
    Runtime as external initializers, which it reads in place, so they are kept here.

    One-token steps run in the decode kernel (:mod:`qcoder_ds.runtime.decode_kernel`) where
    this machine and export allow it (``decode_kernel`` None: then; False: never; True: or
    an error), on the same weights and KV cache; prefill and scoring runs are the graph's.

    ``trace`` gets every token's experts per layer (the graph's ``experts.{i}`` outputs);
    ``record_routing`` keeps the last forward's (tests). ``cache_stats`` counts every expert
    as built once, at load."""

    def __init__(self, out_dir: Path, cfg: ArchConfig, store: ExpertStore, cache: ExpertCache,
                 threads: int, max_context: int, spinning: bool, trace: Any = None,
                 record_routing: bool = False, decode_kernel: bool | None = None):
        t0 = time.perf_counter()
        layers, head = _graphs(out_dir, cfg)
        experts = [qmoe_weights([store.read(i, e) for e in range(cfg.num_experts)],
                                cfg.hidden_size, cfg.moe_intermediate_size)
                   for i in range(cfg.num_layers)]
        model, given = resident_model(layers, head, cfg, store.quantization, experts,
                                      max_context, routing=trace is not None or record_routing)
        plan = None
        if decode_kernel is not False:
            cos, sin = rope_tables(cfg, max_context)
            plan = decode_plan(out_dir, cfg, layers, head, store.quantization, experts, cos, sin,
                               max_context, threads)
            if plan is None and decode_kernel:
                raise QcoderError(KERNEL_NEEDS)
        del experts, layers, head
        # with the kernel decoding, the graph only prefills, and its threads spinning after a
        # prefill took the cores from the kernel's first steps (10-17 ms instead of ~5.5)
        so = decoder_options(threads, spinning and plan is None)
        # the layer graphs' weights are in dense.onnx.data beside them
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(out_dir))
        self._given = [ort.OrtValue.ortvalue_from_numpy(a) for a in given.values()]
        so.add_external_initializers(list(given), self._given)
        super().__init__(model.SerializeToString(), cfg, threads, max_context, options=so)
        self._plan = plan
        self._logits_view = float_view(self._logits.data_ptr(), self.vocab_size)
        self.cache, self.trace, self.record_routing = cache, trace, record_routing
        self.last_routing: list[np.ndarray] = []
        st = cache.stats
        total = cfg.num_layers * cfg.num_experts
        st.loads += total
        st.misses += total
        st.bytes_read += total * store.blob_bytes
        st.build_seconds += time.perf_counter() - t0

    @property
    def decode_kernel(self) -> bool:
        """Whether one-token steps run in the decode kernel."""
        return self._plan is not None

    def _use_slot(self, slot: int) -> None:
        super()._use_slot(slot)
        self._kv = tuple(v.data_ptr() for v in self._caches[slot])

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        if self._plan is None or ids.size != 1:
            return super()._forward(ids)
        self._plan.step(int(ids.reshape(-1)[0]), self.position, self._kv, self._logits_view)
        self.position += 1
        if self.record_routing or self.trace is not None:
            routing = [r[None].astype(np.int64) for r in self._plan.routing]
            if self.record_routing:
                self.last_routing = routing
            if self.trace is not None:
                self.trace.token([[int(e) for e in r[0]] for r in routing])
        return self._logits_view.copy()

    def _run(self, ids: np.ndarray) -> None:
        if self.trace is None and not self.record_routing:
            return super()._run(ids)
        for i in range(self.config.num_layers):  # fresh each run: the row count changes
            self._bind.bind_output(f"experts.{i}", "cpu")
        super()._run(ids)
        # each layer's [rows, k] experts: bound after the logits and KV caches, so last
        routing = [v.numpy() for v in self._bind.get_outputs()[-self.config.num_layers:]]
        if self.record_routing:
            self.last_routing = routing
        if self.trace is not None:
            for t in range(ids.size):
                self.trace.token([[int(e) for e in r[t]] for r in routing])

    def cache_stats(self) -> dict:
        """The expert cache's counters: every expert resident, none looked up one by one."""
        return {**self.cache.describe(), "fused": True, "prefetch": False, "prefetch_off": "",
                "expert_threads": 1, "hit_rate": None, "decode_kernel": self._plan is not None}

    def close(self) -> None:
        """Finish the trace file; stop the decode kernel's threads."""
        self._plan = None
        if self.trace is not None:
            self.trace.close()
            self.trace = None


class OrtMoeDense:
    """The dense graphs of one export, with the KV caches bound in place."""

    def __init__(self, out_dir: Path, cfg: ArchConfig, threads: int, max_context: int,
                 spinning: bool = False):
        self.cfg = cfg
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if not spinning:  # expert sessions and the prefetch thread run between these
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        try:
            self.layers = [ort.InferenceSession(str(out_dir / layer_file(i)), so,
                                                providers=providers)
                           for i in range(cfg.num_layers)]
            self.head_session = ort.InferenceSession(str(out_dir / HEAD), so,
                                                     providers=providers)
        except Exception as e:  # ORT's own exception types
            raise ModelError(f"{out_dir}: ONNX Runtime cannot load this MoE export ({e})"
                             ) from None
        self.vocab_size = int(self.head_session.get_outputs()[0].shape[-1])
        cos, sin = rope_tables(cfg, max_context)
        self._rope = [ort.OrtValue.ortvalue_from_numpy(cos), ort.OrtValue.ortvalue_from_numpy(sin)]
        kv_shape = [1, cfg.num_kv_heads, max_context, cfg.head_dim]
        self._kv = [[ort.OrtValue.ortvalue_from_shape_and_type(kv_shape, np.float32)
                     for _ in range(2)] for _ in range(cfg.num_layers)]
        self._binds = []
        for i, s in enumerate(self.layers):
            b = s.io_binding()
            b.bind_ortvalue_input("cos_cache", self._rope[0])
            b.bind_ortvalue_input("sin_cache", self._rope[1])
            for name in ("h", "residual", "router_logits"):
                b.bind_output(name, "cpu")
            for j, kind in enumerate(("key", "value")):
                b.bind_ortvalue_input(f"past_key_values.{i}.{kind}", self._kv[i][j])
                b.bind_ortvalue_output(f"present.{i}.{kind}", self._kv[i][j])
            self._binds.append(b)

    def layer(self, i: int, x: np.ndarray, position: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = x.shape[0]
        total = position + n
        b = self._binds[i]
        if i == 0:
            b.bind_cpu_input("input_ids", x.reshape(1, n))
        else:
            b.bind_cpu_input("hidden", np.ascontiguousarray(x, np.float32).reshape(1, n, -1))
        b.bind_cpu_input("seqlens_k", np.array([total - 1], np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        for name in ("h", "residual", "router_logits"):  # fresh: the row count changes
            b.bind_output(name, "cpu")
        try:
            self.layers[i].run_with_iobinding(b)
        except Exception as e:  # ORT's own types; the cache up to `position` is intact
            raise QcoderError(f"ONNX Runtime failed in layer {i} on {n} tokens at position "
                              f"{position}: {e}") from None
        h, residual, logits = (v.numpy() for v in b.get_outputs()[:3])
        return h[0], residual[0], logits[0]

    def head(self, hidden: np.ndarray) -> np.ndarray:
        return self.head_session.run(["logits"], {"hidden": hidden[None]})[0][0]

    def rewind(self, n: int) -> bool:
        return True  # rows past `n` are never read, and the next step overwrites them

    def reset(self) -> None:
        pass


def load_moe_onnx(out_dir: Path, meta: dict, threads: int, max_context: int | None = None,
                  spinning: bool | None = None, expert_ram: str | int | None = None,
                  policy: str = DEFAULT_POLICY, prefetch: bool = True,
                  trace: str | Path | None = None,
                  record_routing: bool = False, fused: bool | None = None,
                  decode_kernel: bool | None = None) -> MoeDecoderSession | OrtResidentMoe:
    """Open a MoE export: dense graphs, the expert store (checked against this export's id),
    and an expert cache of ``expert_ram`` (bytes, ``6GB``, ``50%``, ``all``; default ``auto``:
    what fits in 60% of the memory available).

    ``fused``: the whole model in one graph, each layer's experts in one QMoE op
    (:class:`OrtResidentMoe`), instead of a graph per layer and the expert kernel per expert;
    only when every expert fits and they are int4/int8. Default (None): on exactly then, if
    ``expert_ram`` also holds the graph's copies of them (``FUSED_FACTOR``; ``all`` always
    does; prefill measured 1.2-1.7x faster and decode ~1.2x, docs/moe.md). ``spinning``:
    whether idle ORT threads spin; by default only in the one-graph mode without the decode
    kernel (elsewhere the expert threads, the prefetch thread and the kernel share the cores
    with the layer graphs). ``decode_kernel``: whether it
    decodes one token at a time in C (:mod:`qcoder_ds.runtime.decode_kernel`; None: where
    the machine and export allow, False: never, True: or an error)."""
    out_dir = Path(out_dir)
    cfg = config_from_meta(meta)
    moe = meta["moe"]
    max_context = max_context or min(cfg.max_position_embeddings, 4096)
    if max_context > cfg.max_position_embeddings:
        raise ContextLengthError(f"max_context {max_context} exceeds the model's "
                                 f"{cfg.max_position_embeddings} positions")
    store = ExpertStore(out_dir, export_id=moe["export_id"])
    cost = resident_cost(store.blob_bytes, "onnx", str(store.quantization["weights"]))
    # default auto, never "all": a 30B whose experts do not fit must not try to hold them
    budget = parse_budget("auto" if expert_ram is None else expert_ram,
                          cost * cfg.num_layers * cfg.num_experts)
    cache = ExpertCache(BlobExpertBuilder(store, cfg), cost, budget,
                        cfg.num_experts_per_tok, policy,
                        total_experts=cfg.num_layers * cfg.num_experts)
    can_fuse = cache.fully_resident and store.quantization["weights"] in ("int4", "int8")
    if fused is None and can_fuse:  # only where the budget holds the graph's copies too
        can_fuse = _room(expert_ram) >= (FUSED_FACTOR * store.blob_bytes
                                         * cfg.num_layers * cfg.num_experts)
    if fused and not can_fuse:
        raise QcoderError("fused experts need every expert resident (--expert-ram all) and an "
                          "int4/int8 export")
    writer = None
    if trace:
        from qcoder_ds.runtime.moe_trace import TraceWriter

        writer = TraceWriter(trace, cfg.num_layers, cfg.num_experts, cfg.num_experts_per_tok,
                             str(meta.get("source") or out_dir.name))
    if can_fuse if fused is None else fused:
        return OrtResidentMoe(out_dir, cfg, store, cache, threads, max_context,
                              spinning is not False, writer, record_routing, decode_kernel)
    dense = OrtMoeDense(out_dir, cfg, threads, max_context, bool(spinning))
    plan = None
    if decode_kernel is not False:
        layers, head = _graphs(out_dir, cfg)
        plan = decode_plan(out_dir, cfg, layers, head, store.quantization, None,
                           *rope_tables(cfg, max_context), max_context, threads)
        if plan is None and decode_kernel:
            raise QcoderError(KERNEL_NEEDS)
    routers = np.load(out_dir / ROUTERS) if prefetch else None
    return MoeDecoderSession(dense, cache, cfg, max_context, dense.vocab_size, routers,
                             prefetch=prefetch, trace=writer, record_routing=record_routing,
                             threads=threads, kernel=plan,
                             kv=tuple(v.data_ptr() for kv in dense._kv for v in kv))


def measure_expert_build(store: ExpertStore, cfg: ArchConfig, n: int = 16) -> dict[str, float]:
    """What a miss costs once the blob has been read before (read from the page cache; its
    hash is checked only the first time), the first read's cost (with the hash; from disk if
    the blob is not cached), medians, and the per-call time of a one-row run (benchmarks)."""
    build = BlobExpertBuilder(store, cfg)
    keys = [(0, e % cfg.num_experts) for e in range(n)]

    def timed(key: tuple[int, int]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        ex = build(*key)[0]
        return ex, time.perf_counter() - t0

    first = float(np.median([timed(key)[1] for key in keys]))
    again = [timed(key) for key in keys]
    experts = [ex for ex, _ in again]
    again = float(np.median([t for _, t in again]))
    x = np.random.default_rng(0).standard_normal((1, cfg.hidden_size)).astype(np.float32)
    for ex in experts:
        ex.run(x)
    t0 = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for ex in experts:
            ex.run(x)
    return {"build_ms": again * 1e3, "first_build_ms": first * 1e3,
            "call_us": (time.perf_counter() - t0) / rounds / n * 1e6}
