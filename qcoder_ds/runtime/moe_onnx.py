"""Qwen3-MoE for ONNX Runtime: the dense part as one graph per layer, experts as blobs.

A mixture-of-experts layer cannot be one static graph when the experts do not all fit in
memory, so the decoder is cut at each MoE feed-forward block:

    layer_0.onnx   input_ids -> embed -> RMSNorm -> attention (q/k norm, RoPE, GQA, KV cache
                   in place) -> o_proj -> Skip-RMSNorm -> outputs: normed h, residual, router
                   logits (fp32 router, so the routing is the reference's)
    layer_i.onnx   the same from ``hidden`` (the residual stream after layer i-1's experts)
    head.onnx      final RMSNorm + lm_head on the rows that need logits

All dense graphs share one external data file (``dense.onnx.data``). The runtime
(:mod:`qcoder_ds.runtime.moe_session`) picks the top-k experts in numpy, runs them from the
expert cache and adds their weighted outputs to the residual.

Experts are stored as blobs in MatMulNBits' layout (:func:`expert_arrays`), run under a
budget by the expert kernel (:mod:`qcoder_ds.runtime.expert_kernel`); :func:`expert_model` is
one expert as an ONNX Runtime graph, the reference that kernel is tested and measured against.
Gate and up are one matrix (``gate_up``, 2 x moe_intermediate rows), split after the matmul:
exact, since quantization blocks run along the input axis, and one pass instead of two.

When every expert fits, :func:`resident_model` chains the layer graphs into one, each layer's
experts in a ``QMoE`` op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime import onnx_graph as g
from qcoder_ds.runtime.quantize import quantize_blockwise

DENSE_DATA = "dense.onnx.data"


# ----------------------------------------------------------------------------- experts


def expert_arrays(gate: np.ndarray, up: np.ndarray, down: np.ndarray, weights: str,
                  block_size: int = 32, symmetric: bool = False) -> dict[str, np.ndarray]:
    """One expert's arrays for the store, in the layouts MatMulNBits reads (fp32: the
    transposed matrices MatMul reads)."""
    gate_up = np.concatenate([gate, up], axis=0)
    if weights == "fp32":
        return {"gate_up.weight_t": np.ascontiguousarray(gate_up.T, np.float32),
                "down.weight_t": np.ascontiguousarray(down.T, np.float32)}
    bits = 4 if weights == "int4" else 8
    out: dict[str, np.ndarray] = {}
    for name, w in (("gate_up", gate_up), ("down", down)):
        q = quantize_blockwise(w, bits=bits, block_size=block_size, symmetric=symmetric)
        out[f"{name}.packed"] = q.packed
        out[f"{name}.scales"] = q.scales.reshape(-1)
        if q.zero_points is not None:
            out[f"{name}.zp"] = q.zero_points.reshape(-1)
    return out


def expert_model(arrays: Mapping[str, np.ndarray], hidden: int, inter: int,
                 quant: Mapping[str, object]) -> bytes:
    """The serialized graph ``y = down(SiLU(gate(x)) * up(x))`` for x [n, hidden], with this
    expert's weights as constant initializers (so ONNX Runtime prepacks them)."""
    return _expert_proto(arrays, hidden, inter, quant).SerializeToString()


