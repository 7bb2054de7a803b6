"""Qwen3-MoE on OpenVINO: per-layer stateful models, experts as small compiled models.

The same split as the ONNX Runtime backend (:mod:`qcoder_ds.runtime.moe_ort`), built with the
dense exporter's opset blocks (:class:`qcoder_ds.runtime.openvino_graph._Builder`):

    layer_{i}.xml  (embedding,) RMSNorm, attention with RoPE and its own stateful KV cache
                   (ReadValue/Assign, fused by the CPU plugin), residual add, post-attention
                   RMSNorm, fp32 router -> outputs h, residual, router_logits
    head.xml       final RMSNorm + lm_head

Experts are stored quantized as OpenVINO's compressed constants want them (u4/i4 groups of
32 with f16 scales, or u8 per row); a resident expert is a compiled model whose weights are
constants in the decompression chain the CPU plugin folds into its FullyConnected kernel.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from qcoder_ds.errors import ContextLengthError, ModelError
from qcoder_ds.models.checkpoint import Checkpoint
from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime.expert_cache import DEFAULT_POLICY, ExpertCache, parse_budget, resident_cost
from qcoder_ds.runtime.expert_store import ExpertStore, ExpertStoreWriter
from qcoder_ds.runtime.moe_session import (
    ROUTERS,
    MoeDecoderSession,
    check_moe,
    config_from_meta,
    new_export_id,
)
from qcoder_ds.runtime.openvino_graph import (
    CACHE_SUBDIR,
    CONFIG_JSON,
    EXPORTER_VERSION,
    SYMMETRIC_INT4,
    _Builder,
    _last_line,
    _ov,
    _Shared,
    compile_properties,
    default_lm_head,
)
from qcoder_ds.runtime.quantize import OpenVINOWeight, quantize_openvino

HEAD_XML = "head.xml"


def layer_xml(i: int) -> str:
    return f"layer_{i}.xml"


def _bits(mode: str, k: int, group: int) -> int:
    return 4 if mode == "int4" and k % group == 0 else 8


def expert_arrays(gate: np.ndarray, up: np.ndarray, down: np.ndarray, weights: str,
                  group: int, symmetric: bool) -> dict[str, np.ndarray]:
    """One expert's arrays for the store, quantized as OpenVINO's constants hold them."""
    gate_up = np.concatenate([gate, up], axis=0)
    if weights == "fp32":
        return {"gate_up.weight": gate_up.astype(np.float32),
                "down.weight": down.astype(np.float32)}
    out: dict[str, np.ndarray] = {}
    for name, w in (("gate_up", gate_up), ("down", down)):
        qw = quantize_openvino(w, _bits(weights, w.shape[1], group), group, symmetric)
        out[f"{name}.q"] = np.ascontiguousarray(qw.q).reshape(-1)
        out[f"{name}.scale"] = qw.scale
        if qw.zero_point is not None:
            out[f"{name}.zp"] = np.ascontiguousarray(qw.zero_point)
    return out


def _matrices(cfg: ArchConfig, quant: dict) -> dict[str, dict]:
    """Element type and constant shape of each expert matrix (the same for every expert)."""
    group, mode = int(quant["group_size"]), str(quant["weights"])
    out = {}
    for name, (n, k) in (("gate_up", (2 * cfg.moe_intermediate_size, cfg.hidden_size)),
                         ("down", (cfg.hidden_size, cfg.moe_intermediate_size))):
        bits = _bits(mode, k, group)
        if bits == 8:
            out[name] = {"element": "u8", "shape": [n, k], "out_in": [n, k]}
        else:
            out[name] = {"element": "i4" if quant["symmetric"] else "u4",
                         "shape": [n, k // group, group], "out_in": [n, k]}
    return out


def _layer_model(b: _Builder, cfg: ArchConfig, i: int):
    """Layer ``i``'s dense part as a stateful ov.Model."""
    ov, ops = b.ov, b.ops
    pos = ops.parameter([1, -1], ov.Type.i64, name="position_ids")
    beam = ops.parameter([1], ov.Type.i32, name="beam_idx")
    if i == 0:
        first = ops.parameter([1, -1], ov.Type.i64, name="input_ids")
        x = b.embedding(first)
    else:
        first = ops.parameter([1, -1, cfg.hidden_size], ov.Type.f32, name="hidden")
        x = first
    params = [first, pos, beam]
    for p in params:
        p.output(0).get_tensor().set_names({p.get_friendly_name()})
    cos, sin = b.rope_tables(pos)
    empty_kv = np.zeros((1, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
    s = _Shared(cos, sin, b.causal_mask(pos), beam, b.const(empty_kv, "empty_kv"))
    pre = f"model.layers.{i}."
    h = b.rms(x, pre + "input_layernorm.weight")
    residual = ops.add(x, b.attention(i, h, s))
    h2 = b.rms(residual, pre + "post_attention_layernorm.weight")
    router = b.ckpt.tensor(pre + "mlp.gate.weight").astype(np.float32)
    logits = ops.matmul(h2, b.const(router, pre + "mlp.gate.weight"), False, True)
    results = []
    for node, name in ((h2, "h"), (residual, "residual"), (logits, "router_logits")):
        r = ops.result(node)
        r.output(0).get_tensor().set_names({name})
        results.append(r)
    return ov.Model(results, s.sinks, params, f"qcoder_moe_layer_{i}")


def _head_model(b: _Builder, cfg: ArchConfig):
    ov, ops = b.ov, b.ops
    hidden = ops.parameter([1, -1, cfg.hidden_size], ov.Type.f32, name="hidden")
    hidden.output(0).get_tensor().set_names({"hidden"})
    x = b.rms(hidden, "model.norm.weight")
    logits = b.linear(x, ["lm_head"], b.lm_head_mode)
    out = ops.result(logits)
    out.output(0).get_tensor().set_names({"logits"})
    return ov.Model([out], [hidden], "qcoder_moe_head")


def export_moe_openvino(ckpt: Checkpoint, out_dir: Path, weights: str = "int4",
                        progress: bool = True, lm_head: str | None = None, group_size: int = 32,
                        symmetric: bool = SYMMETRIC_INT4) -> None:
    """Write the MoE export (layer models, head, routers, expert store, config.json last)."""
    ov, _ = _ov()
    cfg = ckpt.config
    check_moe(cfg, getattr(ckpt, "hf_config", None))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_JSON).unlink(missing_ok=True)  # incomplete until written again
    lm_head = lm_head or default_lm_head(weights)
    quant = {"backend": "openvino", "weights": weights, "group_size": group_size,
             "symmetric": symmetric}
    export_id = new_export_id(cfg, quant)
    writer = ExpertStoreWriter(out_dir, cfg.num_layers, cfg.num_experts, export_id, quant)
    routers = np.empty((cfg.num_layers, cfg.num_experts, cfg.hidden_size), np.float32)
    layers: Any = range(cfg.num_layers)
    if progress:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc=f"OpenVINO MoE export ({weights})", unit="layer")
    try:
        for i in layers:
            b = _Builder(cfg, ckpt, weights, lm_head, group_size, symmetric)
            ov.save_model(_layer_model(b, cfg, i), str(out_dir / layer_xml(i)),
                          compress_to_fp16=False)
            p = f"model.layers.{i}.mlp."
            routers[i] = ckpt.tensor(p + "gate.weight")
            for e in range(cfg.num_experts):
                q = f"{p}experts.{e}."
                writer.add(i, e, expert_arrays(
                    ckpt.tensor(q + "gate_proj.weight"), ckpt.tensor(q + "up_proj.weight"),
                    ckpt.tensor(q + "down_proj.weight"), weights, group_size, symmetric))
        b = _Builder(cfg, ckpt, weights, lm_head, group_size, symmetric)
        ov.save_model(_head_model(b, cfg), str(out_dir / HEAD_XML), compress_to_fp16=False)
        np.save(out_dir / ROUTERS, routers)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    store = ExpertStore(out_dir, export_id, verify=False)
    meta = {**cfg.to_dict(), "backend": "openvino", "weights": weights,
            "lm_head_weights": lm_head, "group_size": group_size, "int4_symmetric": symmetric,
            "embedding_weights": "fp32" if weights == "fp32" else "int8",
            "exporter_version": EXPORTER_VERSION, "openvino_version": ov.get_version(),
            "moe": {"export_id": export_id, "expert_bytes": store.blob_bytes,
                    "store_bytes": store.total_bytes, "quantization": quant}}
    store.close()
    (out_dir / CONFIG_JSON).write_text(json.dumps(meta, indent=2))


