"""MoEfication of a dense checkpoint: the names and config the MoE exporter reads, the FFN with
all experts routed equal to the dense FFN, and non-trivial routing under top-k < E."""

from __future__ import annotations

import numpy as np
import pytest

from qcoder_ds.errors import ModelError
from qcoder_ds.models.checkpoint import HFCheckpoint
from qcoder_ds.models.moefy import MoefiedCheckpoint, moe_ffn
from qcoder_ds.runtime.moe_session import check_moe


def _silu(g: np.ndarray) -> np.ndarray:
    return g / (1 + np.exp(-g))


def _experts(m: MoefiedCheckpoint, layer: int) -> list[tuple[np.ndarray, ...]]:
    p = f"model.layers.{layer}.mlp.experts."
    return [tuple(m.tensor(f"{p}{e}.{proj}.weight") for proj in ("gate_proj", "up_proj",
                                                                   "down_proj"))
            for e in range(m.experts)]


def _inputs(dense, layer: int, n: int = 64) -> np.ndarray:
    """RMS-normed embedding rows times the layer's post-attention norm: the FFN's input as its
    first layer sees it (attention's output left out)."""
    emb = dense.tensor("model.embed_tokens.weight")[np.arange(n) * 7 % 512]
    x = emb / np.sqrt(np.mean(emb**2, axis=-1, keepdims=True) + 1e-6)
    return (x * dense.tensor(f"model.layers.{layer}.post_attention_layernorm.weight")).astype(
        np.float32)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_names_config_and_slices(arch, tiny_dir):
    dense = HFCheckpoint(tiny_dir(arch))
    m = MoefiedCheckpoint(dense, experts=4, router="zero")
    c = m.config
    assert (c.arch, c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (
        "qwen3_moe", 4, 4, 32)
    assert not c.norm_topk_prob
    assert c.attention_bias == dense.config.attention_bias and c.qk_norm == dense.config.qk_norm
    check_moe(c, m.hf_config)  # the runtime's own check accepts it
    assert m.hf_config["qcoder_moefied"]["exact_with_all_experts"]
    names = set(m.names())
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in names
    assert "model.layers.0.mlp.gate.weight" in names
    assert not any(n.endswith("mlp.up_proj.weight") for n in names)
    assert len(names) == len(dense.names()) - 2 * 3 + 2 * (1 + 4 * 3)
    g = dense.tensor("model.layers.1.mlp.gate_proj.weight")
    d = dense.tensor("model.layers.1.mlp.down_proj.weight")
    np.testing.assert_array_equal(m.tensor("model.layers.1.mlp.experts.2.gate_proj.weight"),
                                  g[64:96])
    # down_proj x 4: a power of two, so dividing back is exact
    np.testing.assert_array_equal(m.tensor("model.layers.1.mlp.experts.2.down_proj.weight") / 4,
                                  d[:, 64:96])
    np.testing.assert_array_equal(m.tensor("model.layers.0.self_attn.q_proj.weight"),
                                  dense.tensor("model.layers.0.self_attn.q_proj.weight"))
    with pytest.raises(ModelError, match="split into experts"):
        m.tensor("model.layers.0.mlp.up_proj.weight")


@pytest.mark.parametrize("experts", [2, 4, 8])
def test_all_experts_equal_the_dense_ffn(experts, tiny_dir):
    dense = HFCheckpoint(tiny_dir("qwen2"))
    m = MoefiedCheckpoint(dense, experts=experts, router="zero")
    layer = 1
    x = _inputs(dense, layer)
    moe = moe_ffn(x, m.tensor(f"model.layers.{layer}.mlp.gate.weight"), _experts(m, layer),
                  top_k=experts, norm_topk_prob=False)
    p = f"model.layers.{layer}.mlp."
    g, u, d = (dense.tensor(p + f"{n}_proj.weight") for n in ("gate", "up", "down"))
    # the dense FFN with its intermediate sum grouped by expert: 0 ulp apart
    grouped = np.zeros_like(x)
    b = g.shape[0] // experts
    for e in range(experts):
        s = slice(e * b, (e + 1) * b)
        grouped += (_silu(x @ g[s].T) * (x @ u[s].T)) @ d[:, s].T
    np.testing.assert_array_equal(moe, grouped)
    # and the plain dense matmul: the same up to the order of the intermediate sum
    plain = (_silu(x @ g.T) * (x @ u.T)) @ d.T
    np.testing.assert_allclose(moe, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())
    assert np.abs(plain).max() > 1e-3 and np.abs(moe - grouped * 1.0001).max() > 0  # nontrivial


def test_zero_router_gives_exact_uniform_weights(tiny_dir):
    m = MoefiedCheckpoint(HFCheckpoint(tiny_dir("qwen2")), experts=8, router="zero")
    logits = np.zeros((1, 8), np.float32)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.all(probs == np.float32(1 / 8))
    assert not m.tensor("model.layers.0.mlp.gate.weight").any()


def test_gate_mass_routing_is_nontrivial_and_informative(tiny_dir):
    dense = HFCheckpoint(tiny_dir("qwen2"))
    m = MoefiedCheckpoint(dense, experts=8, router="gate-mass")
    assert m.top_k == 2 and not m.hf_config["qcoder_moefied"]["exact_with_all_experts"]
    layer = 0
    x = _inputs(dense, layer, 256)
    router = m.tensor(f"model.layers.{layer}.mlp.gate.weight")
    logits = x @ router.T
    # |logit| <= 2^-8 * |x| / sqrt(H): softmax weights stay within ~1% of 1/E
    bound = 2.0**-8 * np.linalg.norm(x, axis=-1).max() / np.sqrt(x.shape[1])
    assert 0 < np.abs(logits).max() <= bound * 1.001
    top = np.argsort(-logits, axis=-1)[:, :2]
    sets = {tuple(sorted(r)) for r in top.tolist()}
    counts = np.bincount(top.ravel(), minlength=8)
    assert len(sets) >= 6, sets  # not every token picks the same experts
    assert (counts > 0).sum() >= 6, counts
    assert counts.max() < 0.6 * len(x)
    # informative: the router's top-2 partial sum is nearer the dense FFN than random pairs
    experts = _experts(m, layer)
    full = moe_ffn(x, router, experts, top_k=8, norm_topk_prob=False)
    routed = moe_ffn(x, router, experts, top_k=2, norm_topk_prob=False)
    rng = np.random.default_rng(0)
    rand_err = []
    for _ in range(20):
        shuffled = rng.standard_normal(router.shape).astype(np.float32)  # small: 1/8 weights
        rand = moe_ffn(x, shuffled * 2.0**-12, experts, top_k=2,
                       norm_topk_prob=False)
        rand_err.append(np.linalg.norm(rand - full))
    err = np.linalg.norm(routed - full)
    assert err < np.median(rand_err), (err, np.median(rand_err))
    # with every expert, the gate-mass router stays within ~1% of the dense FFN
    p = f"model.layers.{layer}.mlp."
    g, u, d = (dense.tensor(p + f"{n}_proj.weight") for n in ("gate", "up", "down"))
    plain = (_silu(x @ g.T) * (x @ u.T)) @ d.T
    assert np.linalg.norm(full - plain) < 0.01 * np.linalg.norm(plain)


def test_refusals(tiny_dir):
    dense = HFCheckpoint(tiny_dir("qwen2"))
    with pytest.raises(ModelError, match="power-of-two"):
        MoefiedCheckpoint(dense, experts=6)
    with pytest.raises(ModelError, match="does not split"):
        MoefiedCheckpoint(dense, experts=256)
    with pytest.raises(ModelError, match="unknown MoEfication router"):
        MoefiedCheckpoint(dense, router="learned")
    with pytest.raises(ModelError, match="top_k"):
        MoefiedCheckpoint(dense, experts=4, top_k=5)
    with pytest.raises(ModelError, match="dense qwen2 or qwen3"):
        MoefiedCheckpoint(HFCheckpoint(tiny_dir("qwen3_moe")))


def test_moefied_export_runs_like_the_dense_model(tiny_dir, tmp_path):
    """Through the runtime's MoE exporter and session (ONNX Runtime, fp32 weights, all experts
    routed): the MoEfied model's logits are transformers' dense model's."""
    from tiny_models import reference_logits

    from qcoder_ds.runtime.ort_backend import export_onnx, load_onnx

    d = tiny_dir("qwen2")
    m = MoefiedCheckpoint(HFCheckpoint(d), experts=4, router="zero")
    export_onnx(m, tmp_path / "x", weights="fp32", progress=False)
    s = load_onnx(tmp_path / "x", threads=1, expert_ram="100%", prefetch=False)
    ids = [1, 5, 9, 200, 33, 7, 7, 400]
    ref = reference_logits(d, ids)
    got = np.stack([s.forward(np.array([t], dtype=np.int64)) for t in ids])
    s.close()
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
    assert np.abs(ref).max() > 0.1


def test_moefied_routed_trace_through_the_runtime(tiny_dir, tmp_path):
    """Top-2 of 4 with the gate-mass router: the runtime's trace shows tokens routed to
    different experts (real routing), and the logits stay near the dense model's."""
    from tiny_models import reference_logits

    from qcoder_ds.runtime.moe_trace import read_trace
    from qcoder_ds.runtime.ort_backend import export_onnx, load_onnx

    d = tiny_dir("qwen2")
    m = MoefiedCheckpoint(HFCheckpoint(d), experts=4, top_k=2, router="gate-mass")
    export_onnx(m, tmp_path / "x", weights="fp32", progress=False)
    trace = tmp_path / "t.trace"
    s = load_onnx(tmp_path / "x", threads=1, expert_ram="50%", prefetch=True, trace=trace)
    ids = [int(t) for t in np.arange(24) * 37 % 512]
    got = np.stack([s.forward(np.array([t], dtype=np.int64)) for t in ids])
    s.close()
    tr = read_trace(trace)
    assert (tr.layers, tr.experts, tr.top_k, len(tr.tokens)) == (2, 4, 2, 24)
    for layer in range(2):
        pairs = {tuple(sorted(tok[layer])) for tok in tr.tokens}
        assert len(pairs) >= 3, pairs  # of the 6 possible pairs
    ref = reference_logits(d, ids)
    # half the FFN dropped per token: near, not equal
    corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
    assert 0.5 < corr < 0.99999, corr
