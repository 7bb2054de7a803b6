"""The GGUF reader returns the same weights and config as the safetensors reader."""

import shutil

import numpy as np
import pytest
from tiny_gguf import write_gguf

from qcoder_ds.errors import ModelError
from qcoder_ds.models.checkpoint import HFCheckpoint
from qcoder_ds.models.gguf_checkpoint import GGUFCheckpoint


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_gguf_matches_safetensors(arch, tiny_dir, tmp_path):
    hf = HFCheckpoint(tiny_dir(arch))
    path = write_gguf(hf.dir, tmp_path / "m.gguf", qtype="F32")
    g = GGUFCheckpoint(path)
    assert g.config == hf.config
    assert set(g.names()) == set(hf.names())
    for name in hf.names():
        np.testing.assert_array_equal(g.tensor(name), hf.tensor(name), err_msg=name)


def test_quantized_tensors_are_dequantized(tiny_dir, tmp_path):
    hf = HFCheckpoint(tiny_dir("qwen2"))
    g = GGUFCheckpoint(write_gguf(hf.dir, tmp_path / "q8.gguf", qtype="Q8_0"))
    name = "model.layers.1.mlp.up_proj.weight"
    assert g.raw_type(name) == "Q8_0"
    ref = hf.tensor(name)
    got = g.tensor(name)
    assert got.shape == ref.shape
    # Q8_0: per-block fp16 scale max|x|/127: half a step, plus the scale's fp16 rounding
    step = np.abs(ref).reshape(-1, 32).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(got - ref).reshape(-1, 32) <= step * 0.6 + 1e-6)
    assert not np.array_equal(got, ref)  # it really was quantized


def test_truncated_gguf_is_a_clear_error(tiny_dir, tmp_path):
    path = write_gguf(tiny_dir("qwen2"), tmp_path / "m.gguf")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated|corrupted"):
        GGUFCheckpoint(cut)
    head = tmp_path / "head.gguf"
    head.write_bytes(data[:100])
    with pytest.raises(ModelError, match="truncated|corrupted"):
        GGUFCheckpoint(head)


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_text("hello, I am a text file and not a model")
    with pytest.raises(ModelError, match="not a GGUF"):
        GGUFCheckpoint(p)
    with pytest.raises(ModelError, match="no such GGUF"):
        GGUFCheckpoint(tmp_path / "missing.gguf")


def test_unknown_architecture(tiny_dir, tmp_path):
    path = write_gguf(tiny_dir("qwen2"), tmp_path / "m.gguf", arch_name="mamba")
    with pytest.raises(ModelError, match="unsupported architecture 'mamba'"):
        GGUFCheckpoint(path)


def test_hf_dir_errors(tiny_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tiny_dir("qwen2"), d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        HFCheckpoint(d)
    with pytest.raises(ModelError, match="no config.json"):
        HFCheckpoint(tmp_path)


def test_moe_config_from_transformers_5(tiny_dir):
    """transformers 5 saves `num_local_experts`; older configs say `num_experts`."""
    c = HFCheckpoint(tiny_dir("qwen3_moe")).config
    assert (c.arch, c.num_experts, c.num_experts_per_tok) == ("qwen3_moe", 8, 2)
    assert c.moe_intermediate_size == 32 and c.norm_topk_prob and c.qk_norm