def _expert_proto(arrays: Mapping[str, np.ndarray], hidden: int, inter: int,
                  quant: Mapping[str, object]) -> onnx.ModelProto:
    weights = str(quant["weights"])
    nodes, inits = [], []

    def init(name: str) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arrays[name]), name))
        return name

    def linear(x: str, name: str, n: int, k: int, out: str) -> None:
        if weights == "fp32":
            nodes.append(helper.make_node("MatMul", [x, init(name + ".weight_t")], [out]))
            return
        ins = [x, init(name + ".packed"), init(name + ".scales")]
        if name + ".zp" in arrays:
            ins.append(init(name + ".zp"))
        nodes.append(helper.make_node(
            "MatMulNBits", ins, [out], domain="com.microsoft", K=k, N=n,
            bits=4 if weights == "int4" else 8, block_size=int(quant["block_size"]),
            accuracy_level=int(quant["accuracy_level"])))

    linear("x", "gate_up", 2 * inter, hidden, "gu")
    split = numpy_helper.from_array(np.array([inter, inter], np.int64), "split")
    inits.append(split)
    nodes += [helper.make_node("Split", ["gu", "split"], ["gate", "up"], axis=-1),
              helper.make_node("Sigmoid", ["gate"], ["sig"]),
              helper.make_node("Mul", ["gate", "sig"], ["act"]),
              helper.make_node("Mul", ["act", "up"], ["h"])]
    linear("h", "down", hidden, inter, "y")
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "qcoder_expert",
                              [helper.make_tensor_value_info("x", f32, ["n", hidden])],
                              [helper.make_tensor_value_info("y", f32, ["n", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="qcoder-ds")
    model.ir_version = 9
    return model


# ----------------------------------------------------------------------------- dense part


def build_layer(cfg: ArchConfig, tensor: Callable[[str], np.ndarray], data: BinaryIO,
                opts: g.OnnxExportOptions, i: int) -> onnx.ModelProto:
    """Layer ``i``'s dense part: (embedding,) attention, post-attention norm, router logits."""
    c = g._Ctx(g._Builder(data, DENSE_DATA), cfg, tensor, opts)
    # the RoPE tables are inputs, bound once for all layers (as initializers, 48 copies of
    # a 262k-position table would take gigabytes)
    c.rope = ("cos_cache", "sin_cache")
    f32, i32, i64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
    if i == 0:
        x = g._embedding(c.b, "input_ids", tensor("model.embed_tokens.weight"), opts)
        first = helper.make_tensor_value_info("input_ids", i64, [1, "sequence_length"])
    else:
        x = "hidden"
        first = helper.make_tensor_value_info("hidden", f32, [1, "sequence_length",
                                                              cfg.hidden_size])
    p = f"model.layers.{i}."
    h, _ = g._norm(c, x, None, p + "ln1", p + "input_layernorm.weight")
    attn = g._attention(c, i, h)
    o = c.linear(attn, tensor(p + "self_attn.o_proj.weight"), p + "self_attn.o_proj")
    h2, residual = g._norm(c, o, x, p + "ln2", p + "post_attention_layernorm.weight")
    router = tensor(p + "mlp.gate.weight").astype(np.float32)
    logits = c.b.node("MatMul", [h2, c.b.init(p + "mlp.gate.weight_t",
                                              np.ascontiguousarray(router.T))])[0]
    c.b.node("Identity", [h2], outputs=["h"])
    c.b.node("Identity", [residual], outputs=["residual"])
    c.b.node("Identity", [logits], outputs=["router_logits"])
    kv_shape = [1, cfg.num_kv_heads, "cache_capacity", cfg.head_dim]
    half = cfg.head_dim // 2
    inputs = [first, helper.make_tensor_value_info("seqlens_k", i32, [1]),
              helper.make_tensor_value_info("total_sequence_length", i32, []),
              helper.make_tensor_value_info("cos_cache", f32, ["max_positions", half]),
              helper.make_tensor_value_info("sin_cache", f32, ["max_positions", half])]
    hid = [1, "sequence_length", cfg.hidden_size]
    outputs = [helper.make_tensor_value_info("h", f32, hid),
               helper.make_tensor_value_info("residual", f32, hid),
               helper.make_tensor_value_info("router_logits", f32,
                                             [1, "sequence_length", cfg.num_experts])]
    for kv in ("key", "value"):
        inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", f32, kv_shape))
        outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", f32, kv_shape))
    return _model(c, f"qcoder_moe_layer_{i}", inputs, outputs)


def build_head(cfg: ArchConfig, tensor: Callable[[str], np.ndarray], data: BinaryIO,
               opts: g.OnnxExportOptions) -> onnx.ModelProto:
    """Final RMSNorm and lm_head: hidden [1, n, H] -> logits [1, n, V]."""
    c = g._Ctx(g._Builder(data, DENSE_DATA), cfg, tensor, opts)
    vocab = g._lm_head(c, "hidden", None)
    f32 = TensorProto.FLOAT
    return _model(c, "qcoder_moe_head",
                  [helper.make_tensor_value_info("hidden", f32, [1, "n", cfg.hidden_size])],
                  [helper.make_tensor_value_info("logits", f32, [1, "n", vocab])])


def _model(c, name: str, inputs: list, outputs: list) -> onnx.ModelProto:
    graph = helper.make_graph(c.b.nodes, name, inputs, outputs, c.b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="qcoder-ds")
    model.ir_version = 9
    return model


# ----------------------------------------------------------------------------- fully resident


#: where the resident graph's expert weights say they live; never read: the session is handed
#: them with ``SessionOptions.add_external_initializers`` (stacked from the store at load)
RESIDENT_WEIGHTS = "qcoder-resident-experts-given-at-load"


def qmoe_weights(arrays: Sequence[Mapping[str, np.ndarray]], hidden: int, inter: int
                 ) -> dict[str, np.ndarray]:
    """One layer's experts stacked as ONNX Runtime's ``QMoE`` reads them: fc1 (gate and up)
    [experts, 2 x inter, ...] with gate and up rows interleaved, as the CPU kernel wants them
    (``swiglu_fusion=1``; exact, since quantization runs along each row), fc2 (down)
    [experts, hidden, ...]; scales and, where the export has them, zero points."""
    perm = np.stack([np.arange(inter), np.arange(inter) + inter], 1).reshape(-1)

    def stack(name: str, rows: int, fc1: bool) -> np.ndarray:
        return np.ascontiguousarray(np.stack(
            [a[name].reshape(rows, -1)[perm] if fc1 else a[name].reshape(rows, -1)
             for a in arrays]))

    out = {"fc1_w": stack("gate_up.packed", 2 * inter, True),
           "fc1_s": stack("gate_up.scales", 2 * inter, True),
           "fc2_w": stack("down.packed", hidden, False),
           "fc2_s": stack("down.scales", hidden, False)}
    if "gate_up.zp" in arrays[0]:
        out["fc1_z"] = stack("gate_up.zp", 2 * inter, True)
        out["fc2_z"] = stack("down.zp", hidden, False)
    return out


def resident_model(layers: Sequence[onnx.ModelProto], head: onnx.ModelProto, cfg: ArchConfig,
                   quant: Mapping[str, object], experts: Sequence[Mapping[str, np.ndarray]],
                   max_context: int, routing: bool = False
                   ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The whole model as one graph, for when every expert is resident: the export's layer
    graphs chained, each layer's experts in one ``QMoE`` op (``experts[i]``, from
    :func:`qmoe_weights`), the head on the last ``logits_to_keep`` rows. Its inputs and
    outputs are the dense decoder's (``input_ids``, ``seqlens_k``, ``total_sequence_length``,
    ``logits_to_keep``, the KV caches, ``logits``), plus, with ``routing``, ``experts.{i}``:
    each row's top-k experts of layer i, for routing traces (without, the graph leaves the
    routing to QMoE: every op counts at ~5 us a call).

    One session run per token instead of a run per layer and Python between them measured
    1.3-1.4x faster decode at the 30B's layer shapes (docs/moe.md). The layer graphs' weights
    stay in ``dense.onnx.data`` (the session is told its folder); the expert arrays are
    returned by name, to hand over as external initializers; the RoPE tables become
    initializers of ``max_context`` rows."""
    weights = str(quant["weights"])
    if weights not in ("int4", "int8"):
        raise ValueError(f"QMoE takes int4/int8 experts, not {weights}")
    i64 = TensorProto.INT64
    e_n, k = cfg.num_experts, cfg.num_experts_per_tok
    shared = {"input_ids", "seqlens_k", "total_sequence_length", "cos_cache", "sin_cache", ""}
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    given: dict[str, np.ndarray] = {}
    cos, sin = rope_tables(cfg, max_context)
    inits += [numpy_helper.from_array(cos, "cos_cache"), numpy_helper.from_array(sin, "sin_cache"),
              numpy_helper.from_array(np.array([-1, e_n], np.int64), "rows_by_experts"),
              numpy_helper.from_array(np.array([k], np.int64), "top_k"),
              numpy_helper.from_array(np.array([2**62], np.int64), "to_the_end"),
              numpy_helper.from_array(np.array([1], np.int64), "rows_axis")]
    inputs = [helper.make_tensor_value_info("input_ids", i64, [1, "sequence_length"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
              helper.make_tensor_value_info("logits_to_keep", i64, [1])]
    outputs = []
    stream = ""
    for i, layer in enumerate(layers):
        p = f"layer{i}/"
        kv = {f"past_key_values.{i}.key", f"past_key_values.{i}.value",
              f"present.{i}.key", f"present.{i}.value"}

        def rename(name: str, p: str = p, kv: set = kv, stream: str = stream) -> str:
            if name in shared or name in kv:
                return name
            return stream if name == "hidden" else p + name

        for n in layer.graph.node:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.name = p + n.name
            m.input[:] = [rename(x) for x in n.input]
            m.output[:] = [rename(x) for x in n.output]
            nodes.append(m)
        for t in layer.graph.initializer:
            c = onnx.TensorProto()
            c.CopyFrom(t)
            c.name = rename(t.name)
            inits.append(c)
        inputs += [v for v in layer.graph.input if v.name in kv]
        outputs += [v for v in layer.graph.output if v.name in kv]
        # QMoE routes [rows, experts] itself; the graph routes too only for a trace or the
        # norm_topk_prob correction: softmax in float32, top-k (ties: the lower index first)
        logits = p + "logits2d"
        nodes.append(helper.make_node("Reshape", [p + "router_logits", "rows_by_experts"],
                                      [logits]))
        if routing or not cfg.norm_topk_prob:
            nodes += [helper.make_node("Softmax", [logits], [p + "probs"], axis=-1),
                      helper.make_node("TopK", [p + "probs", "top_k"],
                                       [p + "top_p", f"experts.{i}"], axis=-1)]
        if routing:
            outputs.append(helper.make_tensor_value_info(f"experts.{i}", i64, ["rows", k]))
        names = {}
        for key, a in experts[i].items():
            name = names[key] = f"{p}experts.{key}"
            given[name] = a
            t = onnx.TensorProto()
            t.name, t.data_type = name, helper.np_dtype_to_tensor_dtype(a.dtype)
            t.dims[:] = a.shape
            t.data_location = TensorProto.EXTERNAL
            entry = t.external_data.add()
            entry.key, entry.value = "location", RESIDENT_WEIGHTS
            inits.append(t)
        zp = "fc1_z" in names
        y = p + "experts_out"
        nodes.append(helper.make_node(
            "QMoE", [p + "h", logits, names["fc1_w"], names["fc1_s"], "", names["fc2_w"],
                     names["fc2_s"], "", "", "", "",
                     names["fc1_z"] if zp else "", names["fc2_z"] if zp else ""],
            [y], name=p + "qmoe", domain="com.microsoft", k=k, activation_type="swiglu",
            swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0,
            normalize_routing_weights=1, expert_weight_bits=4 if weights == "int4" else 8,
            block_size=int(quant["block_size"]), accuracy_level=int(quant["accuracy_level"])))
        if not cfg.norm_topk_prob:
            # QMoE renormalizes the top-k weights: scale each row back by their sum (exact,
            # the op is linear in the weights)
            if i == 0:
                inits.append(numpy_helper.from_array(np.array([-1], np.int64), "last_axis"))
            nodes += [helper.make_node("ReduceSum", [p + "top_p", "last_axis"],
                                       [p + "top_sum"], keepdims=1),
                      helper.make_node("Mul", [y, p + "top_sum"], [p + "experts_scaled"])]
            y = p + "experts_scaled"
        stream = f"stream.{i + 1}"
        nodes.append(helper.make_node("Add", [p + "residual", y], [stream]))
    nodes += [helper.make_node("Neg", ["logits_to_keep"], ["keep_from"]),
              helper.make_node("Slice", [stream, "keep_from", "to_the_end", "rows_axis"],
                               ["head/hidden"])]
    for n in head.graph.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = "head/" + n.name
        m.input[:] = [x if x in ("", "logits") else "head/" + x for x in n.input]
        m.output[:] = [x if x == "logits" else "head/" + x for x in n.output]
        nodes.append(m)
    for t in head.graph.initializer:
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = "head/" + t.name
        inits.append(c)
    outputs.insert(0, head.graph.output[0])
    graph = helper.make_graph(nodes, "qcoder_moe_resident", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="qcoder-ds")
    model.ir_version = 9
    return model, given


def rope_tables(cfg: ArchConfig, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [positions, head_dim/2] for GroupQueryAttention (only as many positions as
    the session's context: the graphs take them as inputs)."""
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, half, dtype=np.float64) * 2 / cfg.head_dim))
    ang = np.outer(np.arange(positions, dtype=np.float64), inv_freq)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
