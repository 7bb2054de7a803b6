"""Qwen3-MoE on ONNX Runtime and OpenVINO against transformers' Qwen3MoeForCausalLM, on tiny
random models: the same experts chosen, fp32 logits within 1e-3, the same 32 greedy tokens,
with the expert cache holding every expert and a quarter of them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_moe import CONFIGS, build_tiny_moe, reference  # noqa: E402

from qcoder_ds.models.checkpoint import HFCheckpoint  # noqa: E402

PROMPT = [5, 17, 301, 42, 7, 88, 150, 3, 499, 260, 61, 12]
EXTRA = [9, 400, 33, 128, 77]
BACKENDS = ["onnx", "openvino"]
BUDGETS = ["100%", "25%"]
FAST = ["l2-e8-top2-norm", "l3-e16-top4-raw"]


def _export(backend: str, ckpt, out: Path, weights: str = "fp32") -> None:
    if backend == "onnx":
        from qcoder_ds.runtime.ort_backend import export_onnx

        export_onnx(ckpt, out, weights=weights, progress=False)
    else:
        pytest.importorskip("openvino")
        from qcoder_ds.runtime.openvino_backend import export_openvino

        export_openvino(ckpt, out, weights=weights, progress=False)


def load(backend: str, out: Path, threads: int = 1, **options):
    if backend == "onnx":
        from qcoder_ds.runtime.ort_backend import load_onnx

        return load_onnx(out, threads=threads, **options)
    from qcoder_ds.runtime.openvino_backend import load_openvino

    return load_openvino(out, threads=threads, **options)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """models(config, backend) -> (hf_dir, export_dir), each built once per module."""
    hf_cache: dict = {}
    cache: dict = {}

    def make(name: str, backend: str = "onnx"):
        if name not in hf_cache:
            layers, experts, k, norm = CONFIGS[name]
            hf_cache[name] = build_tiny_moe(tmp_path_factory.mktemp(f"hf-{name}"), layers,
                                            experts, k, norm)
        if (name, backend) not in cache:
            out = tmp_path_factory.mktemp(f"{backend}-{name}") / "export"
            _export(backend, HFCheckpoint(hf_cache[name]), out)
            cache[name, backend] = (hf_cache[name], out)
        return cache[name, backend]

    return make


def greedy(session, prompt: list[int], steps: int) -> list[int]:
    session.reset()
    logits = session.forward(np.array(prompt))
    out = []
    for _ in range(steps):
        out.append(int(logits.argmax()))
        logits = session.forward(np.array([out[-1]]))
    return out


def _check_parity(models, name: str, backend: str, budget: str) -> None:
    hf, out = models(name, backend)
    ids = PROMPT + EXTRA
    ref_logits, ref_experts = reference(hf, ids)
    s = load(backend, out, expert_ram=budget, record_routing=True)
    got = s.forward(np.array(PROMPT))
    assert got.shape == (512,) and got.dtype == np.float32
    assert np.abs(got - ref_logits[len(PROMPT) - 1]).max() <= 1e-3
    for layer, routed in enumerate(s.last_routing):
        assert np.array_equal(np.sort(routed, axis=-1), ref_experts[layer][:len(PROMPT)]), \
            f"prefill, layer {layer}: other experts than transformers'"
    for i, tok in enumerate(EXTRA):
        pos = len(PROMPT) + i
        got = s.forward(np.array([tok]))
        diff = np.abs(got - ref_logits[pos]).max()
        assert diff <= 1e-3, f"decode step {i}: max abs diff {diff}"
        for layer, routed in enumerate(s.last_routing):
            assert np.array_equal(np.sort(routed[0]), ref_experts[layer][pos]), \
                f"decode step {i}, layer {layer}"
    stats = s.cache_stats()
    total = CONFIGS[name][0] * CONFIGS[name][1]
    if budget == "25%":
        assert stats["capacity_experts"] == total // 4
        assert stats["evictions"] > 0  # the small cache really evicted and rebuilt
        assert len(s.cache.resident_keys()) <= total // 4
    else:
        assert stats["fully_resident"] and stats["evictions"] == 0
    s.close()


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FAST)
def test_experts_and_logits_match_transformers(models, name, backend, budget):
    _check_parity(models, name, backend, budget)


@pytest.mark.slow
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_four_layers_match_transformers(models, backend, budget):
    _check_parity(models, "l4-e16-top4-norm", backend, budget)


def _greedy_cases():
    for name in FAST:
        for backend in BACKENDS:
            for budget in BUDGETS:
                # OpenVINO compiles each expert (~0.1 s on the tiny model): the 3-layer model
                # at 25% rebuilds ~300 experts in 32 steps, ~35 s
                slow = backend == "openvino" and budget == "25%" and name != FAST[0]
                yield pytest.param(name, backend, budget,
                                   marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("name,backend,budget", list(_greedy_cases()))
def test_greedy_matches_transformers_for_32_steps(models, name, backend, budget):
    from tiny_models import reference_greedy

    hf, out = models(name, backend)
    expect = reference_greedy(hf, PROMPT, 32)
    s = load(backend, out, expert_ram=budget)
    assert greedy(s, PROMPT, 32) == expect
    assert len(set(expect)) > 3  # a path that moves
    s.close()


@pytest.mark.parametrize("backend", ["onnx", pytest.param("openvino", marks=pytest.mark.slow)])
def test_cache_size_and_prefetch_never_change_the_numbers(models, backend):
    """The same logits, bit for bit, whatever the budget, the policy, prefetch, or a layer's
    experts run in two halves on two threads."""
    _, out = models("l3-e16-top4-raw", backend)
    ids = PROMPT + EXTRA

    def run(**options):
        s = load(backend, out, **options)
        rows = [s.forward(np.array(ids[:8]))] + [s.forward(np.array([t])) for t in ids[8:]]
        stats = s.cache_stats()
        s.close()
        return np.stack(rows), stats

    full, _ = run(expert_ram="100%", prefetch=False)
    for options in ({"expert_ram": "25%"}, {"expert_ram": "25%", "prefetch": False},
                    {"expert_ram": "25%", "policy": "lfu-decay"},
                    {"expert_ram": "25%", "threads": 2}, {"expert_ram": "100%", "threads": 2}):
        if options.get("policy") == "lfu-decay":
            pytest.importorskip("qcoder_ds.runtime.expert_policy")
        got, stats = run(**options)
        np.testing.assert_array_equal(got, full)
        assert stats["expert_threads"] == options.get("threads", 1)
        if options.get("prefetch", True) and options["expert_ram"] != "100%":
            assert stats["prefetch_predicted"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_prefill_reset_and_all_logits(models, backend):
    hf, out = models("l2-e8-top2-norm", backend)
    ref_logits, _ = reference(hf, PROMPT + [9, 400])
    s = load(backend, out, expert_ram="25%")
    s.forward(np.array(PROMPT[:5]))
    got = s.forward(np.array(PROMPT[5:]))
    assert np.abs(got - ref_logits[len(PROMPT) - 1]).max() <= 1e-3
    rows = s.forward(np.array([9, 400]), all_logits=True)  # a speculative draft's scoring
    assert rows.shape == (2, 512)
    assert np.abs(rows - ref_logits[-2:]).max() <= 1e-3
    assert s.reuse_prefix(np.array(PROMPT + [1])) == len(PROMPT)  # prefix reuse: rewinds
    got = s.forward(np.array([1]))
    again, _ = reference(hf, PROMPT + [1])
    assert np.abs(got - again[-1]).max() <= 1e-3
    s.close()


def _silu_ffn(x, gate, up, down):
    g = x @ gate.T
    return ((g / (1 + np.exp(-g))) * (x @ up.T)) @ down.T


@pytest.mark.parametrize("weights", ["int4", "int8"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_quantized_experts_compute_with_their_stored_weights(tmp_path, backend, weights):
    """Each executable expert equals the float FFN of its dequantized weights: the store's
    layout and the backend's reading of it agree (ONNX Runtime with fp32 activations)."""
    from qcoder_ds.runtime import quantize as q

    hf = build_tiny_moe(tmp_path / "hf", layers=2, experts=4, top_k=2)
    ckpt = HFCheckpoint(hf)
    out = tmp_path / "export"
    bits = 4 if weights == "int4" else 8
    if backend == "onnx":
        from qcoder_ds.runtime.ort_backend import export_onnx

        export_onnx(ckpt, out, weights=weights, progress=False, accuracy_level=0)

        def deq(w):
            return q.dequantize_blockwise(q.quantize_blockwise(w, bits=bits))
        tol = 1e-4
    else:
        _export(backend, ckpt, out, weights)

        def deq(w):
            return q.dequantize_openvino(q.quantize_openvino(w, bits, 32, symmetric=True))
        tol = 3e-2  # bf16 / int8 activations where the CPU has them (a wrong layout: ~100%)
    s = load(backend, out)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    for layer, e in [(0, 0), (1, 3)]:
        p = f"model.layers.{layer}.mlp.experts.{e}."
        gate, up, down = (ckpt.tensor(p + f"{n}_proj.weight") for n in ("gate", "up", "down"))
        gate_up = deq(np.concatenate([gate, up]))
        ref = _silu_ffn(x, gate_up[:32], gate_up[32:], deq(down))
        got = s.cache._load(layer, e)[0].run(x)
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max(), (layer, e)
        if backend == "onnx":  # exact enough to tell: not the float weights
            assert np.abs(got - _silu_ffn(x, gate, up, down)).max() > tol * np.abs(ref).max()
    s.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_stays_close_to_fp32(models, tmp_path, backend):
    hf, fp32 = models("l2-e8-top2-norm", backend)
    _export(backend, HFCheckpoint(hf), tmp_path / "int8", "int8")
    ref, got = load(backend, fp32), load(backend, tmp_path / "int8", expert_ram="25%")
    path = greedy(ref, PROMPT, 24)
    got.reset()
    logits = got.forward(np.array(PROMPT))
    assert np.corrcoef(logits, load(backend, fp32).forward(np.array(PROMPT)))[0, 1] > 0.999
    hits = 0
    for tok in path:  # teacher-forced: the fp32 path fed to int8
        hits += int(logits.argmax()) == tok
        logits = got.forward(np.array([tok]))
    assert hits / len(path) >= 0.9, f"int8 agrees with fp32 on {hits}/{len(path)} tokens"


