"""Qwen3-MoE for ONNX Runtime: the dense part as one graph per layer, experts as small graphs.

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

Each expert is a tiny graph built from its blob with the weights as constant initializers
(:func:`expert_model`): ONNX Runtime prepacks MatMulNBits weights only when they are
constants, and fed as an input an int4 GEMV ran ~100x slower. Gate and up are one matrix
(``gate_up``, 2 x moe_intermediate rows), split after the matmul: exact, since quantization
blocks run along the input axis, and one kernel instead of two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


#: where an expert template's weights say they live; never read: every session built from the
#: template is handed the weights with ``SessionOptions.add_external_initializers``
TEMPLATE_WEIGHTS = "qcoder-expert-weights-given-at-load"


def expert_template(arrays: Mapping[str, np.ndarray], hidden: int, inter: int,
                    quant: Mapping[str, object]) -> bytes:
    """:func:`expert_model` with the weights left out (external data, named by
    ``TEMPLATE_WEIGHTS``): one small graph serialized once for every expert of a store, each
    session then given its own expert's arrays as external initializers. Serializing ~3 MB of
    weights into a protobuf per expert cost more than building the session itself."""
    model = _expert_proto(arrays, hidden, inter, quant)
    for t in model.graph.initializer:
        if t.name in arrays:
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            entry = t.external_data.add()
            entry.key, entry.value = "location", TEMPLATE_WEIGHTS
    return model.SerializeToString()


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


def fused_layer_model(arrays: list[Mapping[str, np.ndarray]], hidden: int, inter: int,
                      top_k: int, normalize: bool, quant: Mapping[str, object]) -> bytes:
    """Every expert of one layer in ONNX Runtime's ``QMoE`` contrib op (the fully resident
    alternative to one session per expert): x [n, hidden], router logits [n, experts] ->
    y [n, hidden]. The CPU kernel wants gate and up rows interleaved (swiglu_fusion=1), so
    the store's [gate | up] rows are reordered (exact: quantization runs along each row)."""
    weights = str(quant["weights"])
    if weights not in ("int4", "int8"):
        raise ValueError(f"QMoE takes int4/int8 experts, not {weights}")
    bits = 4 if weights == "int4" else 8
    block = int(quant["block_size"])
    e_n = len(arrays)
    perm = np.stack([np.arange(inter), np.arange(inter) + inter], 1).reshape(-1)

    def stack(name: str, rows: int, fc1: bool) -> np.ndarray:
        return np.ascontiguousarray(np.stack(
            [a[name].reshape(rows, -1)[perm] if fc1 else a[name].reshape(rows, -1)
             for a in arrays]))

    names = {"fc1_w": stack("gate_up.packed", 2 * inter, True),
             "fc1_s": stack("gate_up.scales", 2 * inter, True),
             "fc2_w": stack("down.packed", hidden, False),
             "fc2_s": stack("down.scales", hidden, False)}
    zp = "gate_up.zp" in arrays[0]
    if zp:
        names["fc1_z"] = stack("gate_up.zp", 2 * inter, True)
        names["fc2_z"] = stack("down.zp", hidden, False)
    inits = [numpy_helper.from_array(v, k) for k, v in names.items()]
    ins = ["x", "router", "fc1_w", "fc1_s", "", "fc2_w", "fc2_s", "", "", "", "",
           "fc1_z" if zp else "", "fc2_z" if zp else ""]
    node = helper.make_node(
        "QMoE", ins, ["y"], domain="com.microsoft", k=top_k, activation_type="swiglu",
        swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0,
        normalize_routing_weights=int(normalize), expert_weight_bits=bits, block_size=block,
        accuracy_level=int(quant["accuracy_level"]))
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "qcoder_fused_experts",
        [helper.make_tensor_value_info("x", f32, ["n", hidden]),
         helper.make_tensor_value_info("router", f32, ["n", e_n])],
        [helper.make_tensor_value_info("y", f32, ["n", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="qcoder-ds")
    model.ir_version = 9
    return model.SerializeToString()
