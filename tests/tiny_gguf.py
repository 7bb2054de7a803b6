"""Write a tiny Hugging Face model directory as a GGUF with the ``gguf`` package (tests only).

Mirrors what llama.cpp's converter does for the metadata and tensor names, including the q/k
row permutation for Llama, so the GGUF reader is tested against an independent writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qcoder_ds.models.checkpoint import HFCheckpoint
from qcoder_ds.models.gguf_checkpoint import _BLOCK, _GLOBAL

_ARCH = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(hf_dir: Path, out: Path, qtype: str = "F32", arch_name: str | None = None) -> Path:
    """Save the model in ``hf_dir`` as a GGUF; 2-D weights in ``qtype`` (F32, F16 or Q8_0)."""
    import gguf

    ckpt = HFCheckpoint(hf_dir)
    c = ckpt.config
    arch = arch_name or _ARCH[c.arch]
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name("tiny test model")
    w.add_block_count(c.num_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    inv_global = {v: k for k, v in _GLOBAL.items()}
    inv_block = {v: k for k, v in _BLOCK.items()}
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    for name in ckpt.names():
        t = ckpt.tensor(name)
        if name in inv_global:
            gname = inv_global[name]
        else:
            parts = name.split(".")
            layer, rest = parts[2], ".".join(parts[3:])
            gname = f"blk.{layer}.{inv_block[rest]}"
            if c.arch == "llama" and rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
                t = _permute(t, c.num_heads if "q_proj" in rest else c.num_kv_heads)
        if t.ndim == 2 and qtype != "F32":
            data = gguf.quants.quantize(t.astype(np.float32), qt)
            w.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=qt)
        else:
            w.add_tensor(gname, t.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def hf_config(hf_dir: Path) -> dict:
    return json.loads((Path(hf_dir) / "config.json").read_text())
