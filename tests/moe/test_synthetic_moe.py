"""The synthetic MoE generator: shapes, readable by both checkpoint readers with equal values,
deterministic from its seed, and routing skewed (and uniform when the skew is off)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from qcoder_ds.models.checkpoint import HFCheckpoint
from qcoder_ds.models.gguf_checkpoint import GGUFCheckpoint
from qcoder_ds.runtime.cache_simulator import routing_stats
from qcoder_ds.runtime.moe_trace import Trace

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic_moe.py"
_spec = importlib.util.spec_from_file_location("synthetic_moe", _PATH)
syn = importlib.util.module_from_spec(_spec)
sys.modules["synthetic_moe"] = syn  # dataclasses look their module up
_spec.loader.exec_module(syn)

TINY = dict(layers=2, hidden=64, experts=16, top_k=2, moe_ff=32, heads=4, kv_heads=2,
            head_dim=16, vocab=256, dense_ff=128)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    spec = syn.SyntheticSpec(**TINY)
    out = tmp_path_factory.mktemp("syn")
    return spec, syn.write_synthetic(spec, out, gguf_types=("F32", "Q4_0"), hf_dtype="F32")


def test_hf_directory_shapes_and_config(written):
    spec, w = written
    hf = HFCheckpoint(w.hf_dir)
    c = hf.config
    assert (c.arch, c.num_layers, c.hidden_size, c.vocab_size) == ("qwen3_moe", 2, 64, 256)
    assert (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (16, 2, 32)
    assert c.norm_topk_prob and c.qk_norm and not c.tie_word_embeddings
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (4, 2, 16)
    assert hf.tensor("model.layers.1.mlp.experts.15.down_proj.weight").shape == (64, 32)
    assert hf.tensor("model.layers.0.mlp.gate.weight").shape == (16, 64)
    assert hf.tensor("model.layers.0.self_attn.k_proj.weight").shape == (32, 64)
    assert len(hf.names()) == 2 * (9 + 3 * 16) + 3
    # one shard per layer plus the embedding's and the head's
    assert len(list(w.hf_dir.glob("*.safetensors"))) == 4
    np.testing.assert_array_equal(hf.tensor("model.layers.1.mlp.gate.weight"), syn.router(spec, 1))


def test_gguf_equals_hf(written):
    spec, w = written
    hf = HFCheckpoint(w.hf_dir)
    g = GGUFCheckpoint(w.gguf["F32"])
    assert g.config == hf.config
    assert set(g.names()) == set(hf.names())
    for name in hf.names():
        np.testing.assert_array_equal(g.tensor(name), hf.tensor(name), err_msg=name)
    q = GGUFCheckpoint(w.gguf["Q4_0"])
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    assert q.raw_type(name) == "Q4_0"
    ref, got = hf.tensor(name), q.tensor(name)
    # Q4_0: scale max/-8, codes -8..7, so the end opposite the max clips by up to a step
    step = np.abs(ref).reshape(-1, 32).max(axis=1, keepdims=True) / 8
    assert np.all(np.abs(got - ref).reshape(-1, 32) <= step * 1.01 + 1e-6)
    assert np.mean(np.abs(got - ref)) < 0.3 * np.mean(step)  # most codes within half a step
    # the routers stay F32, as llama.cpp's own quantizer leaves them
    router = "model.layers.1.mlp.gate.weight"
    assert q.raw_type(router) == "F32"
    np.testing.assert_array_equal(q.tensor(router), hf.tensor(router))


def test_deterministic_from_seed(written, tmp_path):
    spec, w = written
    again = syn.write_synthetic(spec, tmp_path / "a", gguf_types=("Q4_0",), hf_dtype="F32")
    assert _sha(again.gguf["Q4_0"]) == _sha(w.gguf["Q4_0"])
    for f in w.hf_dir.glob("*.safetensors"):
        assert _sha(again.hf_dir / f.name) == _sha(f), f.name
    other = syn.write_synthetic(syn.SyntheticSpec(**{**TINY, "seed": 1}), tmp_path / "b",
                                hf=False, gguf_types=("Q4_0",))
    assert _sha(other.gguf["Q4_0"]) != _sha(w.gguf["Q4_0"])
    assert syn.token_stream(spec, 50) == syn.token_stream(spec, 50)


def _stats(**kw) -> dict:
    spec = syn.SyntheticSpec(layers=2, **kw)  # real router shapes: hidden 2048, 128 experts
    tokens = syn.token_stream(spec, 300)
    trace = Trace(spec.layers, spec.experts, spec.top_k, "syn", syn.numpy_trace(spec, tokens))
    return routing_stats(trace)


def test_routing_is_skewed_and_local_by_default_and_uniform_without():
    skewed = _stats()
    flat = _stats(zipf=0.0, topic=0.0)
    # top 10% of 128 experts (12) take 9.4% of routes when uniform
    assert skewed["top10pct_share"] > 0.35
    assert flat["top10pct_share"] < 0.17
    # a layer reuses 8/128 = 6% of its experts from the previous token when uniform
    assert skewed["prev_token_reuse"] > 0.18
    assert flat["prev_token_reuse"] < 0.09


def test_llama_cpp_reads_the_gguf_as_transformers_reads_the_hf_directory(tmp_path):
    """The generator's qwen3moe GGUF (merged experts, q/k norms, no_vocab) is what llama.cpp
    expects: its logits equal transformers' on the HF directory of the same weights."""
    llama_cpp = pytest.importorskip("llama_cpp")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    spec = syn.SyntheticSpec(layers=2, hidden=256, experts=16, top_k=4, moe_ff=64, heads=4,
                             kv_heads=2, head_dim=64, vocab=1024, dense_ff=512)
    w = syn.write_synthetic(spec, tmp_path, gguf_types=("F32",), hf_dtype="F32")
    ids = syn.token_stream(spec, 6)
    llm = llama_cpp.Llama(str(w.gguf["F32"]), n_ctx=32, n_threads=1, verbose=False)
    assert llm.n_vocab() == 1024
    llm.eval(ids)
    got = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
    model = transformers.AutoModelForCausalLM.from_pretrained(w.hf_dir, dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(ref).max() > 0.3
    np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max())
