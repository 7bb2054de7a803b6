"""One-token decode steps of a Qwen3-MoE export in C (``_decode_kernel``).

The graphs (:func:`~qcoder_ds.runtime.moe_onnx.resident_model`, or a graph per layer under a
budget) decode one token with one session run, or one per layer; at one token a step their
``QMoE`` op runs each expert on one thread and their ~60 small ops a token cost more than
their work. The kernel runs the same arithmetic (MatMulNBits' int8 path for every int4
product, float32 elsewhere) with every product's rows split over the threads: decode measured
1.30x the one graph's on a 2-core AVX-512 EPYC (benchmarks/README.md). Prefill (several
tokens at once) stays on the graphs; both write the same KV cache. Fully resident, a token is
one call (the experts read from the graph's stacked arrays); under a budget the session calls
it layer by layer, each layer's experts from the expert cache.

It takes an int4 export with AVX-512 VNNI (blocks of 32 or 64, ``accuracy_level`` 4, the
layer graphs this exporter writes, hidden/attention/expert sizes multiples of 128);
:func:`decode_plan` returns None for anything else and the graphs decode alone.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime.quantize import BlockQuantized, dequantize_blockwise

try:
    from qcoder_ds.runtime import _decode_kernel
except ImportError:  # a source tree whose C extension is not built
    _decode_kernel = None


def available() -> bool:
    """Whether this machine runs the kernel (the extension is built, the CPU has VNNI)."""
    return _decode_kernel is not None and _decode_kernel.available()


class _Weights:
    """The initializers of the export's graphs by name; external ones read in place from the
    data file (a read-only memory map: the page cache holds them once)."""

    def __init__(self, folder: Path, models: Sequence[onnx.ModelProto]):
        self._folder = folder
        self._maps: dict[str, np.memmap] = {}
        self.tensors = {t.name: t for m in models for t in m.graph.initializer}

    def get(self, name: str) -> np.ndarray | None:
        t = self.tensors.get(name)
        if t is None:
            return None
        if t.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)
        info = {e.key: e.value for e in t.external_data}
        location = info["location"]
        if location not in self._maps:
            self._maps[location] = np.memmap(self._folder / location, np.uint8, "r")
        raw = self._maps[location]
        offset, length = int(info.get("offset", 0)), int(info["length"])
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        # a data file cut short: a ValueError here, which decode_plan takes as "not for the
        # kernel"; ONNX Runtime then says what is wrong with the export
        return raw[offset:offset + length].view(dtype).reshape(tuple(t.dims))


def _nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class Embedding:
    """One row of the token table, as ``Gather`` / ``GatherBlockQuantized`` gives it."""

    def __init__(self, w: _Weights, model: onnx.ModelProto):
        self.table = w.get("model.embed_tokens.weight")
        if self.table is not None:
            return
        a = _attrs(_nodes(model, "GatherBlockQuantized")[0])
        if a.get("gather_axis", 0) != 0 or a.get("quantize_axis", 1) != 1:
            raise ValueError("an embedding table quantized along another axis")
        self.bits, self.block = int(a.get("bits", 4)), int(a["block_size"])
        self.q = w.get("model.embed_tokens.qweight")
        self.scales = w.get("model.embed_tokens.scales")
        self.zp = w.get("model.embed_tokens.qzeros")

    def __call__(self, token: int) -> np.ndarray:
        if self.table is not None:
            return np.ascontiguousarray(self.table[token], np.float32)
        s = self.scales[token:token + 1]
        kb = s.shape[1]
        row = BlockQuantized(self.q[token:token + 1].reshape(1, kb, -1), s,
                             None if self.zp is None else self.zp[token:token + 1],
                             1, kb * self.block, self.bits, self.block)
        return dequantize_blockwise(row)[0]


class DecodePlan:
    """The C plan and what it reads: ``step`` decodes one token into ``logits``."""

    def __init__(self, plan, embedding: Embedding, arrays: list, cfg: ArchConfig):
        self._plan, self._embedding, self._arrays = plan, embedding, arrays
        self.routing = np.zeros((cfg.num_layers, cfg.num_experts_per_tok), np.int32)

    def step(self, token: int, position: int, kv: tuple[int, ...], logits: np.ndarray) -> None:
        """Token ``token`` at ``position``: its K/V rows into the caches at ``kv`` (addresses
        of float32 [kv_heads, max_context, head_dim], key then value per layer), its logits
        into ``logits``, each layer's experts into ``routing``."""
        self._plan.step(self._embedding(token), position, kv, logits, self.routing)

    # a token layer by layer, its experts from a cache (a plan made without them)
    def begin(self, token: int, position: int, kv: tuple[int, ...]) -> None:
        self._plan.begin(self._embedding(token), position, kv)

    def attend(self, layer: int, h: np.ndarray | None = None) -> np.ndarray:
        """Layer ``layer`` up to its routing: its experts (routing order), and in ``h`` the
        hidden state they take."""
        self._plan.attend(layer, self.routing[layer], h)
        return self.routing[layer]

    def experts(self, layer: int, blobs: Sequence[Mapping[str, np.ndarray]]) -> None:
        """The layer's experts, in the order :meth:`attend` gave them."""
        self._plan.experts(layer, [(a["gate_up.packed"], a["gate_up.scales"], a.get("gate_up.zp"),
                                    a["down.packed"], a["down.scales"], a.get("down.zp"))
                                   for a in blobs])

    def finish(self, logits: np.ndarray) -> None:
        self._plan.finish(logits)