@pytest.mark.parametrize("name", FAST)
def test_fused_qmoe_layers_equal_per_expert_sessions(models, tmp_path, name):
    """ONNX Runtime's fully resident mode (the whole model in one graph, one QMoE op per
    layer: the default when every int4 expert fits) against one session per expert on the
    same export: the same numbers (to float rounding), the same experts routed, the same
    greedy tokens, with and without norm_topk_prob; a trace written from the graph's routing
    outputs."""
    from qcoder_ds.runtime.ort_backend import export_onnx

    hf, _ = models(name, "onnx")
    out = tmp_path / "int4"
    export_onnx(HFCheckpoint(hf), out, weights="int4", progress=False, accuracy_level=0)
    fused = load("onnx", out, record_routing=True, trace=tmp_path / "fused.trace")
    single = load("onnx", out, fused=False, record_routing=True,
                  trace=tmp_path / "single.trace")
    assert fused.cache_stats()["fused"] and not single.cache_stats()["fused"]
    assert fused.cache_stats()["loads"] == CONFIGS[name][0] * CONFIGS[name][1]
    ids = PROMPT + EXTRA
    rows, routes = {}, {}
    for key, s in (("fused", fused), ("single", single)):
        s.reset()
        rows[key] = [s.forward(np.array(ids[:8]))]
        routes[key] = [[r.tolist() for r in s.last_routing]]
        for t in ids[8:]:
            rows[key].append(s.forward(np.array([t])))
            routes[key].append([r.tolist() for r in s.last_routing])
        s.reset()  # every position's logits at once (speculative decoding's verify)
        rows[key].append(s.forward(np.array(ids), all_logits=True))
    assert np.abs(np.stack(rows["fused"][:-1]) - np.stack(rows["single"][:-1])).max() <= 1e-4
    assert np.abs(rows["fused"][-1] - rows["single"][-1]).max() <= 1e-4
    assert np.abs(rows["fused"][-1][-1] - rows["fused"][-2]).max() <= 1e-4
    assert routes["fused"] == routes["single"]
    # without a trace the graph leaves routing to QMoE alone: the same numbers
    plain = load("onnx", out)
    again = [plain.forward(np.array(ids[:8]))] + [plain.forward(np.array([t]))
                                                  for t in ids[8:]]
    assert np.abs(np.stack(again) - np.stack(rows["fused"][:-1])).max() <= 1e-6
    assert greedy(fused, PROMPT, 32) == greedy(single, PROMPT, 32) == greedy(plain, PROMPT, 32)
    fused.close()
    single.close()
    from qcoder_ds.runtime.moe_trace import read_trace

    traced = read_trace(tmp_path / "fused.trace").tokens
    assert len(traced) == 2 * len(ids) + len(PROMPT) + 32
    assert traced == read_trace(tmp_path / "single.trace").tokens
    from qcoder_ds.errors import QcoderError

    with pytest.raises(QcoderError, match="fused experts need every expert resident"):
        load("onnx", out, expert_ram="50%", fused=True)


