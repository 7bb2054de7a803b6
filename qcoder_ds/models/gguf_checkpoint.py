"""Read a GGUF file's weights and architecture without torch.

Quantized tensors (Q4_K, Q5_0, Q5_K, Q6_K, Q8_0, F16, ...) are dequantized to float32 with
``gguf.quants.dequantize``; tensors are renamed to Hugging Face names so the graph builders
see the same checkpoint whatever the source.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from qcoder_ds.errors import ModelError
from qcoder_ds.models.checkpoint import Checkpoint
from qcoder_ds.models.config import SUPPORTED_ARCHS, ArchConfig
from qcoder_ds.models.gguf_metadata import read_gguf_metadata

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
}
# stacked expert tensors [n_expert, out, in], split into Hugging Face's per-expert names
_EXPERTS = {"ffn_gate_exps.weight": "gate_proj", "ffn_up_exps.weight": "up_proj",
            "ffn_down_exps.weight": "down_proj"}
_ARCH_ALIASES = {"qwen3moe": "qwen3_moe"}


class GGUFCheckpoint(Checkpoint):
    """Weights and ArchConfig of one GGUF file.

    The header comes from ``read_gguf_metadata`` (fast, and it rejects truncated files); the
    tensor bytes are memory-mapped and dequantized one tensor at a time, so the whole model is
    never held in float32 at once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = read_gguf_metadata(self.path)
        self._tensors = {t.name: t for t in self.meta.tensors}
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r")
        self.config = self._read_config()
        self._check_experts()
        self._names = self._hf_names()

    def _read_config(self) -> ArchConfig:
        raw_arch = self.meta.architecture
        arch = _ARCH_ALIASES.get(raw_arch, raw_arch)
        if arch not in SUPPORTED_ARCHS:
            raise ModelError(
                f"{self.path}: unsupported architecture {raw_arch!r}; qcoder-ds runs "
                f"{', '.join(SUPPORTED_ARCHS)} decoders"
            )
        if "token_embd.weight" not in self._tensors:
            raise ModelError(f"{self.path}: no token_embd.weight; not a decoder GGUF")

        def meta(key, default=None):
            return self.meta.get(f"{raw_arch}.{key}", default)

        hidden = int(meta("embedding_length"))
        heads = int(meta("attention.head_count"))
        return ArchConfig(
            arch=arch,
            vocab_size=int(self._tensors["token_embd.weight"].shape[-1]),
            hidden_size=hidden,
            intermediate_size=int(meta("feed_forward_length", 0)),
            num_layers=int(meta("block_count")),
            num_heads=heads,
            num_kv_heads=int(meta("attention.head_count_kv", heads)),
            head_dim=int(meta("attention.key_length", hidden // heads)),
            rms_norm_eps=_f32(meta("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=_f32(meta("rope.freq_base", 10000.0)),
            max_position_embeddings=int(meta("context_length", 32768)),
            tie_word_embeddings="output.weight" not in self._tensors,
            attention_bias="blk.0.attn_q.bias" in self._tensors,
            qk_norm="blk.0.attn_q_norm.weight" in self._tensors,
            num_experts=int(meta("expert_count", 0)),
            num_experts_per_tok=int(meta("expert_used_count", 0)),
            moe_intermediate_size=int(meta("expert_feed_forward_length", 0)),
            # llama.cpp always renormalizes the top-k weights of qwen3moe (expert_weights_norm
            # is written by other MoE converters; honoured if present)
            norm_topk_prob=bool(meta("expert_weights_norm", arch == "qwen3_moe")),
        )

    def _check_experts(self) -> None:
        """Merged expert tensors must match the header: llama.cpp reads ``expert_count`` and
        ``expert_feed_forward_length`` from it, and a GGUF edited or converted by hand whose
        tensors disagree would otherwise be sliced at the wrong byte offsets."""
        c = self.config
        pattern = re.compile(r"blk\.\d+\.(ffn_(gate|up|down)_exps|ffn_gate_inp)\.weight")
        merged = [t for t in self.meta.tensors if pattern.fullmatch(t.name)]
        if not merged:
            return
        if c.num_experts <= 0:
            raise ModelError(
                f"{self.path}: tensor {merged[0].name} holds experts but the header has no "
                f"{self.meta.architecture}.expert_count; the GGUF is incomplete, convert it again"
            )
        if not 0 < c.num_experts_per_tok <= c.num_experts:
            raise ModelError(
                f"{self.path}: {self.meta.architecture}.expert_used_count is "
                f"{c.num_experts_per_tok}, it must be between 1 and expert_count {c.num_experts}"
            )
        ff = c.moe_intermediate_size
        for t in merged:
            rest = t.name.split(".", 2)[2]
            layer = int(t.name.split(".")[1])
            if layer >= c.num_layers:
                raise ModelError(
                    f"{self.path}: tensor {t.name} is for layer {layer}, the header's block_count "
                    f"is {c.num_layers}"
                )
            if rest == "ffn_gate_inp.weight":  # router, GGUF order [hidden, experts]
                want = (c.hidden_size, c.num_experts)
                what = ("hidden size", "expert count")
            elif rest == "ffn_down_exps.weight":  # [ff, hidden, experts]
                want = (ff, c.hidden_size, c.num_experts)
                what = ("expert_feed_forward_length", "hidden size", "expert count")
            else:  # gate/up [hidden, ff, experts]
                want = (c.hidden_size, ff, c.num_experts)
                what = ("hidden size", "expert_feed_forward_length", "expert count")
            if len(t.shape) != len(want):
                raise ModelError(
                    f"{self.path}: tensor {t.name} has {len(t.shape)} dimensions {t.shape}, "
                    f"expected {len(want)} {want}"
                )
            for got, expected, label in zip(t.shape, want, what, strict=True):
                if got != expected:
                    raise ModelError(
                        f"{self.path}: tensor {t.name} has {label} {got} but the header says "
                        f"{expected} (shape {t.shape}, GGUF order); the GGUF is inconsistent, "
                        "convert it again"
                    )

    def _hf_names(self) -> dict[str, tuple[str, int | None]]:
        """HF name -> (GGUF name, expert index or None)."""
        names: dict[str, tuple[str, int | None]] = {}
        for gname in self._tensors:
            if gname in _GLOBAL:
                names[_GLOBAL[gname]] = (gname, None)
                continue
            m = re.fullmatch(r"blk\.(\d+)\.(.+)", gname)
            if not m:
                continue  # e.g. rope_freqs: recomputed from the config
            layer, rest = m.groups()
            prefix = f"model.layers.{layer}."
            if rest in _BLOCK:
                names[prefix + _BLOCK[rest]] = (gname, None)
            elif rest in _EXPERTS:
                for e in range(self.config.num_experts):
                    names[f"{prefix}mlp.experts.{e}.{_EXPERTS[rest]}.weight"] = (gname, e)
        if self.config.tie_word_embeddings:
            names["lm_head.weight"] = ("token_embd.weight", None)
        return names

    def names(self) -> list[str]:
        return list(self._names)

    def raw_type(self, name: str) -> str:
        """The GGUF quantization type of a tensor (e.g. 'Q5_0'), to size roofline estimates."""
        return self._tensors[self._names[name][0]].type_name

    def raw_bytes(self, name: str) -> int:
        """Bytes the tensor occupies in the file (one expert's share for stacked experts)."""
        gname, expert = self._names[name]
        t = self._tensors[gname]
        return t.n_bytes // t.shape[-1] if expert is not None else t.n_bytes

    def raw_data(self, name: str) -> tuple[str, np.ndarray]:
        """(GGUF type, bytes) of one tensor, unconverted: for stacked experts only that expert's
        rows (a byte range, blocks never span rows), so an expert store can copy or repack a
        quantized expert without dequantizing the merged tensor."""
        if name not in self._names:
            raise ModelError(f"{self.path}: tensor {name} is missing from the GGUF")
        gname, expert = self._names[name]
        t = self._tensors[gname]
        if expert is None:
            return t.type_name, self._data[t.offset:t.offset + t.n_bytes]
        share = t.n_bytes // t.shape[-1]
        start = t.offset + expert * share
        return t.type_name, self._data[start:start + share]

    def tensor(self, name: str) -> np.ndarray:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize

        if name not in self._names:
            raise ModelError(f"{self.path}: tensor {name} is missing from the GGUF")
        gname, expert = self._names[name]
        t = self._tensors[gname]
        qtype = GGMLQuantizationType[t.type_name]
        block, type_size = GGML_QUANT_SIZES[qtype]
        rows = tuple(reversed(t.shape[1:]))  # numpy order: slowest axis first
        row_bytes = t.shape[0] // block * type_size
        raw = self._data[t.offset:t.offset + t.n_bytes].reshape(*rows, row_bytes)
        if expert is not None:
            raw = raw[expert]
        try:
            w = dequantize(np.asarray(raw), qtype)
        except NotImplementedError:
            raise ModelError(
                f"{self.path}: tensor {gname} has type {t.type_name}, "
                "which the gguf package cannot dequantize"
            ) from None
        w = np.asarray(w, dtype=np.float32)
        if self.config.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = self.config.num_heads if "q_proj" in name else self.config.num_kv_heads
            w = _unpermute(w, heads)
        return w


def _f32(value) -> float:
    """GGUF stores floats as float32: read back the shortest decimal (1e-06, not 9.99e-07)."""
    return float(str(np.float32(value)))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation for Llama (HF rotates halves, GGML pairs)."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
