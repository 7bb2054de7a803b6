"""The OpenVINO backend against transformers, on tiny random Qwen2/Qwen3/Llama models."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from qcoder_ds.errors import ContextLengthError, ModelError, QcoderError  # noqa: E402
from qcoder_ds.models.checkpoint import Checkpoint, HFCheckpoint  # noqa: E402
from qcoder_ds.runtime.openvino_backend import (  # noqa: E402
    OpenVINODecoderSession,
    load_openvino,
)
from qcoder_ds.runtime.openvino_graph import CACHE_SUBDIR, export_openvino  # noqa: E402
from qcoder_ds.runtime.quantize import dequantize_openvino, quantize_openvino  # noqa: E402

ARCHS = ["qwen2", "qwen3", "llama"]
PROMPT = [5, 17, 301, 42, 7, 88, 150, 3, 499, 260, 61, 12]
REAL_GGUF = Path("/tmp/qwen2.5-coder-0.5b-instruct.gguf")
#: f32 compute and KV cache: what a quantized export needs to be compared exactly
EXACT = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32",
         "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}  # no int8 activations (VNNI CPUs)


@pytest.fixture(scope="module")
def exports(tiny_dir, tmp_path_factory):
    """exports(arch, weights) -> (hf_dir, export_dir), each built once per module."""
    cache: dict = {}

    def make(arch: str, weights: str = "fp32"):
        if (arch, weights) not in cache:
            hf = tiny_dir(arch)
            out = tmp_path_factory.mktemp(f"ov-{arch}-{weights}") / "export"
            export_openvino(HFCheckpoint(hf), out, weights=weights, progress=False)
            cache[arch, weights] = (hf, out)
        return cache[arch, weights]

    return make


def greedy(session, prompt: list[int], steps: int) -> list[int]:
    session.reset()
    logits = session.forward(np.array(prompt))
    out = []
    for _ in range(steps):
        out.append(int(logits.argmax()))
        logits = session.forward(np.array([out[-1]]))
    return out


def teacher_forced_agreement(reference, candidate, prompt: list[int], steps: int) -> float:
    """Share of positions where candidate's top-1 equals the reference's greedy token, the
    candidate being fed the reference's tokens (so one early difference does not turn every
    later position into a mismatch, as a free-running comparison would)."""
    path = greedy(reference, prompt, steps)
    candidate.reset()
    logits = candidate.forward(np.array(prompt))
    hits = 0
    for tok in path:
        hits += int(logits.argmax()) == tok
        logits = candidate.forward(np.array([tok]))
    return hits / steps


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_logits_prefill_and_each_decode_step(exports, arch):
    from tiny_models import reference_logits

    hf, out = exports(arch)
    extra = [9, 400, 33, 128, 77]
    ref = reference_logits(hf, PROMPT + extra)
    s = load_openvino(out, threads=1)
    assert s.vocab_size == 512 and s.position == 0 and s.max_context == 256
    got = s.forward(np.array(PROMPT))
    assert got.shape == (512,) and got.dtype == np.float32
    assert np.abs(got - ref[len(PROMPT) - 1]).max() <= 1e-3
    for i, tok in enumerate(extra):
        got = s.forward(np.array([tok]))
        assert np.abs(got - ref[len(PROMPT) + i]).max() <= 1e-3, f"decode step {i}"
    assert s.position == len(PROMPT) + len(extra)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_chunked_prefill(exports, arch):
    from tiny_models import reference_logits

    hf, out = exports(arch)
    ref = reference_logits(hf, PROMPT + [9, 400])
    s = load_openvino(out, threads=1)
    s.forward(np.array(PROMPT[:5]))
    got = s.forward(np.array(PROMPT[5:]))  # second chunk, 7 tokens, at position 5
    assert np.abs(got - ref[len(PROMPT) - 1]).max() <= 1e-3
    got = s.forward(np.array([9, 400]))  # a short chunk after that
    assert np.abs(got - ref[-1]).max() <= 1e-3
    # reset really forgets: the same prompt in one chunk gives the same logits
    s.reset()
    assert s.position == 0
    again = s.forward(np.array(PROMPT))
    assert np.abs(again - ref[len(PROMPT) - 1]).max() <= 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_greedy_matches_transformers_for_32_steps(exports, arch):
    from tiny_models import reference_greedy

    hf, out = exports(arch)
    expect = reference_greedy(hf, PROMPT, 32)
    assert greedy(load_openvino(out, threads=1), PROMPT, 32) == expect
    assert len(set(expect)) > 3  # a path that actually moves, not one repeated token


def test_compiled_graph_uses_the_fused_cpu_kernels(exports):
    """The point of building the graph by hand: the CPU plugin must recognise its patterns.
    If an OpenVINO upgrade stops fusing one, this names it (decode gets several times slower)."""
    _, out = exports("qwen2", "int4")
    s = load_openvino(out, threads=1)
    kinds = {op.get_rt_info()["layerType"].astype(str)
             for op in s.compiled.get_runtime_model().get_ordered_ops()}
    assert {"RMS", "RoPE", "ScaledDotProductAttention", "FullyConnected"} <= kinds
    assert "MatMul" not in kinds  # every projection became a (weight-compressed) FC
    fcs = [op for op in s.compiled.get_runtime_model().get_ordered_ops()
           if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"]
    types = [{str(i.get_element_type()) for i in op.inputs()} for op in fcs]
    assert all(any("int4" in t or "uint8" in t for t in ts) for ts in types), types


class _RoundTripCheckpoint(Checkpoint):
    """fp32 weights replaced by what the quantized export stores (quantize, then dequantize)."""

    def __init__(self, inner: Checkpoint, weights: str, symmetric: bool):
        self.inner, self.config, self.weights, self.symmetric = (
            inner, inner.config, weights, symmetric)

    def names(self):
        return self.inner.names()

    def tensor(self, name):
        w = self.inner.tensor(name)
        if name.endswith("_proj.weight") and self.weights == "int4":
            return dequantize_openvino(quantize_openvino(w, 4, 32, self.symmetric))
        if name.endswith("_proj.weight") or name in ("lm_head.weight",
                                                     "model.embed_tokens.weight"):
            # int8 embeddings and (in int4 mode) lm_head
            return dequantize_openvino(quantize_openvino(w, 8))
        return w


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
@pytest.mark.parametrize(("weights", "symmetric"),
                         [("int4", True), ("int4", False), ("int8", True)])
def test_quantized_graph_computes_exactly_with_its_weights(exports, tmp_path, arch, weights,
                                                           symmetric):
    """Computed in f32, the compressed-weight graph equals an fp32 graph of the dequantized
    weights: the i4/u4/u8 constants, zero points, scales and their layout lose nothing."""
    hf, _ = exports(arch)
    export_openvino(HFCheckpoint(hf), tmp_path / "q", weights=weights, progress=False,
                    symmetric=symmetric)
    export_openvino(_RoundTripCheckpoint(HFCheckpoint(hf), weights, symmetric), tmp_path / "f",
                    weights="fp32", progress=False)
    q = OpenVINODecoderSession(tmp_path / "q", threads=1, properties=EXACT)
    f = load_openvino(tmp_path / "f", threads=1)
    assert np.abs(q.forward(np.array(PROMPT)) - f.forward(np.array(PROMPT))).max() <= 1e-3
    assert greedy(q, PROMPT, 32) == greedy(f, PROMPT, 32)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_quantized_exports_stay_close_to_fp32(exports, arch, weights):
    """Default settings (u8 KV cache) against fp32. Tiny random models have top-2 logit gaps
    far below int4 block-32 noise, so int4's >= 95% greedy agreement is checked on the real
    model (slow test) and here only int8's."""
    _, fp32 = exports(arch)
    _, quant = exports(arch, weights)
    ref, got = load_openvino(fp32, threads=1), load_openvino(quant, threads=1)
    lf, lq = ref.forward(np.array(PROMPT)), got.forward(np.array(PROMPT))
    rel = np.abs(lq - lf).max() / lf.std()
    assert rel < (0.1 if weights == "int8" else 0.6), f"max error {rel:.2f} std of the logits"
    assert np.corrcoef(lf, lq)[0, 1] > (0.999 if weights == "int8" else 0.95)
    if weights == "int8":
        agree = teacher_forced_agreement(ref, got, PROMPT, 64)
        assert agree >= 0.9, f"int8 agrees with fp32 on {agree:.0%} of greedy tokens"
    size = {p: (p / "openvino_model.bin").stat().st_size for p in (fp32, quant)}
    assert size[quant] < size[fp32] * (0.3 if weights == "int8" else 0.25)