def test_moe_exports_take_64_blocks_where_the_sizes_allow(tmp_path):
    """An int4 MoE export is quantized in blocks of 64 (Q4_0's 4.5 bits) when the hidden and
    expert FFN sizes are multiples of 64, else 32; at 64 the fused QMoE layers still equal the
    per-expert sessions and the experts compute their dequantized stored weights."""
    import json

    from qcoder_ds.runtime import quantize as q
    from qcoder_ds.runtime.ort_backend import export_onnx

    wide = build_tiny_moe(tmp_path / "wide", layers=2, experts=8, top_k=2,
                          moe_intermediate_size=64)
    narrow = build_tiny_moe(tmp_path / "narrow", layers=2, experts=8, top_k=2)
    for hf, block in [(wide, 64), (narrow, 32)]:
        out = tmp_path / f"int4-{block}"
        export_onnx(HFCheckpoint(hf), out, weights="int4", progress=False, accuracy_level=0)
        meta = json.loads((out / "config.json").read_text())
        assert meta["export"]["block_size"] == block
        assert json.loads((out / "experts.json").read_text())["quantization"]["block_size"] \
            == block
    out = tmp_path / "int4-64"
    # the fused layers on both threads (nothing runs beside them), the experts in two halves
    fused, single = load("onnx", out, threads=2), load("onnx", out, fused=False, threads=2)
    assert fused.session.get_session_options().intra_op_num_threads == 2
    assert single.cache_stats()["expert_threads"] == 2
    ids = PROMPT + EXTRA
    a = [fused.forward(np.array(ids[:8]))] + [fused.forward(np.array([t])) for t in ids[8:]]
    b = [single.forward(np.array(ids[:8]))] + [single.forward(np.array([t])) for t in ids[8:]]
    assert np.abs(np.stack(a) - np.stack(b)).max() <= 1e-4
    ckpt = HFCheckpoint(wide)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    p = "model.layers.1.mlp.experts.5."
    gate, up, down = (ckpt.tensor(p + f"{n}_proj.weight") for n in ("gate", "up", "down"))

    def deq(w, block):
        return q.dequantize_blockwise(q.quantize_blockwise(w, bits=4, block_size=block))
    got = single.cache._load(1, 5)[0].run(x)
    ref64 = _silu_ffn(x, deq(gate, 64), deq(up, 64), deq(down, 64))
    ref32 = _silu_ffn(x, deq(gate, 32), deq(up, 32), deq(down, 32))
    assert np.abs(got - ref64).max() <= 1e-4 * np.abs(ref64).max()
    assert np.abs(got - ref32).max() > 1e-4 * np.abs(ref64).max()  # really blocks of 64


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_qwen3moe_gguf_exports_like_its_safetensors(models, tmp_path, backend):
    """The GGUF reader presents llama.cpp's merged expert tensors under Hugging Face names,
    so the MoE exporters need no GGUF code: an F32 GGUF gives transformers' logits too."""
    pytest.importorskip("gguf")
    from test_gguf_moe import write_qwen3moe_gguf

    from qcoder_ds.models.gguf_checkpoint import GGUFCheckpoint

    hf, _ = models("l2-e8-top2-norm", backend)
    gguf = write_qwen3moe_gguf(hf, tmp_path / "m.gguf")
    _export(backend, GGUFCheckpoint(gguf), tmp_path / "export")
    ref, _ = reference(hf, PROMPT)
    s = load(backend, tmp_path / "export", expert_ram="25%")
    assert np.abs(s.forward(np.array(PROMPT)) - ref[-1]).max() <= 1e-3
    s.close()
