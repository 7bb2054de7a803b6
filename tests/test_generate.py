"""Sampling on crafted logits, and the generation loop's mechanics.

The mechanics run on a scripted DecoderSession (its logits say which token comes next) and a
byte-level tokenizer (id i < 256 is byte i), which make stop strings split across tokens and
UTF-8 characters split across tokens easy to set up. The same loop on the real ONNX Runtime
backend with a tiny transformers model is at the end (skipped until that backend exists).
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qcoder_ds.errors import ContextLengthError, GenerationCancelled, QcoderError
from qcoder_ds.runtime.backend import DecoderSession
from qcoder_ds.runtime.generate import (
    EmptyPromptError,
    IncrementalDecoder,
    generate_text,
    generate_tokens,
)
from qcoder_ds.runtime.sampler import (
    Sampler,
    SamplingParams,
    SamplingParamsError,
    apply_repetition_penalty,
    nucleus,
    top_k_mask,
)

EOS = 256
VOCAB = 260


# ---------------------------------------------------------------- sampler on crafted logits


def test_greedy_is_argmax():
    rng = np.random.default_rng(1)
    for _ in range(20):
        logits = rng.normal(size=1000).astype(np.float32)
        assert Sampler(SamplingParams())(logits) == int(np.argmax(logits))


def test_top_k_keeps_exactly_the_k_best():
    logits = np.array([0.1, 5.0, -2.0, 4.0, 3.0, 4.5], dtype=np.float32)
    assert sorted(top_k_mask(logits, 3).tolist()) == [1, 3, 5]
    assert sorted(top_k_mask(logits, 0).tolist()) == list(range(6))
    # sampling never leaves the top-k set, and with a high temperature it visits all of it
    s = Sampler(SamplingParams(temperature=5.0, top_k=3, seed=0))
    seen = Counter(s(logits) for _ in range(600))
    assert set(seen) == {1, 3, 5}


def test_top_p_nucleus_is_the_smallest_set_reaching_p():
    probs = np.array([0.05, 0.5, 0.3, 0.15])
    assert sorted(nucleus(probs, 0.5).tolist()) == [1]
    assert sorted(nucleus(probs, 0.6).tolist()) == [1, 2]
    assert sorted(nucleus(probs, 0.8).tolist()) == [1, 2]
    assert sorted(nucleus(probs, 0.81).tolist()) == [1, 2, 3]
    assert sorted(nucleus(probs, 1.0).tolist()) == [0, 1, 2, 3]
    logits = np.log(probs).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.8, seed=3))
    seen = Counter(s(logits) for _ in range(2000))
    assert set(seen) == {1, 2}
    # renormalised over the nucleus: 0.5/0.8 vs 0.3/0.8
    assert abs(seen[1] / 2000 - 0.625) < 0.05


def test_top_p_on_a_large_vocabulary_matches_the_full_sort():
    """The fast path (best 1024 first) picks the same nucleus as sorting everything."""
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=50_000) * 3).astype(np.float32)
    for top_p in (0.3, 0.9, 0.999):
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        allowed = set(nucleus(probs, top_p).tolist())
        s = Sampler(SamplingParams(temperature=1.0, top_p=top_p, seed=0))
        draws = {s(logits) for _ in range(200)}
        assert draws <= allowed


def test_repetition_penalty_follows_transformers():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    assert logits.tolist() == [2.0, -2.0, 1.0, 0.5]  # input untouched
    # greedy picks token 0 without the penalty and token 2 with it
    assert Sampler(SamplingParams())(logits, [0]) == 0
    assert Sampler(SamplingParams(repetition_penalty=2.5))(logits, [0]) == 2


def test_repetition_penalty_matches_transformers_processor():
    torch = pytest.importorskip("torch")
    from transformers import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    logits = rng.normal(size=64).astype(np.float32)
    ids = [3, 5, 5, 60, 7]
    scores = torch.from_numpy(logits[None].copy())
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([ids]), scores)
    np.testing.assert_allclose(apply_repetition_penalty(logits, ids, 1.3), ref[0].numpy(),
                               rtol=1e-6)


def test_seed_reproduces_and_different_seeds_differ():
    logits = np.zeros(500, dtype=np.float32)
    a = Sampler(SamplingParams(temperature=1.0, seed=42))
    b = Sampler(SamplingParams(temperature=1.0, seed=42))
    c = Sampler(SamplingParams(temperature=1.0, seed=43))
    ra = [a(logits) for _ in range(50)]
    assert ra == [b(logits) for _ in range(50)]
    assert ra != [c(logits) for _ in range(50)]


def test_temperature_sharpens_and_flattens():
    logits = np.array([1.0, 0.0], dtype=np.float32)
    cold = Sampler(SamplingParams(temperature=0.1, seed=0))
    hot = Sampler(SamplingParams(temperature=10.0, seed=0))
    assert sum(cold(logits) == 0 for _ in range(500)) > 495  # p(0) = 1 - 4.5e-5
    share = sum(hot(logits) == 0 for _ in range(2000)) / 2000
    assert 0.45 < share < 0.6  # p(0) = 0.525


@pytest.mark.parametrize("bad", [
    {"temperature": -1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1},
    {"repetition_penalty": 0}, {"max_new_tokens": 0}, {"stop": ("",)},
])
def test_bad_params_are_refused_clearly(bad):
    with pytest.raises(SamplingParamsError) as e:
        SamplingParams(**bad)
    assert isinstance(e.value, QcoderError)
    assert next(iter(bad)) in str(e.value)


def test_a_single_stop_string_is_not_split_into_characters():
    assert SamplingParams(stop="```").stop == ("```",)


# ---------------------------------------------------------------- generation mechanics


class ScriptedSession(DecoderSession):
    """Next token = script[position]: one-hot logits; records every forward call."""

    def __init__(self, script: list[int], max_context: int = 64, vocab_size: int = VOCAB):
        self.script = list(script)
        self.max_context = max_context
        self.vocab_size = vocab_size
        self.position = 0
        self.calls: list[list[int]] = []

    def _reset(self) -> None:
        self.position = 0

    def _forward(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids)
        assert ids.dtype == np.int64 and ids.ndim == 1 and ids.size > 0
        if self.position + ids.size > self.max_context:
            raise ContextLengthError("past the end")
        self.calls.append(ids.tolist())
        self.position += ids.size
        out = np.full(self.vocab_size, -10.0, dtype=np.float32)
        nxt = self.script[self.position - 1] if self.position - 1 < len(self.script) else EOS
        out[nxt] = 10.0
        return out


class ByteTokenizer:
    """id < 256 is that byte; 256 is EOS (a special token)."""

    eos_token_ids = (EOS,)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")


def session_for(prompt: str, answer: str, tail: list[int] | None = None,
                cls: type = ScriptedSession, **kw):
    """A session that, after ``prompt``, writes ``answer`` then EOS (or ``tail``)."""
    tok = ByteTokenizer()
    p, a = tok.encode(prompt), tok.encode(answer)
    script = [0] * (len(p) - 1) + a + (tail if tail is not None else [EOS])
    return cls(script, **kw), p


class RewindingSession(ScriptedSession):
    """A scripted session whose cache can be cut back, as ONNX Runtime's can."""

    def rewind(self, n: int) -> bool:
        return True