class _OvExpert:
    """One resident expert: a compiled model and its infer request."""

    __slots__ = ("request", "_lock")

    def __init__(self, compiled):
        self.request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self.request.infer({0: x}, share_inputs=True)
            return self.request.get_output_tensor(0).data.copy()


class OvExpertBuilder:
    """Compiles an expert from its blob: its weights as constants of the decompression chain."""

    def __init__(self, store: ExpertStore, cfg: ArchConfig, meta: dict):
        self.ov, self.ops = _ov()
        self.store, self.cfg = store, cfg
        self.quant = store.quantization
        self.matrices = _matrices(cfg, self.quant) if self.quant["weights"] != "fp32" else {}
        self.core = self.ov.Core()
        self.props = {**compile_properties(meta, 1)}

    def _weight(self, b: _Builder, arrays: dict, name: str):
        if self.quant["weights"] == "fp32":
            return b.const(arrays[name + ".weight"], name)
        m = self.matrices[name]
        q = arrays[name + ".q"]
        if m["element"] == "u8":  # a u8 constant takes its shape from the array
            q = q.reshape(m["shape"])
        qw = OpenVINOWeight(m["element"], tuple(m["shape"]), q, arrays[name + ".scale"],
                            arrays.get(name + ".zp"))
        return b.compressed(qw, name, tuple(m["out_in"]))

    def __call__(self, layer: int, expert: int) -> tuple[_OvExpert, int]:
        arrays = self.store.read(layer, expert)
        ov, ops, cfg = self.ov, self.ops, self.cfg
        b = _Builder(cfg, None, str(self.quant["weights"]), "fp32",
                     int(self.quant.get("group_size", 32)), bool(self.quant.get("symmetric")))
        x = ops.parameter([-1, cfg.hidden_size], ov.Type.f32, name="x")
        gu = ops.matmul(x, self._weight(b, arrays, "gate_up"), False, True)
        inter = cfg.moe_intermediate_size
        parts = ops.variadic_split(gu, b.const(np.array(-1, np.int64), "axis"),
                                   b.const(np.array([inter, inter], np.int64), "sizes"))
        act = ops.multiply(ops.swish(parts.output(0)), parts.output(1))
        y = ops.matmul(act, self._weight(b, arrays, "down"), False, True)
        model = ov.Model([ops.result(y)], [x], f"expert_{layer}_{expert}")
        try:
            compiled = self.core.compile_model(model, "CPU", self.props)
        except RuntimeError as e:
            raise ModelError(f"expert ({layer}, {expert}): OpenVINO cannot compile it ({e})"
                             ) from None
        return _OvExpert(compiled), self.store.blob_bytes


