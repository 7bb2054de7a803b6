"""Build the decoder (Qwen2 / Qwen3 / Llama, dense) as an ONNX graph for ONNX Runtime's CPU EP.

One graph serves prefill (any number of new tokens) and decode (one token), at any position:

    input_ids [1, S] ─ embed ─▶ N × [RMSNorm ─ QKV (one MatMulNBits) ─ GroupQueryAttention
    (RoPE inside, KV cache BNSH, past and present sharing one buffer) ─ o_proj ─ Skip-RMSNorm ─
    gate/up ─ SiLU·up ─ down] ─ Skip-RMSNorm ─ lm_head ─▶ logits [1, 1, V]

The last layer slices its attention output to the last position before o_proj, so the rest
of that layer, the final norm and lm_head run on one row however long the prompt.

Inputs besides ``input_ids``: ``seqlens_k`` (int32 [1], tokens in the cache after this step
minus one), ``total_sequence_length`` (int32 scalar, the same plus one) and per layer
``past_key_values.{i}.key/value`` (float32 [1, kv_heads, capacity, head_dim]). The runtime
binds each past buffer and its ``present.{i}.*`` output to one preallocated OrtValue, so
GroupQueryAttention appends in place and decode never copies the cache.

Weights go straight to one external-data file as they are produced, so the 2 GB protobuf
limit never applies and an fp32 export never holds the whole model twice in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcoder_ds.errors import ModelError
from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime.quantize import quantize_blockwise

#: bump when the graph or its weight layout changes, so cached exports are rebuilt
EXPORTER_VERSION = 2
WEIGHT_KINDS = ("int4", "int8", "fp32")
DATA_FILE = "model.onnx.data"
_ALIGN = 64  # byte alignment of each weight in the data file
_INLINE_LIMIT = 1024  # smaller tensors stay inside the protobuf


@dataclass(frozen=True)
class OnnxExportOptions:
    """How the weights are stored; part of the export cache key."""

    weights: str = "int4"  # linear layers: int4 / int8 (MatMulNBits) or fp32 (MatMul)
    block_size: int = 32
    symmetric: bool = False  # int4/int8 without zero points
    accuracy_level: int = 4  # MatMulNBits: 4 = int8 activations (fastest on CPU), 0 = fp32
    lm_head: str = "same"  # "same" as weights, or "int4" / "int8" / "fp32"
    embeddings: str = "int8"  # int8 / int4 (GatherBlockQuantized) or fp32; fp32 exports use fp32
    fuse_gate_up: bool = False  # measured: no faster on 2 AVX2 cores, so off

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_KINDS:
            raise ModelError(
                f"weights must be one of {', '.join(WEIGHT_KINDS)}, not {self.weights!r}")
        if self.lm_head not in (*WEIGHT_KINDS, "same"):
            raise ModelError(f"lm_head must be same/int4/int8/fp32, not {self.lm_head!r}")
        if self.embeddings not in WEIGHT_KINDS:
            raise ModelError(f"embeddings must be int4/int8/fp32, not {self.embeddings!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "exporter_version": EXPORTER_VERSION}


class _Builder:
    """Collects nodes and initializers; big initializers are written to the data file at once."""

    def __init__(self, data: BinaryIO):
        self.data = data
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        if arr.nbytes < _INLINE_LIMIT:
            self.inits.append(numpy_helper.from_array(arr, name))
            return name
        pad = (-self.data.tell()) % _ALIGN
        if pad:
            self.data.write(b"\0" * pad)
        offset = self.data.tell()
        self.data.write(arr.tobytes())
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(arr.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "",
             outputs: list[str] | None = None, **attrs) -> list[str]:
        outs = outputs or [self.name(op) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op + "_node"),
                                           domain=domain or None, **attrs))
        return outs

    def const_i64(self, values: list[int]) -> str:
        return self.init(self.name("c"), np.array(values, np.int64))


def _linear(b: _Builder, x: str, w: np.ndarray, bias: np.ndarray | None, name: str, kind: str,
            opts: OnnxExportOptions) -> str:
    """y = x @ w.T (+ bias), with w in Hugging Face layout [out, in]."""
    n, k = w.shape
    if kind == "fp32":
        y = b.node("MatMul", [x, b.init(name + ".weight", w.T.astype(np.float32))])[0]
        if bias is not None:
            y = b.node("Add", [y, b.init(name + ".bias", bias.astype(np.float32))])[0]
        return y
    bits = 4 if kind == "int4" else 8
    q = quantize_blockwise(w, bits=bits, block_size=opts.block_size, symmetric=opts.symmetric)
    ins = [x, b.init(name + ".qweight", q.packed), b.init(name + ".scales", q.scales.reshape(-1))]
    ins.append("" if q.zero_points is None
               else b.init(name + ".qzeros", q.zero_points.reshape(-1)))
    if bias is not None:
        ins += ["", b.init(name + ".bias", bias.astype(np.float32))]
    return b.node("MatMulNBits", ins, domain="com.microsoft", K=k, N=n, bits=bits,
                  block_size=opts.block_size, accuracy_level=opts.accuracy_level)[0]


def _rope_caches(cfg: ArchConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [max_positions, head_dim/2] for GroupQueryAttention's non-interleaved rotary."""
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, half, dtype=np.float64) * 2 / cfg.head_dim))
    pos = np.arange(cfg.max_position_embeddings, dtype=np.float64)
    ang = np.outer(pos, inv_freq)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def _embedding(b: _Builder, ids: str, table: np.ndarray, opts: OnnxExportOptions) -> str:
    kind = "fp32" if opts.weights == "fp32" else opts.embeddings
    if kind == "fp32":
        return b.node("Gather", [b.init("model.embed_tokens.weight", table), ids], axis=0)[0]
    bits = 4 if kind == "int4" else 8
    q = quantize_blockwise(table, bits=bits, block_size=opts.block_size, symmetric=False)
    data = q.packed.reshape(q.n, -1)
    return b.node(
        "GatherBlockQuantized",
        [b.init("model.embed_tokens.qweight", data), ids,
         b.init("model.embed_tokens.scales", q.scales),
         b.init("model.embed_tokens.qzeros", q.zero_points)],
        domain="com.microsoft", bits=bits, block_size=opts.block_size, gather_axis=0,
        quantize_axis=1,
    )[0]