def test_a_prompt_that_extends_the_cache_prefills_only_its_new_tokens():
    s, p = session_for("hello world", "ab", cls=RewindingSession)
    assert list(generate_tokens(s, p, eos_token_ids=[EOS])) == [97, 98]
    assert s.cached_ids == p + [97, 98]  # the prompt and every token fed back
    s.calls.clear()
    longer = p + [97, 98, 10]
    gen = generate_tokens(s, longer, SamplingParams(max_new_tokens=1), eos_token_ids=[EOS])
    list(gen)
    assert gen.reused_tokens == len(p) + 2 and s.calls[0] == [10]
    # a prompt that differs early: only the common start is kept
    s.calls.clear()
    other = p[:3] + [120, 121]
    gen = generate_tokens(s, other, SamplingParams(max_new_tokens=1), eos_token_ids=[EOS])
    list(gen)
    assert gen.reused_tokens == 3 and s.calls[0] == [120, 121]


def test_sessions_that_cannot_rewind_start_over():
    s, p = session_for("hello", "ab")
    list(generate_tokens(s, p, eos_token_ids=[EOS]))
    s.calls.clear()
    gen = generate_tokens(s, p + [97], SamplingParams(max_new_tokens=1), eos_token_ids=[EOS])
    list(gen)
    assert gen.reused_tokens == 0 and s.calls[0] == p + [97]


def test_greedy_until_eos_and_eos_not_yielded():
    s, p = session_for("hi", "abc")
    gen = generate_tokens(s, p, eos_token_ids=[EOS])
    assert list(gen) == [97, 98, 99]
    assert gen.finish_reason == "eos"
    assert EOS not in gen.generated


def test_max_new_tokens_and_no_wasted_forward():
    s, p = session_for("hi", "abcdefgh")
    gen = generate_tokens(s, p, SamplingParams(max_new_tokens=3), eos_token_ids=[EOS])
    assert list(gen) == [97, 98, 99]
    assert gen.finish_reason == "length"
    # prefill + 2 decode steps: the third token is never fed back
    assert s.calls == [p, [97], [98]]