def test_bad_inputs_give_clear_errors(exports):
    _, out = exports("qwen2")
    s = load_openvino(out, threads=1, max_context=16)
    assert s.max_context == 16
    with pytest.raises(QcoderError, match="non-empty"):
        s.forward(np.array([], np.int64))
    with pytest.raises(QcoderError, match="non-empty 1-D"):
        s.forward(np.array([[1, 2]]))
    with pytest.raises(QcoderError, match=r"token id 512 is outside the vocabulary \[0, 512\)"):
        s.forward(np.array([1, 512]))
    with pytest.raises(QcoderError, match="token id -1"):
        s.forward(np.array([-1]))
    with pytest.raises(QcoderError, match="integers"):
        s.forward(np.array([1.0]))
    assert s.position == 0  # nothing above touched the cache
    first = s.forward(np.array(PROMPT[:10]))
    with pytest.raises(ContextLengthError, match="more than this session's context of 16"):
        s.forward(np.array(PROMPT[:7]))
    assert s.position == 10
    s.forward(np.array(PROMPT[:6]))  # exactly full is fine
    assert s.position == 16
    with pytest.raises(ContextLengthError):
        s.forward(np.array([1]))
    s.reset()
    np.testing.assert_allclose(s.forward(np.array(PROMPT[:10])), first, atol=1e-6)
    with pytest.raises(ContextLengthError, match="exceeds the model's 256 positions"):
        load_openvino(out, max_context=1000)


