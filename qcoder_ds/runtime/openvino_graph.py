"""Build a decoder as an OpenVINO model with the opset API, weights compressed natively.

Why build the graph by hand instead of converting the ONNX export: OpenVINO runs ORT's
``MatMulNBits`` contrib op 7.5x slower than ORT does (measured, see RESEARCH.md), while its own
weight-compressed pattern -- a u4/u8 constant, Convert, Subtract zero point, Multiply scale,
MatMul -- is fused by the CPU plugin into one weight-decompressing FullyConnected kernel.
The graph follows the shapes optimum-intel exports (stateful KV cache as ReadValue/Assign with a
``beam_idx`` Gather, ScaledDotProductAttention, GPT-NeoX RoPE, RMSNorm as Power/ReduceMean/Sqrt),
because those are the patterns the CPU plugin's fusions (StatefulSDPAFusion, RoPEFusion,
RMSFusion) recognise; a fused SDPA keeps its own KV cache and needs no copies per token.

What decides speed on a CPU without VNNI (AVX2 only, e.g. AMD Zen 3): the compressed
FullyConnected expands weights to f32 inside the kernel (``brgemm_avx2_f32``) and is ~97% of a
decode step; OpenVINO's dynamic int8 quantization of activations needs avx2_vnni/avx512_vnni.
Symmetric i4 (no zero point) costs ~1.4x less per token there than u4 with zero points, so it
is the default. On VNNI/AMX CPUs the same i4 weights qualify for dynamic quantization.

Inputs: ``input_ids`` i64 [1, L], ``position_ids`` i64 [1, L] (consecutive, starting at the
number of cached tokens), ``beam_idx`` i32 [1] (always 0), ``logits_to_keep`` i64 [1] (1 for
prefill and decode; k + 1 to score a speculative draft in one pass). Output: ``logits`` f32
[1, logits_to_keep, vocab], the last positions only (the lm_head is the largest matrix; prefill
never needs the others).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcoder_ds.errors import ModelError, QcoderError
from qcoder_ds.models.checkpoint import Checkpoint
from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime.export import ExportError, atomic_write_files
from qcoder_ds.runtime.quantize import OpenVINOWeight, quantize_openvino

#: bump when the graph or the weight format changes, so cached exports are rebuilt
EXPORTER_VERSION = 3  # 3: the logits_to_keep input
WEIGHT_MODES = ("int4", "int8", "fp32")
#: int4 without zero points (i4, like Q4_0) rather than with them (u4 + u4 zero points)
SYMMETRIC_INT4 = True
#: one matrix for q/k/v and one for gate/up (then split), rather than one per projection
FUSE_PROJECTIONS = True
DENSE_ARCHS = ("qwen2", "qwen3", "llama")
MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
CONFIG_JSON = "config.json"
#: compiled-blob cache (OpenVINO CACHE_DIR) beside the model, so a second load is quick
CACHE_SUBDIR = "ov_cache"


def _ov():
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:  # pragma: no cover - depends on the install
        raise QcoderError(
            "the OpenVINO backend needs the openvino package: pip install 'qcoder-ds[openvino]'"
        ) from None
    return ov, ops


# ----------------------------------------------------------------------------- graph


@dataclass
class _Shared:
    """What every layer of one forward pass reads: RoPE tables, the mask, the beam index, the
    empty cache a KV variable starts from, and the Assign sinks the layers add."""

    cos: object
    sin: object
    mask: object
    beam: object
    empty_kv: object
    sinks: list = field(default_factory=list)


class _Builder:
    """Emits the opset nodes of one decoder; one method per building block."""

    def __init__(self, cfg: ArchConfig, ckpt: Checkpoint, weights: str, lm_head: str,
                 group: int, symmetric: bool):
        self.ov, self.ops = _ov()
        self.cfg, self.ckpt, self.weights, self.lm_head_mode, self.group = (
            cfg, ckpt, weights, lm_head, group)
        self.symmetric = symmetric
        self.fuse = FUSE_PROJECTIONS

    # -- constants
    def const(self, a: np.ndarray, name: str):
        a = np.asarray(a)
        if not a.flags.c_contiguous:  # (np.ascontiguousarray would turn a scalar into [1])
            a = a.copy(order="C")
        c = self.ov.op.Constant(a, shared_memory=False)
        c.set_friendly_name(name)
        return c

    def _packed(self, data: np.ndarray, shape: tuple[int, ...], name: str, kind):
        """A 4-bit constant (u4, or i4 with two's complement nibbles) from packed bytes."""
        t = self.ov.Tensor(kind, self.ov.Shape(list(shape)))
        t.data[:] = data
        c = self.ov.op.Constant(t, shared_memory=False)
        c.set_friendly_name(name)
        return c

    def _levels(self, qw: OpenVINOWeight, name: str):
        """The constants of the quantized levels and their zero points (None for i4)."""
        if qw.element == "u8":
            return self.const(qw.q, name + "/q"), self.const(qw.zero_point, name + "/zp")
        kind = self.ov.Type.i4 if qw.element == "i4" else self.ov.Type.u4
        wq = self._packed(qw.q, qw.shape, name + "/q", kind)
        if qw.zero_point is None:
            return wq, None
        return wq, self._packed(qw.zero_point, qw.scale.shape, name + "/zp", self.ov.Type.u4)

    def weight(self, w: np.ndarray, name: str, mode: str):
        """The decompressed [out, in] f32 weight as a node: a constant in fp32, else the
        Convert -> Subtract(zp) -> Multiply(scale) -> (Reshape) -> Convert chain the CPU
        plugin folds into its weight-compressed kernels. An int4 matrix whose width is not a
        multiple of the group is stored in int8."""
        if mode == "fp32":
            return self.const(w.astype(np.float32), name)
        bits = 4 if mode == "int4" and w.shape[1] % self.group == 0 else 8
        return self.compressed(quantize_openvino(w, bits, self.group, self.symmetric), name,
                               w.shape)

    def compressed(self, qw: OpenVINOWeight, name: str, shape: tuple[int, ...]):
        """The decompression chain of an already quantized [out, in] weight (the MoE expert
        store keeps experts quantized)."""
        ops, ov = self.ops, self.ov
        wq, zc = self._levels(qw, name)
        x = ops.convert(wq, ov.Type.f16)
        if zc is not None:
            x = ops.subtract(x, ops.convert(zc, ov.Type.f16))
        x = ops.multiply(x, self.const(qw.scale, name + "/scale"))
        if x.get_output_partial_shape(0).rank.get_length() == 3:
            x = ops.reshape(x, self.const(np.array(shape, np.int64), name + "/shape"), False)
        return ops.convert(x, ov.Type.f32)

    def linear(self, x, names: list[str], mode: str, bias: bool = False):
        """x @ W.T (+ b); several HF linears sharing an input are concatenated along the output
        axis into one matrix (exact: quantization groups run along the input axis), so decode
        runs one kernel instead of two or three."""
        w = np.concatenate([self.ckpt.tensor(n + ".weight") for n in names], axis=0)
        y = self.ops.matmul(x, self.weight(w, names[0], mode), False, True)
        if bias:
            b = np.concatenate([self.ckpt.tensor(n + ".bias") for n in names], axis=0)
            y = self.ops.add(y, self.const(b.astype(np.float32), names[0] + ".bias"))
        return y

    def rms(self, x, gamma_name: str):
        """RMSNorm in the exact shape RMSFusion matches: x * (sqrt(mean(x^2)+eps))^-1 * gamma."""
        ops = self.ops
        f = np.float32
        p = ops.power(x, self.const(np.array(2.0, f), "two"))
        m = ops.reduce_mean(p, self.const(np.array([-1], np.int64), "axis"), True)
        s = ops.sqrt(ops.add(m, self.const(np.array(self.cfg.rms_norm_eps, f), "eps")))
        r = ops.power(s, self.const(np.array(-1.0, f), "minus_one"))
        g = self.const(self.ckpt.tensor(gamma_name).astype(f), gamma_name)
        return ops.multiply(g, ops.multiply(x, r))

    def rope(self, x, cos, sin):
        """GPT-NeoX rotation [x1, x2] * cos + [-x2, x1] * sin, as RoPEFusionGPTNEOX matches it."""
        ops = self.ops
        half = self.cfg.head_dim // 2
        parts = ops.variadic_split(x, self.const(np.array(3, np.int64), "a3"),
                                   self.const(np.array([half, -1], np.int64), "halves"))
        x2neg = ops.multiply(parts.output(1), self.const(np.array(-1.0, np.float32), "neg"))
        rot = ops.concat([x2neg, parts.output(0)], -1)
        return ops.add(ops.multiply(x, cos), ops.multiply(rot, sin))

    def heads(self, y, n_heads: int, norm: str | None):
        """[1, L, n*D] -> [1, n, L, D], with Qwen3's per-head RMSNorm before the transpose."""
        ops = self.ops
        y = ops.reshape(y, self.const(np.array([0, 0, n_heads, self.cfg.head_dim], np.int64),
                                      "shape4"), True)
        if norm:
            y = self.rms(y, norm)
        return ops.transpose(y, self.const(np.array([0, 2, 1, 3], np.int64), "perm"))

    # -- blocks
    def embedding(self, ids):
        """Token ids -> hidden states: a gather from the (int8, in quantized exports) table."""
        emb_mode = "fp32" if self.weights == "fp32" else "int8"
        table = self.weight(self.ckpt.tensor("model.embed_tokens.weight"),
                            "model.embed_tokens", emb_mode)
        return self.ops.gather(table, ids, self.const(np.array(0, np.int64), "a0"))

    def rope_tables(self, pos):
        """cos and sin [1, 1, L, D] for the positions of this step."""
        ov, ops, d = self.ov, self.ops, self.cfg.head_dim
        inv_freq = (1.0 / (self.cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64)
                                                   .astype(np.float32) / d))).astype(np.float32)
        posf = ops.unsqueeze(ops.convert(pos, ov.Type.f32),
                             self.const(np.array(-1, np.int64), "am1"))
        freqs = ops.multiply(posf, self.const(inv_freq[None, None, :], "inv_freq"))
        emb = ops.unsqueeze(ops.concat([freqs, freqs], -1),
                            self.const(np.array(1, np.int64), "a1"))
        return ops.cos(emb), ops.sin(emb)

    def causal_mask(self, pos):
        """The additive mask [1, 1, L, S]: key j is visible to the query at position p iff
        j <= p; S = last position + 1 = cached + L. Correct for any chunk at any offset."""
        ov, ops, i64 = self.ov, self.ops, np.int64
        last = ops.gather(pos, self.const(np.array([-1], i64), "last"),
                          self.const(np.array(1, i64), "a1b"))
        total = ops.add(ops.reshape(last, self.const(np.array([], i64), "scalar"), False),
                        self.const(np.array(1, i64), "one"))
        kpos = ops.range(self.const(np.array(0, i64), "zero"), total,
                         self.const(np.array(1, i64), "step"), ov.Type.i64)
        visible = ops.less_equal(kpos, ops.unsqueeze(pos, self.const(np.array(-1, i64), "am1b")))
        mask = ops.select(visible, self.const(np.array(0.0, np.float32), "f0"),
                          self.const(np.array(-np.inf, np.float32), "ninf"))
        return ops.unsqueeze(mask, self.const(np.array(1, i64), "a1c"))

    def decoder_block(self, i: int, x, s: _Shared):
        """Layer i: x + attention(norm(x)), then that + feed_forward(norm(that))."""
        pre = f"model.layers.{i}."
        h = self.rms(x, pre + "input_layernorm.weight")
        x = self.ops.add(x, self.attention(i, h, s))
        h = self.rms(x, pre + "post_attention_layernorm.weight")
        return self.ops.add(x, self.feed_forward_for(i)(pre + "mlp.", h))

    def attention(self, i: int, h, s: _Shared):
        """Self-attention with RoPE, the stateful KV cache and grouped-query heads, in the
        shape StatefulSDPAFusion matches; returns o_proj's output."""
        ops, cfg, a = self.ops, self.cfg, f"model.layers.{i}.self_attn."
        q, k, v = self.qkv(a, h)
        q = self.rope(q, s.cos, s.sin)
        k = self.rope(k, s.cos, s.sin)
        kv = self.kv_cache(i, k, v, s)
        if cfg.num_heads != cfg.num_kv_heads:
            kv = self.repeat_kv(kv)
        att = ops.scaled_dot_product_attention(q, kv[0], kv[1], s.mask)
        att = ops.transpose(att, self.const(np.array([0, 2, 1, 3], np.int64), "perm2"))
        att = ops.reshape(att, self.const(np.array([0, 0, cfg.num_heads * cfg.head_dim],
                                                   np.int64), "merge"), True)
        return self.linear(att, [a + "o_proj"], self.weights)

    def qkv(self, a: str, h):
        """q [1, heads, L, D] and k, v [1, kv_heads, L, D], from one fused projection."""
        cfg, nh, nkv = self.cfg, self.cfg.num_heads, self.cfg.num_kv_heads
        names = [a + "q_proj", a + "k_proj", a + "v_proj"]
        if self.fuse:
            qkv = self.linear(h, names, self.weights, bias=cfg.attention_bias)
            sizes = np.array([nh * cfg.head_dim, nkv * cfg.head_dim, nkv * cfg.head_dim],
                             np.int64)
            parts = self.ops.variadic_split(qkv, self.const(np.array(-1, np.int64), "am1c"),
                                            self.const(sizes, "qkv_split"))
            parts = [parts.output(j) for j in range(3)]
        else:
            parts = [self.linear(h, [n], self.weights, bias=cfg.attention_bias) for n in names]
        return (self.heads(parts[0], nh, a + "q_norm.weight" if cfg.qk_norm else None),
                self.heads(parts[1], nkv, a + "k_norm.weight" if cfg.qk_norm else None),
                self.heads(parts[2], nkv, None))

    def kv_cache(self, i: int, k, v, s: _Shared) -> list:
        """Past + new keys and values, each kept in a variable (ReadValue/Assign) between
        calls; the ``beam_idx`` Gather is the shape the CPU plugin's stateful SDPA expects."""
        ov, ops = self.ov, self.ops
        shape = ov.PartialShape([1, self.cfg.num_kv_heads, -1, self.cfg.head_dim])
        kv = []
        for name, cur in (("key", k), ("value", v)):
            var_id = f"past_key_values.{i}.{name}"
            rv = ops.read_value(s.empty_kv, var_id, ov.Type.f32, shape)
            past = ops.gather(rv, s.beam, self.const(np.array(0, np.int64), "a0b"))
            cat = ops.concat([past, cur], 2)
            s.sinks.append(ops.assign(cat, var_id))
            kv.append(cat)
        return kv

    def repeat_kv(self, kv: list) -> list:
        """Grouped-query attention: each KV head repeated num_heads/num_kv_heads times."""
        ops, i64, nh = self.ops, np.int64, self.cfg.num_heads
        rep = self.const(np.array([1, 1, nh // self.cfg.num_kv_heads, 1, 1], i64), "gqa_rep")
        shape = self.const(np.array([0, nh, -1, self.cfg.head_dim], i64), "gqa_shape")
        return [ops.reshape(ops.broadcast(
            ops.unsqueeze(t, self.const(np.array(2, i64), "a2")), rep,
            broadcast_spec="bidirectional"), shape, True) for t in kv]

    def feed_forward_for(self, i: int):
        """The feed-forward block of layer i: the MLP in every dense layer; a mixture-of-experts
        layer gets its own block method here, the rest of the block unchanged."""
        return self.mlp

    def mlp(self, m: str, h):
        """down(SiLU(gate(h)) * up(h)), gate and up as one matrix split in two."""
        ops = self.ops
        if self.fuse:
            gu = self.linear(h, [m + "gate_proj", m + "up_proj"], self.weights)
            gu = ops.variadic_split(gu, self.const(np.array(-1, np.int64), "am1d"),
                                    self.const(np.array([self.cfg.intermediate_size] * 2,
                                                        np.int64), "gu_split"))
            gate, up = gu.output(0), gu.output(1)
        else:
            gate = self.linear(h, [m + "gate_proj"], self.weights)
            up = self.linear(h, [m + "up_proj"], self.weights)
        act = ops.multiply(ops.swish(gate), up)
        return self.linear(act, [m + "down_proj"], self.weights)

    def lm_head(self, x, keep):
        """The last ``keep`` positions only, final norm, lm_head: the ``logits`` result."""
        ops, i64 = self.ops, np.int64
        x = ops.slice(x, ops.negative(keep),
                      self.const(np.array([np.iinfo(np.int64).max], i64), "s_stop"),
                      self.const(np.array([1], i64), "s_step"),
                      self.const(np.array([1], i64), "s_axis"))
        x = self.rms(x, "model.norm.weight")
        logits = self.linear(x, ["lm_head"], self.lm_head_mode)
        out = ops.result(logits)
        out.output(0).get_tensor().set_names({"logits"})
        logits.output(0).get_tensor().set_names({"logits"})
        return out

    # -- whole model
    def inputs(self) -> tuple:
        ov, ops = self.ov, self.ops
        ids = ops.parameter([1, -1], ov.Type.i64, name="input_ids")
        pos = ops.parameter([1, -1], ov.Type.i64, name="position_ids")
        beam = ops.parameter([1], ov.Type.i32, name="beam_idx")
        keep = ops.parameter([1], ov.Type.i64, name="logits_to_keep")
        for p, n in ((ids, "input_ids"), (pos, "position_ids"), (beam, "beam_idx"),
                     (keep, "logits_to_keep")):
            p.output(0).get_tensor().set_names({n})
        return ids, pos, beam, keep

    def build(self, progress: bool):
        cfg = self.cfg
        ids, pos, beam, keep = self.inputs()
        x = self.embedding(ids)
        cos, sin = self.rope_tables(pos)
        # the value a variable holds after reset: an empty cache [1, kv_heads, 0, head_dim]
        empty_kv = np.zeros((1, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
        s = _Shared(cos, sin, self.causal_mask(pos), beam, self.const(empty_kv, "empty_kv"))
        layers = range(cfg.num_layers)
        if progress:
            from tqdm import tqdm

            layers = tqdm(layers, desc=f"OpenVINO export ({self.weights})", unit="layer")
        for i in layers:
            x = self.decoder_block(i, x, s)
        return self.ov.Model([self.lm_head(x, keep)], s.sinks, [ids, pos, beam, keep],
                             "qcoder_decoder")


def build_openvino_model(ckpt: Checkpoint, weights: str = "int4", lm_head: str | None = None,
                         group_size: int = 32, progress: bool = False,
                         symmetric: bool = SYMMETRIC_INT4):
    """The decoder of ``ckpt`` as an in-memory ``openvino.Model``."""
    cfg = ckpt.config
    for what, mode in (("weights", weights), ("lm_head weights", lm_head or weights)):
        if mode not in WEIGHT_MODES:
            raise ModelError(f"{what} must be one of {', '.join(WEIGHT_MODES)}, got {mode!r}")
    if cfg.arch not in DENSE_ARCHS:
        kind = " (mixture of experts)" if cfg.num_experts or "moe" in cfg.arch else ""
        raise ModelError(f"the OpenVINO exporter builds dense {', '.join(DENSE_ARCHS)} decoders; "
                         f"{cfg.arch!r}{kind} is exported by openvino_backend.export_openvino "
                         f"(per-layer models and an expert store)")
    if cfg.head_dim % 2:
        raise ModelError(f"RoPE needs an even head_dim, got {cfg.head_dim}")
    lm_head = lm_head or default_lm_head(weights)
    return _Builder(cfg, ckpt, weights, lm_head, group_size, symmetric).build(progress)


def default_lm_head(weights: str) -> str:
    """The lm_head is re-quantized to 8 bits in int4 mode, like NNCF's backup precision: it is
    the matrix whose errors reach the logits directly."""
    return "int8" if weights == "int4" else weights


def export_openvino(ckpt: Checkpoint, out_dir: Path, weights: str = "int4",
                    progress: bool = True, lm_head: str | None = None,
                    group_size: int = 32, symmetric: bool = SYMMETRIC_INT4) -> None:
    """Write ``out_dir/openvino_model.xml`` + ``.bin`` and ``out_dir/config.json``.

    Files are written under a temporary directory and renamed into place, config.json last
    (``atomic_write_files``), so an interrupted export never leaves a directory that looks
    complete.
    """
    ov, _ = _ov()
    out_dir = Path(out_dir)
    model = build_openvino_model(ckpt, weights, lm_head, group_size, progress, symmetric)
    meta = {
        **ckpt.config.to_dict(),
        "backend": "openvino",
        "weights": weights,
        "lm_head_weights": lm_head or default_lm_head(weights),
        "group_size": group_size,
        "int4_symmetric": symmetric,
        "embedding_weights": "fp32" if weights == "fp32" else "int8",
        "exporter_version": EXPORTER_VERSION,
        "openvino_version": ov.get_version(),
    }

    def write(tmp: Path) -> None:
        ov.save_model(model, str(tmp / MODEL_XML), compress_to_fp16=False)
        (tmp / CONFIG_JSON).write_text(json.dumps(meta, indent=2))
        (out_dir / CONFIG_JSON).unlink(missing_ok=True)  # incomplete until renamed back
        shutil.rmtree(out_dir / CACHE_SUBDIR, ignore_errors=True)  # blobs of the old model

    try:
        atomic_write_files(out_dir, (MODEL_BIN, MODEL_XML, CONFIG_JSON), write)
    except OSError as e:
        raise ExportError(f"could not write the OpenVINO export to {out_dir}: {e}") from None


def compile_properties(meta: dict, threads: int | None) -> dict:
    """CPU plugin settings: latency mode with one stream; an fp32 export is also computed and
    cached in f32 (its point is exact parity), while quantized exports keep the plugin's fast
    defaults (u8 KV cache on x86, bf16 where the CPU has it)."""
    props: dict = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    if meta.get("weights") == "fp32":
        props["INFERENCE_PRECISION_HINT"] = "f32"
        props["KV_CACHE_PRECISION"] = "f32"
    return props


def _last_line(e: Exception) -> str:
    """OpenVINO's messages start with a source location; the useful line is the last one."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