def _head_norm(b: _Builder, x: str, heads: int, cfg: ArchConfig, weight: np.ndarray,
               name: str) -> str:
    """Qwen3's RMSNorm over head_dim of each head of q or k ([1, S, heads*hd] in and out)."""
    r = b.node("Reshape", [x, b.const_i64([0, 0, heads, cfg.head_dim])])[0]
    r = b.node("SimplifiedLayerNormalization", [r, b.init(name, weight)], axis=-1,
               epsilon=cfg.rms_norm_eps, stash_type=1)[0]
    return b.node("Reshape", [r, b.const_i64([0, 0, heads * cfg.head_dim])])[0]


def build_decoder(cfg: ArchConfig, tensor: Callable[[str], np.ndarray], data: BinaryIO,
                  opts: OnnxExportOptions, progress: bool = False) -> onnx.ModelProto:
    """The decoder graph; initializers over 1 KiB are written to ``data`` (``DATA_FILE``)."""
    if cfg.arch not in ("qwen2", "qwen3", "llama") or cfg.num_experts:
        moe = " (mixture of experts)" if cfg.num_experts or cfg.arch.endswith("moe") else ""
        raise ModelError(f"the ONNX exporter builds dense qwen2/qwen3/llama decoders, "
                         f"not {cfg.arch!r}{moe}")
    if cfg.num_heads % cfg.num_kv_heads:
        raise ModelError(f"num_heads {cfg.num_heads} is not a multiple of "
                         f"num_kv_heads {cfg.num_kv_heads}")
    b = _Builder(data)
    lm_kind = opts.weights if opts.lm_head == "same" else opts.lm_head
    hd, nh, kvh = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    eps = cfg.rms_norm_eps

    cos, sin = _rope_caches(cfg)
    cos_name, sin_name = b.init("rope.cos_cache", cos), b.init("rope.sin_cache", sin)
    x = _embedding(b, "input_ids", tensor("model.embed_tokens.weight"), opts)

    layers = range(cfg.num_layers)
    if progress:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc=f"exporting ONNX ({opts.weights})", unit="layer")
    residual = None
    kv_names: list[tuple[str, str]] = []
    for i in layers:
        p = f"model.layers.{i}."
        ln1 = tensor(p + "input_layernorm.weight")
        if residual is None:
            h = b.node("SimplifiedLayerNormalization", [x, b.init(p + "ln1", ln1)], axis=-1,
                       epsilon=eps, stash_type=1)[0]
            residual = x
        else:
            h, _, _, residual = b.node("SkipSimplifiedLayerNormalization",
                                       [x, residual, b.init(p + "ln1", ln1)], n_out=4,
                                       domain="com.microsoft", epsilon=eps)
        a = p + "self_attn."
        w_qkv = np.concatenate([tensor(a + f"{t}_proj.weight") for t in "qkv"], axis=0)
        bias = None
        if cfg.attention_bias:
            bias = np.concatenate([tensor(a + f"{t}_proj.bias") for t in "qkv"], axis=0)
        qkv = _linear(b, h, w_qkv, bias, a + "qkv_proj", opts.weights, opts)
        if cfg.qk_norm:
            q, k, v = b.node("Split", [qkv, b.const_i64([nh * hd, kvh * hd, kvh * hd])],
                             n_out=3, axis=-1)
            q = _head_norm(b, q, nh, cfg, tensor(a + "q_norm.weight"), a + "q_norm")
            k = _head_norm(b, k, kvh, cfg, tensor(a + "k_norm.weight"), a + "k_norm")
            qkv_in = [q, k, v]
        else:
            qkv_in = [qkv, "", ""]
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        pres_k, pres_v = f"present.{i}.key", f"present.{i}.value"
        kv_names.append((past_k, past_v))
        attn = b.node("GroupQueryAttention",
                      [*qkv_in, past_k, past_v, "seqlens_k", "total_sequence_length",
                       cos_name, sin_name],
                      outputs=[b.name("attn"), pres_k, pres_v], domain="com.microsoft",
                      num_heads=nh, kv_num_heads=kvh, do_rotary=1, rotary_interleaved=0)[0]
        if i == cfg.num_layers - 1:
            # only the last position needs logits: from here on, compute just that row
            attn, residual = (b.node("Slice", [t, b.const_i64([-1]), b.const_i64([2**62]),
                                               b.const_i64([1])])[0] for t in (attn, residual))
        o = _linear(b, attn, tensor(a + "o_proj.weight"), None, a + "o_proj", opts.weights, opts)
        h, _, _, residual = b.node(
            "SkipSimplifiedLayerNormalization",
            [o, residual, b.init(p + "ln2", tensor(p + "post_attention_layernorm.weight"))],
            n_out=4, domain="com.microsoft", epsilon=eps)
        m = p + "mlp."
        if opts.fuse_gate_up:  # one wide MatMulNBits instead of two: fewer thread-pool rounds
            w_gu = np.concatenate([tensor(m + "gate_proj.weight"), tensor(m + "up_proj.weight")])
            gu = _linear(b, h, w_gu, None, m + "gate_up_proj", opts.weights, opts)
            gate, up = b.node("Split", [gu, b.const_i64([cfg.intermediate_size] * 2)], n_out=2,
                              axis=-1)
        else:
            gate = _linear(b, h, tensor(m + "gate_proj.weight"), None, m + "gate_proj",
                           opts.weights, opts)
            up = _linear(b, h, tensor(m + "up_proj.weight"), None, m + "up_proj", opts.weights,
                         opts)
        act = b.node("Mul", [gate, b.node("Sigmoid", [gate])[0]])[0]
        x = _linear(b, b.node("Mul", [act, up])[0], tensor(m + "down_proj.weight"), None,
                    m + "down_proj", opts.weights, opts)

    h = b.node("SkipSimplifiedLayerNormalization",
               [x, residual, b.init("model.norm.weight", tensor("model.norm.weight"))],
               domain="com.microsoft", epsilon=eps)[0]
    lm = tensor("lm_head.weight")
    _linear_out = _linear(b, h, lm, None, "lm_head", lm_kind, opts)
    b.node("Identity", [_linear_out], outputs=["logits"])

    f32, i32, i64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
    kv_shape = [1, kvh, "cache_capacity", hd]
    inputs = [helper.make_tensor_value_info("input_ids", i64, [1, "sequence_length"]),
              helper.make_tensor_value_info("seqlens_k", i32, [1]),
              helper.make_tensor_value_info("total_sequence_length", i32, [])]
    outputs = [helper.make_tensor_value_info("logits", f32, [1, 1, lm.shape[0]])]
    for i, (pk, pv) in enumerate(kv_names):
        inputs += [helper.make_tensor_value_info(pk, f32, kv_shape),
                   helper.make_tensor_value_info(pv, f32, kv_shape)]
        outputs += [helper.make_tensor_value_info(f"present.{i}.key", f32, kv_shape),
                    helper.make_tensor_value_info(f"present.{i}.value", f32, kv_shape)]
    graph = helper.make_graph(b.nodes, "qcoder_decoder", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="qcoder-ds")
    model.ir_version = 9
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write the graph (its weights already sit in ``DATA_FILE`` beside it)."""
    Path(path).write_bytes(model.SerializeToString())