class _FailingCheckpoint(Checkpoint):
    """A checkpoint whose weights break halfway (a truncated file, a bad disk)."""

    def __init__(self, inner: Checkpoint):
        self.inner, self.config = inner, inner.config

    def names(self):
        return self.inner.names()

    def tensor(self, name):
        if name.startswith("model.layers.1."):
            raise ModelError("tensor model.layers.1.x: truncated")
        return self.inner.tensor(name)


def test_failed_export_leaves_the_old_export_and_no_temp_files(exports, tmp_path):
    hf, _ = exports("qwen2")
    out = tmp_path / "export"
    export_openvino(HFCheckpoint(hf), out, weights="fp32", progress=False)
    ref = load_openvino(out, threads=1).forward(np.array(PROMPT))
    before = sorted(p.name for p in out.iterdir())
    assert {"openvino_model.xml", "openvino_model.bin", "config.json"} <= set(before)
    with pytest.raises(ModelError, match="truncated"):
        export_openvino(_FailingCheckpoint(HFCheckpoint(hf)), out, weights="int4",
                        progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    np.testing.assert_array_equal(load_openvino(out, threads=1).forward(np.array(PROMPT)), ref)
    # a successful re-export replaces it in place, without leftovers, dropping stale blobs
    export_openvino(HFCheckpoint(hf), out, weights="int8", progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(set(before) - {CACHE_SUBDIR})
    assert '"weights": "int8"' in (out / "config.json").read_text()


def test_second_load_uses_the_compiled_blob_cache(exports):
    _, out = exports("llama", "int4")
    first = load_openvino(out, threads=1).forward(np.array(PROMPT))
    blobs = list((out / CACHE_SUBDIR).glob("*.blob"))
    assert blobs, "compiling should have cached a blob under the export"
    np.testing.assert_allclose(load_openvino(out, threads=1).forward(np.array(PROMPT)), first,
                               atol=1e-5)


def test_incomplete_stale_or_unsupported_exports_are_refused(exports, tiny_dir, tmp_path):
    _, out = exports("qwen2")
    with pytest.raises(ModelError, match="no complete OpenVINO export"):
        load_openvino(tmp_path)
    with pytest.raises(ModelError, match="weights must be one of"):
        export_openvino(HFCheckpoint(tiny_dir("qwen2")), tmp_path / "x", weights="int3")
    with pytest.raises(ModelError, match="mixture of experts"):
        export_openvino(HFCheckpoint(tiny_dir("qwen3_moe")), tmp_path / "moe", weights="fp32",
                        progress=False)
    assert [p.name for p in tmp_path.iterdir()] == []
    # an export from another exporter version is refused, not misread
    stale = tmp_path / "stale"
    stale.mkdir()
    for f in ("openvino_model.xml", "openvino_model.bin"):
        (stale / f).write_bytes((out / f).read_bytes())
    (stale / "config.json").write_text(
        (out / "config.json").read_text().replace('"exporter_version": ', '"exporter_version": 9'))
    with pytest.raises(ModelError, match="export again"):
        load_openvino(stale)


@pytest.mark.slow
def test_real_model_int4_agrees_with_fp32(tmp_path):
    """Embedded Qwen2.5-Coder 0.5B: the default int4 export against the fp32 one."""
    if not REAL_GGUF.is_file():
        pytest.skip(f"{REAL_GGUF} not present")
    from qcoder_ds.models.gguf_checkpoint import GGUFCheckpoint

    ckpt = GGUFCheckpoint(REAL_GGUF)
    export_openvino(ckpt, tmp_path / "fp32", weights="fp32", progress=False)
    export_openvino(ckpt, tmp_path / "int4", weights="int4", progress=False)
    # a chat-formatted request for a small Python function
    prompt = [151644, 872, 198, 7985, 264, 10135, 729, 429, 4675, 279, 2629, 315, 264, 1140,
              13, 151645, 198, 151644, 77091, 198]
    agree = teacher_forced_agreement(load_openvino(tmp_path / "fp32"),
                                     load_openvino(tmp_path / "int4"), prompt, 64)
    assert agree >= 0.95, f"int4 agrees with fp32 on {agree:.0%} of greedy tokens"


class _DirSource:
    """A tiny HF directory as a model source (what qcoder_ds.models.sources gives a folder)."""

    def __init__(self, d: Path):
        self.d, self.name, self.identity = d, "tiny-qwen3", "d" * 64
        self._ckpt = HFCheckpoint(d)

    def checkpoint(self):
        return self._ckpt


def test_backend_through_the_export_cache_and_the_generator(tiny_dir, tmp_path, monkeypatch):
    """The backend as the rest of the project uses it: cached export, then chunked-prefill
    greedy generation, which must equal transformers' greedy tokens."""
    from tiny_models import reference_greedy

    from qcoder_ds.runtime import export as ex
    from qcoder_ds.runtime.generate import generate_tokens
    from qcoder_ds.runtime.sampler import SamplingParams

    monkeypatch.setenv("QCODER_HOME", str(tmp_path / "home"))
    src = _DirSource(tiny_dir("qwen3"))
    session = ex.load_session(src, "openvino", "fp32", threads=1, progress=False)
    assert isinstance(session, OpenVINODecoderSession)
    toks = list(generate_tokens(session, PROMPT, SamplingParams(max_new_tokens=16),
                                prefill_chunk=5))
    assert toks == reference_greedy(src.d, PROMPT, 16)
    again = ex.load_session(src, "openvino", "fp32", threads=1, progress=False)
    assert again.dir == session.dir  # the second start found the export