class OvMoeDense:
    """The per-layer compiled models of one export, each with its own KV state."""

    def __init__(self, out_dir: Path, cfg: ArchConfig, meta: dict, threads: int | None):
        ov, _ = _ov()
        self.cfg = cfg
        core = ov.Core()
        if os.access(out_dir, os.W_OK):
            core.set_property({"CACHE_DIR": str(out_dir / CACHE_SUBDIR)})
        props = compile_properties(meta, threads)
        try:
            self.compiled = [core.compile_model(str(out_dir / layer_xml(i)), "CPU", props)
                             for i in range(cfg.num_layers)]
            self.head_compiled = core.compile_model(str(out_dir / HEAD_XML), "CPU", props)
        except RuntimeError as e:
            raise ModelError(f"{out_dir}: OpenVINO could not compile the MoE export: "
                             f"{_last_line(e)}") from None
        self.requests = [c.create_infer_request() for c in self.compiled]
        self.head_request = self.head_compiled.create_infer_request()
        self._beam = np.zeros(1, np.int32)
        self.position = 0

    def layer(self, i: int, x: np.ndarray, position: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = x.shape[0]
        pos = np.arange(position, position + n, dtype=np.int64)[None]
        first = x.reshape(1, n) if i == 0 else np.ascontiguousarray(x, np.float32)[None]
        r = self.requests[i]
        r.infer({"input_ids" if i == 0 else "hidden": first, "position_ids": pos,
                 "beam_idx": self._beam}, share_inputs=True)
        self.position = position + n
        return tuple(r.get_output_tensor(j).data[0].copy() for j in range(3))

    def head(self, hidden: np.ndarray) -> np.ndarray:
        self.head_request.infer({"hidden": np.ascontiguousarray(hidden, np.float32)[None]})
        return self.head_request.get_output_tensor(0).data[0].copy()

    def reset(self) -> None:
        for r in self.requests:
            r.reset_state()
        self.position = 0

    def rewind(self, n: int) -> bool:
        """Cut every layer's KV states to their first ``n`` positions."""
        ov, _ = _ov()
        if not 0 < n <= self.position:
            return False
        for r in self.requests:
            for state in r.query_state():
                kv = state.state.data
                if kv.ndim != 4 or kv.shape[2] != self.position:
                    return False
        for r in self.requests:
            for state in r.query_state():
                state.state = ov.Tensor(np.ascontiguousarray(state.state.data[:, :, :n]))
        self.position = n
        return True


def load_moe_openvino(out_dir: Path, meta: dict, threads: int | None = None,
                      max_context: int | None = None, expert_ram: str | int | None = None,
                      policy: str = DEFAULT_POLICY, prefetch: bool = True,
                      trace: str | Path | None = None,
                      record_routing: bool = False) -> MoeDecoderSession:
    """Open an OpenVINO MoE export as a DecoderSession (see ``moe_ort.load_moe_onnx``)."""
    out_dir = Path(out_dir)
    cfg = config_from_meta(meta)
    positions = int(cfg.max_position_embeddings)
    max_context = int(max_context or positions)
    if max_context > positions:
        raise ContextLengthError(f"max_context {max_context} exceeds the model's "
                                 f"{positions} positions")
    store = ExpertStore(out_dir, export_id=meta["moe"]["export_id"])
    cost = resident_cost(store.blob_bytes, "openvino", str(store.quantization["weights"]))
    # default auto, never "all": a 30B whose experts do not fit must not try to hold them
    budget = parse_budget("auto" if expert_ram is None else expert_ram,
                          cost * cfg.num_layers * cfg.num_experts)
    cache = ExpertCache(OvExpertBuilder(store, cfg, meta), cost, budget,
                        cfg.num_experts_per_tok, policy,
                        total_experts=cfg.num_layers * cfg.num_experts)
    dense = OvMoeDense(out_dir, cfg, meta, threads)
    routers = np.load(out_dir / ROUTERS) if prefetch else None
    writer = None
    if trace:
        from qcoder_ds.runtime.moe_trace import TraceWriter

        writer = TraceWriter(trace, cfg.num_layers, cfg.num_experts, cfg.num_experts_per_tok,
                             str(meta.get("source") or out_dir.name))
    return MoeDecoderSession(dense, cache, cfg, max_context, int(meta["vocab_size"]), routers,
                             prefetch=prefetch, trace=writer, record_routing=record_routing,
                             threads=threads or os.cpu_count() or 1)
