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
EXPORTER_VERSION = 3  # 3: the logits_to_keep input
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

    def __init__(self, data: BinaryIO, location: str = DATA_FILE):
        self.data = data
        self.location = location  # the data file's name, as the graph refers to it
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
        for k, v in (("location", self.location), ("offset", str(offset)),
                     ("length", str(arr.nbytes))):
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


@dataclass
class _Ctx:
    """What every block of one export reads: the builder, the model's shape and weights."""

    b: _Builder
    cfg: ArchConfig
    tensor: Callable[[str], np.ndarray]
    opts: OnnxExportOptions
    rope: tuple[str, str] = ("", "")  # the cos/sin cache initializers
    keep_from: str = ""  # -logits_to_keep: where the last layer's rows start

    def linear(self, x: str, w: np.ndarray, name: str, bias: np.ndarray | None = None,
               kind: str | None = None) -> str:
        return _linear(self.b, x, w, bias, name, kind or self.opts.weights, self.opts)


def build_decoder(cfg: ArchConfig, tensor: Callable[[str], np.ndarray], data: BinaryIO,
                  opts: OnnxExportOptions, progress: bool = False) -> onnx.ModelProto:
    """The decoder graph; initializers over 1 KiB are written to ``data`` (``DATA_FILE``)."""
    _check_supported(cfg)
    c = _Ctx(_Builder(data), cfg, tensor, opts)
    cos, sin = _rope_caches(cfg)
    c.rope = (c.b.init("rope.cos_cache", cos), c.b.init("rope.sin_cache", sin))
    c.keep_from = c.b.node("Neg", ["logits_to_keep"])[0]
    x = _embedding(c.b, "input_ids", tensor("model.embed_tokens.weight"), opts)
    residual = None
    for i in _layers(cfg.num_layers, progress, f"exporting ONNX ({opts.weights})"):
        x, residual = _decoder_block(c, i, x, residual)
    vocab = _lm_head(c, x, residual)
    return _model(c, vocab)


def _check_supported(cfg: ArchConfig) -> None:
    if cfg.arch not in ("qwen2", "qwen3", "llama") or cfg.num_experts:
        moe = " (mixture of experts)" if cfg.num_experts or cfg.arch.endswith("moe") else ""
        raise ModelError(f"the ONNX exporter builds dense qwen2/qwen3/llama decoders, "
                         f"not {cfg.arch!r}{moe}")
    if cfg.num_heads % cfg.num_kv_heads:
        raise ModelError(f"num_heads {cfg.num_heads} is not a multiple of "
                         f"num_kv_heads {cfg.num_kv_heads}")


def _layers(n: int, progress: bool, desc: str):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, unit="layer")


def _decoder_block(c: _Ctx, i: int, x: str, residual: str | None) -> tuple[str, str]:
    """Layer i: norm, attention, norm, feed-forward. Each residual add is fused into the next
    Skip-RMSNorm, so the block returns its output and the residual stream separately."""
    p = f"model.layers.{i}."
    h, residual = _norm(c, x, residual, p + "ln1", p + "input_layernorm.weight")
    attn = _attention(c, i, h)
    if i == c.cfg.num_layers - 1:
        # only the positions that need logits: from here on, compute just those rows
        attn, residual = _last_positions(c, attn), _last_positions(c, residual)
    o = c.linear(attn, c.tensor(p + "self_attn.o_proj.weight"), p + "self_attn.o_proj")
    h, residual = _norm(c, o, residual, p + "ln2", p + "post_attention_layernorm.weight")
    return _feed_forward_for(c.cfg, i)(c, p + "mlp.", h), residual


def _norm(c: _Ctx, x: str, residual: str | None, name: str, weight: str,
          n_out: int = 4) -> tuple[str, str]:
    """RMSNorm of x + residual -> (normed, x + residual), as ORT's fused Skip-RMSNorm; the
    first layer has no residual yet, and the final norm (n_out=1) needs no sum."""
    eps = c.cfg.rms_norm_eps
    w = c.b.init(name, c.tensor(weight))
    if residual is None:
        h = c.b.node("SimplifiedLayerNormalization", [x, w], axis=-1, epsilon=eps,
                     stash_type=1)[0]
        return h, x
    outs = c.b.node("SkipSimplifiedLayerNormalization", [x, residual, w], n_out=n_out,
                    domain="com.microsoft", epsilon=eps)
    return outs[0], outs[-1]