def decode_plan(folder: Path, cfg: ArchConfig, layers: Sequence[onnx.ModelProto],
                head: onnx.ModelProto, quant: Mapping[str, object],
                experts: Sequence[Mapping[str, np.ndarray]] | None, cos: np.ndarray,
                sin: np.ndarray, max_context: int, threads: int) -> DecodePlan | None:
    """The kernel's plan for an export: ``experts[i]`` layer i's arrays from
    :func:`~qcoder_ds.runtime.moe_onnx.qmoe_weights` when every expert is resident, else None
    (each layer's are given with it, from the expert cache). None where it does not apply: no
    VNNI, not int4, other block sizes or accuracy levels, or graphs it does not know."""
    if not available() or quant.get("weights") != "int4":
        return None
    try:
        return _plan(folder, cfg, layers, head, quant, experts, cos, sin, max_context, threads)
    except (ValueError, OSError, KeyError, IndexError):  # graphs or data it cannot take
        return None


def _plan(folder: Path, cfg: ArchConfig, layers: Sequence[onnx.ModelProto],
          head: onnx.ModelProto, quant: Mapping[str, object],
          experts: Sequence[Mapping[str, np.ndarray]] | None, cos: np.ndarray, sin: np.ndarray,
          max_context: int, threads: int) -> DecodePlan | None:
    block = int(quant["block_size"])
    w = _Weights(folder, [*layers, head])
    for m in (*layers, head):
        for n in _nodes(m, "MatMulNBits"):
            a = _attrs(n)
            if (a.get("bits") != 4 or a.get("block_size") != block
                    or a.get("accuracy_level", 0) != 4 or len(n.input) > 4):
                return None
    zp = w.get("lm_head.qzeros") is not None
    if experts is not None and ("fc1_z" in experts[0]) != zp:
        return None

    def matrix(prefix: str) -> list | None:
        arrays = [w.get(prefix + ".qweight"), w.get(prefix + ".scales")]
        z = w.get(prefix + ".qzeros")
        if any(a is None for a in arrays) or (z is not None) != zp:
            return None
        return [*arrays, z]

    f32 = np.float32
    head_m = matrix("lm_head")
    final = w.get("model.norm.weight")
    if head_m is None or final is None:
        return None
    arrays: list = [np.ascontiguousarray(cos, f32), np.ascontiguousarray(sin, f32), final,
                    *head_m]
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        qkv, o = matrix(p + "self_attn.qkv_proj"), matrix(p + "self_attn.o_proj")
        small = [w.get(p + n) for n in ("ln1", "self_attn.q_norm", "self_attn.k_norm", "ln2",
                                        "mlp.gate.weight_t")]
        if qkv is None or o is None or any(a is None for a in small):
            return None
        ln1, qn, kn, ln2, router = small
        arrays += [ln1, *qkv, qn, kn, *o, ln2, router]
        if experts is None:
            arrays += [None] * 6
        else:
            e = experts[i]
            arrays += [e["fc1_w"], e["fc1_s"], e.get("fc1_z"), e["fc2_w"], e["fc2_s"],
                       e.get("fc2_z")]
    embedding = Embedding(w, layers[0])
    dims = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size,
            int(head_m[0].shape[0]), max_context, block, int(bool(cfg.norm_topk_prob)),
            int(zp))
    # the C side checks every array's bytes against these shapes (ValueError: not for it)
    plan = _decode_kernel.Plan(dims, arrays, float(cfg.rms_norm_eps), threads)
    return DecodePlan(plan, embedding, arrays, cfg)


def float_view(address: int, n: int) -> np.ndarray:
    """``n`` float32 at ``address`` as a numpy array (an OrtValue's buffer, written in place)."""
    return np.ctypeslib.as_array((ctypes.c_float * n).from_address(address))