def test_stop_token_ids_from_params():
    s, p = session_for("hi", "abcdef")
    gen = generate_tokens(s, p, SamplingParams(stop_token_ids=(ord("d"),)))
    assert list(gen) == [97, 98, 99]
    assert gen.finish_reason == "eos"


def test_chunked_prefill_feeds_the_prompt_in_chunks():
    s, p = session_for("0123456789", "x")
    assert list(generate_tokens(s, p, prefill_chunk=4, eos_token_ids=[EOS])) == [ord("x")]
    assert s.calls[:3] == [p[0:4], p[4:8], p[8:10]]


def test_text_stream_stop_string_split_across_tokens_is_never_emitted():
    answer = "print(df.head())\n```\nmore text"
    s, p = session_for("q", answer)
    stream = generate_text(s, ByteTokenizer(), p, SamplingParams(stop=("\n```",)))
    pieces = list(stream)
    assert "".join(pieces) == "print(df.head())"
    assert stream.text == "print(df.head())"
    assert stream.finish_reason == "stop"
    # each stop-string byte arrives as its own token; "\n" and "`" were held back, not emitted
    assert all("`" not in piece for piece in pieces)
    # generation stopped right after the token that completed the stop string
    assert len(stream.tokens.generated) == len("print(df.head())\n```")


def test_text_stream_releases_held_back_text_when_no_stop_follows():
    s, p = session_for("q", "a\n``b")
    stream = generate_text(s, ByteTokenizer(), p, SamplingParams(stop=("\n```",)))
    assert "".join(stream) == "a\n``b"
    assert stream.finish_reason == "eos"
    s, p = session_for("q", "tail\n`")  # ends (EOS) while a possible stop prefix is held
    assert "".join(generate_text(s, ByteTokenizer(), p, SamplingParams(stop=("\n```",)))) \
        == "tail\n`"


def test_earliest_of_several_stop_strings_wins():
    s, p = session_for("q", "one END two STOP")
    stream = generate_text(s, ByteTokenizer(), p, SamplingParams(stop=("STOP", "END")))
    assert "".join(stream) == "one "


def test_multibyte_characters_split_across_tokens_stream_whole():
    answer = "naïve 数据 🐼!"
    s, p = session_for("q", answer)
    pieces = list(generate_text(s, ByteTokenizer(), p))
    assert "".join(pieces) == answer
    assert not any("\ufffd" in x for x in pieces)
    assert "🐼" in pieces  # the four bytes of the emoji come out together, once complete


def test_incremental_decoder_flushes_an_incomplete_tail():
    d = IncrementalDecoder(ByteTokenizer())
    assert d.push(0xE6) == "" and d.push(0x95) == ""  # two of the three bytes of 数
    assert d.finish() == "\ufffd"


def test_cancel_before_start_raises_and_runs_nothing():
    s, p = session_for("hello", "world")
    ev = threading.Event()
    ev.set()
    gen = generate_tokens(s, p, cancel=ev)
    with pytest.raises(GenerationCancelled):
        next(gen)
    assert s.calls == []


def test_cancel_mid_stream_stops_within_one_step():
    s, p = session_for("hello", "abcdefghijklmnop")
    ev = threading.Event()
    got = []
    with pytest.raises(GenerationCancelled) as e:
        for tok in generate_tokens(s, p, cancel=ev, eos_token_ids=[EOS]):
            got.append(tok)
            if len(got) == 3:
                ev.set()
    assert got == [97, 98, 99]
    assert len(s.calls) == 3  # prefill + 2 decode steps; nothing after the cancel
    assert "3 new tokens" in str(e.value)


def test_cancel_between_prefill_chunks():
    s, p = session_for("x" * 40, "y")
    ev = threading.Event()

    class CancelAfterFirst(ScriptedSession):
        def forward(self, ids):
            out = super().forward(ids)
            ev.set()
            return out

    s2 = CancelAfterFirst(s.script)
    with pytest.raises(GenerationCancelled):
        list(generate_tokens(s2, p, cancel=ev, prefill_chunk=8))
    assert s2.calls == [p[:8]]


def test_empty_prompt_is_a_clear_error():
    s = ScriptedSession([1, 2, 3])
    with pytest.raises(EmptyPromptError, match="empty"):
        generate_tokens(s, [])
    with pytest.raises(EmptyPromptError):
        generate_text(s, ByteTokenizer(), [])


def test_prompt_longer_than_context_is_an_error_with_the_numbers():
    s = ScriptedSession([5] * 100, max_context=16)
    with pytest.raises(ContextLengthError) as e:
        generate_tokens(s, list(range(20)))
    msg = str(e.value)
    assert "20 tokens" in msg and "16" in msg
    assert s.calls == []  # raised before anything ran