def _attention(c: _Ctx, i: int, h: str) -> str:
    """Fused q/k/v projection, Qwen3's per-head norms, then GroupQueryAttention: RoPE, GQA
    and the KV cache (past and present bound to one buffer) in one contrib op."""
    cfg, b, a = c.cfg, c.b, f"model.layers.{i}.self_attn."
    hd, nh, kvh = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    w_qkv = np.concatenate([c.tensor(a + f"{t}_proj.weight") for t in "qkv"], axis=0)
    bias = None
    if cfg.attention_bias:
        bias = np.concatenate([c.tensor(a + f"{t}_proj.bias") for t in "qkv"], axis=0)
    qkv = c.linear(h, w_qkv, a + "qkv_proj", bias)
    if cfg.qk_norm:
        q, k, v = b.node("Split", [qkv, b.const_i64([nh * hd, kvh * hd, kvh * hd])],
                         n_out=3, axis=-1)
        q = _head_norm(b, q, nh, cfg, c.tensor(a + "q_norm.weight"), a + "q_norm")
        k = _head_norm(b, k, kvh, cfg, c.tensor(a + "k_norm.weight"), a + "k_norm")
        qkv_in = [q, k, v]
    else:
        qkv_in = [qkv, "", ""]
    past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    return b.node("GroupQueryAttention",
                  [*qkv_in, *past, "seqlens_k", "total_sequence_length", *c.rope],
                  outputs=[b.name("attn"), f"present.{i}.key", f"present.{i}.value"],
                  domain="com.microsoft", num_heads=nh, kv_num_heads=kvh, do_rotary=1,
                  rotary_interleaved=0)[0]


def _last_positions(c: _Ctx, t: str) -> str:
    """The last ``logits_to_keep`` rows of [1, S, hidden]."""
    b = c.b
    return b.node("Slice", [t, c.keep_from, b.const_i64([2**62]), b.const_i64([1])])[0]


def _feed_forward_for(cfg: ArchConfig, i: int) -> Callable[[_Ctx, str, str], str]:
    """The feed-forward block of layer i: the MLP in every dense layer; a mixture-of-experts
    layer gets its own block function here, the rest of the block unchanged."""
    return _mlp


def _mlp(c: _Ctx, m: str, h: str) -> str:
    """down(SiLU(gate(h)) * up(h)), the SwiGLU MLP of Qwen and Llama."""
    b = c.b
    if c.opts.fuse_gate_up:  # one wide MatMulNBits instead of two: fewer thread-pool rounds
        w_gu = np.concatenate([c.tensor(m + "gate_proj.weight"), c.tensor(m + "up_proj.weight")])
        gu = c.linear(h, w_gu, m + "gate_up_proj")
        gate, up = b.node("Split", [gu, b.const_i64([c.cfg.intermediate_size] * 2)], n_out=2,
                          axis=-1)
    else:
        gate = c.linear(h, c.tensor(m + "gate_proj.weight"), m + "gate_proj")
        up = c.linear(h, c.tensor(m + "up_proj.weight"), m + "up_proj")
    act = b.node("Mul", [gate, b.node("Sigmoid", [gate])[0]])[0]
    return c.linear(b.node("Mul", [act, up])[0], c.tensor(m + "down_proj.weight"),
                    m + "down_proj")


def _lm_head(c: _Ctx, x: str, residual: str) -> int:
    """Final norm and lm_head into the ``logits`` output; returns the vocabulary size."""
    h, _ = _norm(c, x, residual, "model.norm.weight", "model.norm.weight", n_out=1)
    lm = c.tensor("lm_head.weight")
    kind = c.opts.weights if c.opts.lm_head == "same" else c.opts.lm_head
    c.b.node("Identity", [c.linear(h, lm, "lm_head", kind=kind)], outputs=["logits"])
    return lm.shape[0]


def _model(c: _Ctx, vocab: int) -> onnx.ModelProto:
    """The graph's inputs and outputs (a past and present key/value per layer) around it."""
    f32, i32, i64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
    kv_shape = [1, c.cfg.num_kv_heads, "cache_capacity", c.cfg.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", i64, [1, "sequence_length"]),
              helper.make_tensor_value_info("logits_to_keep", i64, [1]),
              helper.make_tensor_value_info("seqlens_k", i32, [1]),
              helper.make_tensor_value_info("total_sequence_length", i32, [])]
    outputs = [helper.make_tensor_value_info("logits", f32, [1, "logits_to_keep", vocab])]
    for i in range(c.cfg.num_layers):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", f32,
                                                        kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", f32, kv_shape))
    graph = helper.make_graph(c.b.nodes, "qcoder_decoder", inputs, outputs, c.b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="qcoder-ds")
    model.ir_version = 9
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write the graph (its weights already sit in ``DATA_FILE`` beside it)."""
    Path(path).write_bytes(model.SerializeToString())
