"""A qwen3moe GGUF (llama.cpp's merged expert tensors) reads as the same checkpoint as the
safetensors it was written from: the GGUF path equals the safetensors path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qcoder_ds.errors import ModelError
from qcoder_ds.models.checkpoint import HFCheckpoint
from qcoder_ds.models.gguf_checkpoint import _BLOCK, _GLOBAL, GGUFCheckpoint

_MERGED = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}


def write_qwen3moe_gguf(
    hf_dir: Path, out: Path, qtype: str = "F32", *, expert_count: int | None = None,
    expert_ff: int | None = None, drop_expert: bool = False,
) -> Path:
    """The tiny HF MoE as llama.cpp's converter writes it: one merged [E, out, in] tensor per
    projection and layer. ``expert_count`` / ``expert_ff`` override the header (to make it lie);
    ``drop_expert`` writes one expert fewer in layer 1's up_exps."""
    import gguf

    hf = HFCheckpoint(hf_dir)
    c = hf.config
    w = gguf.GGUFWriter(str(out), "qwen3moe")
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
    w.add_expert_count(expert_count or c.num_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_expert_feed_forward_length(expert_ff or c.moe_intermediate_size)
    qt = getattr(gguf.GGMLQuantizationType, qtype)

    def add(gname: str, t: np.ndarray) -> None:
        if t.ndim >= 2 and qtype != "F32":
            data = gguf.quants.quantize(t.astype(np.float32), qt)
            w.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=qt)
        else:
            w.add_tensor(gname, t.astype(np.float32))

    inv_global = {v: k for k, v in _GLOBAL.items()}
    inv_block = {v: k for k, v in _BLOCK.items()}
    for name in hf.names():
        if name in inv_global:
            add(inv_global[name], hf.tensor(name))
        elif ".mlp.experts." not in name:
            layer, rest = name.split(".")[2], ".".join(name.split(".")[3:])
            add(f"blk.{layer}.{inv_block[rest]}", hf.tensor(name))
    for layer in range(c.num_layers):
        for proj, gname in _MERGED.items():
            n = c.num_experts - (drop_expert and layer == 1 and proj == "up_proj")
            stack = np.stack([
                hf.tensor(f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight") for e in range(n)
            ])
            add(f"blk.{layer}.{gname}.weight", stack)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def hf(tiny_dir) -> HFCheckpoint:
    return HFCheckpoint(tiny_dir("qwen3_moe"))


def test_f32_gguf_equals_safetensors(hf, tmp_path):
    g = GGUFCheckpoint(write_qwen3moe_gguf(hf.dir, tmp_path / "m.gguf"))
    assert g.config == hf.config
    assert (g.config.num_experts, g.config.num_experts_per_tok) == (8, 2)
    assert g.config.moe_intermediate_size == 32 and g.config.norm_topk_prob
    assert set(g.names()) == set(hf.names())
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in g.names()
    assert "model.layers.0.self_attn.q_norm.weight" in g.names()
    for name in hf.names():
        np.testing.assert_array_equal(g.tensor(name), hf.tensor(name), err_msg=name)


def test_f16_gguf_equals_safetensors_rounded(hf, tmp_path):
    g = GGUFCheckpoint(write_qwen3moe_gguf(hf.dir, tmp_path / "m16.gguf", "F16"))
    for name in hf.names():
        ref = hf.tensor(name)
        if ref.ndim >= 2:
            ref = ref.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(g.tensor(name), ref, err_msg=name)


def test_q8_0_experts_sliced_within_tolerance(hf, tmp_path):
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    g = GGUFCheckpoint(write_qwen3moe_gguf(hf.dir, tmp_path / "q8.gguf", "Q8_0"))
    for name in hf.names():
        ref, got = hf.tensor(name), g.tensor(name)
        assert got.shape == ref.shape, name
        if ref.ndim < 2:
            np.testing.assert_array_equal(got, ref, err_msg=name)
            continue
        # Q8_0: half a step of max|x|/127 per 32-block, plus the fp16 scale's rounding
        step = np.abs(ref).reshape(-1, 32).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(got - ref).reshape(-1, 32) <= step * 0.6 + 1e-6), name
    # one expert's bytes are a slice of the merged tensor: 32 rows x 64 cols of Q8_0
    name = "model.layers.1.mlp.experts.5.gate_proj.weight"
    qtype, raw = g.raw_data(name)
    assert qtype == "Q8_0" and raw.nbytes == 32 * (64 // 32) * 34 == g.raw_bytes(name)
    back = dequantize(np.asarray(raw).reshape(32, -1), GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(back, g.tensor(name))
    assert not np.array_equal(g.tensor(name), g.tensor(name.replace(".5.", ".4.")))


def test_expert_count_disagreeing_with_tensors(hf, tmp_path):
    path = write_qwen3moe_gguf(hf.dir, tmp_path / "bad.gguf", expert_count=16)
    with pytest.raises(ModelError, match=r"blk\.0\.ffn_gate_inp\.weight has expert count 8 "
                                         r"but the header says 16"):
        GGUFCheckpoint(path)


def test_expert_ff_disagreeing_with_tensors(hf, tmp_path):
    path = write_qwen3moe_gguf(hf.dir, tmp_path / "bad.gguf", expert_ff=48)
    with pytest.raises(ModelError, match=r"ffn_gate_exps\.weight has expert_feed_forward_length "
                                         r"32 but the header says 48"):
        GGUFCheckpoint(path)


def test_one_layer_missing_an_expert(hf, tmp_path):
    path = write_qwen3moe_gguf(hf.dir, tmp_path / "bad.gguf", drop_expert=True)
    with pytest.raises(ModelError, match=r"blk\.1\.ffn_up_exps\.weight has expert count 7 "
                                         r"but the header says 8"):
        GGUFCheckpoint(path)