def test_truncation_keeps_the_newest_tokens_and_room_for_the_answer():
    s = ScriptedSession([7] * 100, max_context=16)
    gen = generate_tokens(s, list(range(1, 21)), SamplingParams(max_new_tokens=4), truncate=True)
    assert gen.truncated == 8
    assert gen.prompt_ids.tolist() == list(range(9, 21))
    assert list(gen) == [7, 7, 7, 7]
    assert s.calls[0] == list(range(9, 21))


def test_generation_ends_when_the_context_is_full():
    s = ScriptedSession([7] * 100, max_context=8)
    gen = generate_tokens(s, [1, 2, 3, 4, 5], SamplingParams(max_new_tokens=50))
    out = list(gen)
    assert out == [7, 7, 7, 7]  # positions 5,6,7 fed back; the 4th token fills nothing more
    assert gen.finish_reason == "context"
    assert s.position == 8


def test_seeded_sampling_is_reproducible_through_the_loop():
    class NoisySession(ScriptedSession):
        def forward(self, ids):
            super().forward(ids)
            return np.random.default_rng(self.position).normal(size=self.vocab_size) \
                .astype(np.float32)

    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=11, max_new_tokens=20)
    a = list(generate_tokens(NoisySession([]), [1, 2, 3], params))
    b = list(generate_tokens(NoisySession([]), [1, 2, 3], params))
    c = list(generate_tokens(NoisySession([]), [1, 2, 3],
                             SamplingParams(temperature=0.8, seed=12, max_new_tokens=20)))
    assert a == b and len(a) == 20
    assert a != c


# ---------------------------------------------------------------- on the real ORT backend


@pytest.fixture(scope="module")
def ort_tiny(tiny_dir, tmp_path_factory):
    ort_backend = pytest.importorskip("qcoder_ds.runtime.ort_backend")
    from qcoder_ds.models.checkpoint import HFCheckpoint

    d = tiny_dir("qwen2")
    out = tmp_path_factory.mktemp("ort-tiny")
    ort_backend.export_onnx(HFCheckpoint(d), out, weights="fp32", progress=False)
    return d, ort_backend.load_onnx(out, threads=1)


def test_chunked_prefill_gives_the_same_logits_as_one_shot(ort_tiny):
    _, sess = ort_tiny
    ids = np.random.default_rng(0).integers(0, 512, size=37).astype(np.int64)
    sess.reset()
    one = sess.forward(ids)
    for chunk in (1, 5, 16):
        sess.reset()
        for i in range(0, ids.size, chunk):
            out = sess.forward(ids[i:i + chunk])
        np.testing.assert_allclose(out, one, atol=1e-4)


def test_greedy_generation_matches_transformers(ort_tiny):
    from tiny_models import reference_greedy

    d, sess = ort_tiny
    prompt = [5, 17, 300, 42, 7, 99]
    ref = reference_greedy(d, prompt, 16)
    got = list(generate_tokens(sess, prompt, SamplingParams(max_new_tokens=16), prefill_chunk=4))
    assert got == ref


def test_real_backend_context_overflow_and_truncation(ort_tiny):
    _, sess = ort_tiny
    n = sess.max_context + 10
    with pytest.raises(ContextLengthError, match=f"{n} tokens"):
        generate_tokens(sess, [1] * n)
    gen = generate_tokens(sess, [1] * n, SamplingParams(max_new_tokens=3), truncate=True)
    assert len(list(gen)) == 3
    assert gen.prompt_ids.size == sess.max_context - 3


# ---------------------------------------------------------------- with the real tokenizer


def _real_gguf():
    from qcoder_ds import paths

    for p in (paths.models_dir() / "qwen2.5-coder-0.5b-instruct.gguf",
              Path("/tmp/qwen2.5-coder-0.5b-instruct.gguf")):
        if p.is_file():
            return p
    pytest.skip("the embedded model is not assembled here")


def test_text_stream_with_the_real_tokenizer_splits_nothing():
    from qcoder_ds.models.tokenizer import load_tokenizer_from_gguf

    tok = load_tokenizer_from_gguf(_real_gguf())
    answer = "df.groupby('地域')['revenue'].sum()  # 合計 🐼🚀 naïve\n\tx = 1\n```\nafter"
    ids = tok.encode(answer)
    prompt = tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    script = [0] * (len(prompt) - 1) + ids + list(tok.eos_token_ids[:1])
    s = ScriptedSession(script, max_context=512, vocab_size=tok.vocab_size)
    stream = generate_text(s, tok, prompt, SamplingParams(stop=("\n```",)))
    pieces = list(stream)
    assert "".join(pieces) == answer.split("\n```")[0]
    assert not any("\ufffd" in p for p in pieces)
    s = ScriptedSession(script, max_context=512, vocab_size=tok.vocab_size)
    stream = generate_text(s, tok, prompt)
    assert "".join(stream) == answer and stream.finish_reason == "eos"
