"""Speculative decoding on tiny random models, on both backends: the target's greedy tokens for
every draft length, the target's sampling distribution, and the generation loop's rules (EOS,
stop strings, cancellation, max tokens, context, prompt caches) unchanged.

The drafters: a smaller model (the target's first layer, its embeddings and lm_head: right a
fair share of the time, like the 0.5B for the 1.5B), the target itself (always right), a
scripted drafter that is wrong exactly where a test wants, and prompt lookup.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

import numpy as np
import pytest

from qcoder_ds.errors import GenerationCancelled
from qcoder_ds.runtime.generate import generate_text, generate_tokens
from qcoder_ds.runtime.sampler import Sampler, SamplingParams, token_probabilities
from qcoder_ds.runtime.speculative import (
    Draft,
    DraftLength,
    LookupThenModel,
    ModelDrafter,
    PromptLookup,
    lookup,
    verify_sampled,
)

PROMPT = [5, 17, 301, 42, 7, 88, 150, 3, 499]
NEW = 40
GREEDY = SamplingParams(max_new_tokens=NEW)
# the tiny models' logits are nearly flat (std ~0.04): a low temperature gives a distribution
# with a few likely tokens, where a wrong accept/reject rule shows
HOT = SamplingParams(temperature=0.01, max_new_tokens=2)


def _load(backend: str, hf, out, max_context: int | None = None, spinning: bool = True):
    from qcoder_ds.models.checkpoint import HFCheckpoint

    if backend == "onnx":
        from qcoder_ds.runtime.ort_backend import export_onnx, load_onnx

        if not (out / "model.onnx").exists():
            export_onnx(HFCheckpoint(hf), out, weights="fp32", progress=False)
        return load_onnx(out, threads=1, max_context=max_context, spinning=spinning)
    pytest.importorskip("openvino")
    from qcoder_ds.runtime.openvino_backend import load_openvino
    from qcoder_ds.runtime.openvino_graph import export_openvino

    if not (out / "openvino_model.xml").exists():
        export_openvino(HFCheckpoint(hf), out, weights="fp32", progress=False)
    return load_openvino(out, threads=1, max_context=max_context)


class Pair:
    """A target and its drafters on one backend, with the target's plain greedy tokens."""

    def __init__(self, backend: str, target_dir, drafter_dir, tmp):
        self.backend, self.target_dir, self.tmp = backend, target_dir, tmp
        self.target = _load(backend, target_dir, tmp / "target")
        self.small = _load(backend, drafter_dir, tmp / "drafter", spinning=False)
        self.twin = _load(backend, target_dir, tmp / "target")  # the target as its own drafter
        self.plain = self.run(None, GREEDY)

    def run(self, drafter, params=GREEDY, prompt=PROMPT, session=None, **kw):
        gen = generate_tokens(session or self.target, prompt, params, drafter=drafter, **kw)
        out = list(gen)
        return (out, gen) if drafter is not None else out

    def load(self, max_context: int):
        return _load(self.backend, self.target_dir, self.tmp / "target", max_context)


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def pair(request, tiny_dir, tmp_path_factory):
    from tiny_models import build_drafter

    target = tiny_dir("qwen2")
    tmp = tmp_path_factory.mktemp(f"spec-{request.param}")
    return Pair(request.param, target, build_drafter(target, tmp / "drafter-hf"), tmp)


class Scripted:
    """Proposes the target's own greedy tokens, wrong at draft position ``wrong`` (an int, or
    "last"); records how many drafts it made."""

    def __init__(self, truth: list[int], wrong: int | str | None = None, vocab: int = 512):
        self.truth, self.wrong, self.vocab = truth, wrong, vocab
        self.drafts = 0

    def prepare(self, prompt_ids, check):
        pass

    def propose(self, ctx, k, pick, check, eos):
        done = len(ctx) - len(PROMPT)
        toks = list(self.truth[done:done + k])
        at = len(toks) - 1 if self.wrong == "last" else self.wrong
        if at is not None and 0 <= at < len(toks):
            toks[at] = (toks[at] + 1) % self.vocab
        self.drafts += bool(toks)
        return Draft(toks)


# ---------------------------------------------------------------- the graphs


def test_every_position_scored_in_one_pass_and_the_cache_cut_back(pair):
    from tiny_models import reference_logits

    ids = PROMPT + [9, 400, 33]
    ref = reference_logits(pair.target_dir, ids)
    s = pair.target
    s.reset()
    assert s.scores_all_positions
    assert s.forward(np.array(ids[:4])).shape == (s.vocab_size,)
    rows = s.forward(np.array(ids[4:]), all_logits=True)
    assert rows.shape == (len(ids) - 4, s.vocab_size)
    np.testing.assert_allclose(rows, ref[4:], atol=1e-4)
    assert s.cut(6) and s.position == 6 and s.cached_ids == ids[:6]
    np.testing.assert_allclose(s.forward(np.array(ids[6:7])), ref[6], atol=1e-4)
    np.testing.assert_allclose(s.forward(np.array(ids[7:]), all_logits=True), ref[7:], atol=1e-4)
    np.testing.assert_allclose(s.forward(np.array([1])),
                               reference_logits(pair.target_dir, ids + [1])[-1], atol=1e-4)


# ---------------------------------------------------------------- greedy: the target's tokens


def test_plain_greedy_is_transformers_greedy(pair):
    from tiny_models import reference_greedy

    assert pair.plain == reference_greedy(pair.target_dir, PROMPT, NEW)


@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_with_a_small_drafter_is_the_targets_greedy(pair, k):
    out, gen = pair.run(ModelDrafter(pair.small), draft_tokens=k)
    assert out == pair.plain
    assert 0 < gen.accepted < gen.drafted  # some guesses kept, some rejected
    assert gen.passes < NEW  # fewer target passes than tokens


@pytest.mark.parametrize("k", [1, 3, 8])
def test_a_drafter_that_is_always_right_gives_k_plus_one_per_pass(pair, k):
    out, gen = pair.run(ModelDrafter(pair.twin), draft_tokens=k)
    assert out == pair.plain
    assert gen.accepted == gen.drafted
    assert gen.passes == -(-NEW // (k + 1))


@pytest.mark.parametrize("k", [1, 2, 5, 8])
@pytest.mark.parametrize("wrong", [0, "last"])
def test_rejection_at_the_first_and_at_the_last_position(pair, k, wrong):
    drafter = Scripted(pair.plain, wrong)
    out, gen = pair.run(drafter, draft_tokens=k)
    assert out == pair.plain
    if wrong == 0:  # one pass per token after the first, which the prompt's pass gives
        assert gen.accepted == 0 and gen.passes == NEW - 1
    else:  # every draft loses exactly its last token
        assert gen.accepted == gen.drafted - drafter.drafts


def test_repetition_penalty_keeps_greedy_identity(pair):
    params = SamplingParams(max_new_tokens=NEW, repetition_penalty=1.3)
    plain = pair.run(None, params)
    assert plain != pair.plain  # the penalty changes the answer, so the test means something
    for drafter in (ModelDrafter(pair.small), ModelDrafter(pair.twin), PromptLookup()):
        out, _ = pair.run(drafter, params, draft_tokens=4)
        assert out == plain


def test_eos_inside_a_draft_ends_there(pair):
    j = next(i for i in range(6, NEW) if pair.plain[i] not in pair.plain[:i])
    eos = [pair.plain[j]]
    for drafter in (ModelDrafter(pair.twin), ModelDrafter(pair.small), Scripted(pair.plain)):
        out, gen = pair.run(drafter, draft_tokens=5, eos_token_ids=eos)
        assert out == pair.plain[:j] and gen.finish_reason == "eos"


# ---------------------------------------------------------------- the loop's other rules


class Commas:
    """Token i is the text "i," (so a stop string can span tokens)."""

    eos_token_ids = ()

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f"{i}," for i in ids)


def test_a_stop_string_spanning_accepted_tokens(pair):
    stop = f",{pair.plain[5]},{pair.plain[6]},"
    params = SamplingParams(max_new_tokens=NEW, stop=(stop,))
    plain = generate_text(pair.target, Commas(), PROMPT, params)
    want = "".join(plain)
    assert plain.finish_reason == "stop"
    stream = generate_text(pair.target, Commas(), PROMPT, params,
                           drafter=ModelDrafter(pair.twin), draft_tokens=4)
    assert "".join(stream) == want and stream.finish_reason == "stop"
    assert stream.tokens.accepted >= 6  # tokens 5 and 6 came in as accepted draft tokens


def test_cancel_mid_draft_stops_before_the_target_runs_again(pair):
    ev = threading.Event()
    model = ModelDrafter(pair.small)

    class CancelOnThirdDraft:
        calls = 0

        def prepare(self, prompt_ids, check):
            model.prepare(prompt_ids, check)

        def propose(self, ctx, k, pick, check, eos):
            def picking(logits, history):
                self.calls += 1
                if self.calls == 11:  # in the middle of the third draft of four tokens
                    ev.set()
                return pick(logits, history)
            return model.propose(ctx, k, picking, check, eos)

    gen = generate_tokens(pair.target, PROMPT, GREEDY, ev, drafter=CancelOnThirdDraft(),
                          draft_tokens=4)
    got = []
    with pytest.raises(GenerationCancelled):
        for tok in gen:
            got.append(tok)
    assert gen.passes == 2 and got == pair.plain[:len(got)] and got
    assert gen.finish_reason == "cancelled"


@pytest.mark.parametrize("limit", [1, 3, 6, 7])
def test_max_tokens_reached_mid_draft(pair, limit):
    params = SamplingParams(max_new_tokens=limit)
    out, gen = pair.run(ModelDrafter(pair.twin), params, draft_tokens=5)
    assert out == pair.plain[:limit] and gen.finish_reason == "length"
    assert gen.drafted <= limit - 1  # no guess past the last token asked for


def test_generation_ends_when_the_context_is_full_as_plain_decode_does(pair):
    small = pair.load(max_context=len(PROMPT) + 7)
    plain = generate_tokens(small, PROMPT, GREEDY)
    want = list(plain)
    out, gen = pair.run(ModelDrafter(pair.twin), session=small, draft_tokens=4)
    assert out == want == pair.plain[:8]
    assert gen.finish_reason == plain.finish_reason == "context"


def test_prompt_caches_still_serve_a_following_prompt(pair):
    first, _ = pair.run(ModelDrafter(pair.small), draft_tokens=3)
    follow = PROMPT + first[:30] + [77, 12]  # a repair round: the answer so far, then more
    out, gen = pair.run(ModelDrafter(pair.small), prompt=follow, draft_tokens=3)
    assert gen.reused_tokens == len(PROMPT) + 30
    assert out == pair.run(None, prompt=follow, session=pair.twin)


# ---------------------------------------------------------------- adaptive k, lookup then model


@pytest.mark.parametrize("accepted, drafted, draft_s, verify_s, low, high", [
    (8, 8, 0.0, 1.0, 8, 8),          # free guesses, all kept: the most allowed
    (4, 4, 0.0125, 0.053, 6, 8),     # the 0.5B for the 1.5B on 2 cores, all kept: long drafts
    (0, 1, 0.0125, 0.04, 0, 0),      # every guess rejected: no drafts
    (1, 2, 0.4, 0.1, 0, 0),          # a drafter dearer than the model: no drafts
    (3, 4, 0.004, 0.053, 2, 4),      # three in four kept by a cheap drafter
])
def test_draft_length_follows_acceptance_and_cost(accepted, drafted, draft_s, verify_s,
                                                  low, high):
    length = DraftLength(8)
    for _ in range(30):
        length.update(drafted, drafted, accepted, draft_s * drafted, verify_s)
    assert low <= length.next() <= high
    a = length.acceptance
    for _ in range(30):  # asked for guesses, none to give (no n-gram matched): no evidence
        length.update(4, 0, 0, 0.0, verify_s)
    assert length.acceptance == a
    for _ in range(30):  # steps skipped (k = 0): the evidence fades back to the prior
        length.update(0, 0, 0, 0.0, verify_s)
    assert length.acceptance == pytest.approx(0.8, abs=0.01)
    fixed = DraftLength(3, fixed=True)
    fixed.update(drafted, drafted, accepted, draft_s, verify_s)
    assert fixed.next() == 3


def test_adaptive_k_keeps_greedy_identity_and_moves(pair):
    out, gen = pair.run(ModelDrafter(pair.twin))  # always right, as dear as the model
    assert out == pair.plain and len(set(gen.k_history)) > 1
    out, gen = pair.run(PromptLookup(), prompt=PROMPT + pair.plain[:12] + PROMPT)
    assert out == pair.run(None, prompt=PROMPT + pair.plain[:12] + PROMPT)


def test_lookup_then_model_copies_where_it_can_and_drafts_elsewhere(pair):
    class Model:
        def propose(self, ctx, k, pick, check, eos):
            return Draft([99] * k)

    both = LookupThenModel(Model())
    assert both.propose([1, 2, 3, 4, 1, 2], 2, None, None, ()).tokens == [3, 4]  # "1 2" seen
    assert both.propose([1, 2, 3, 4, 5, 2], 2, None, None, ()).tokens == [99, 99]  # one token
    assert both.source([1, 2, 3, 1, 2]) == "lookup" and both.source([1, 2, 3]) == "model"
    prompt = PROMPT + pair.plain[:12] + PROMPT
    out, gen = pair.run(LookupThenModel(ModelDrafter(pair.small)), prompt=prompt,
                        draft_tokens=4)
    assert out == pair.run(None, prompt=prompt)
    assert gen.accepted >= 11  # the copied start of the answer


# ---------------------------------------------------------------- prompt lookup


def test_lookup_copies_what_followed_the_latest_match():
    ctx = [1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 1, 2, 3]
    assert lookup(ctx, 3) == [4, 5, 9]  # the longest n-gram first: "1 2 3" at 0
    assert lookup(ctx, 3, max_ngram=2) == [4, 6, 7]  # "2 3": the latest match, at 6
    assert lookup([1, 2, 3, 4, 1, 2, 3], 2) == [4, 1]
    assert lookup([1, 2, 3], 4) == [] and lookup([7, 7], 3) == [7]


def test_greedy_with_prompt_lookup_is_the_targets_greedy(pair):
    prompt = PROMPT + pair.plain[:12] + PROMPT  # the answer's start is there to be copied
    plain = pair.run(None, prompt=prompt)
    out, gen = pair.run(PromptLookup(), prompt=prompt, draft_tokens=6)
    assert out == plain and gen.drafted > 0 and gen.accepted > 0


# ---------------------------------------------------------------- sampling: the target's law


def chi2_pvalue(observed: Counter, expected_probs: dict, n: int) -> float:
    """Pearson's chi-squared over cells expected >= 5 times, the rest pooled into one."""
    import torch

    big = [t for t, pr in expected_probs.items() if pr * n >= 5]
    obs = [observed.get(t, 0) for t in big]
    exp = [expected_probs[t] * n for t in big]
    obs.append(n - sum(obs))
    exp.append(n - sum(exp))
    if exp[-1] < 5:  # nothing to pool: fold the remainder into the last cell
        obs[-2] += obs.pop()
        exp[-2] += exp.pop()
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp, strict=True))
    df = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_verify_rule_keeps_the_target_distribution():
    """The rule alone on crafted p and q (a drafter overconfident in one token, blind to
    another): what it emits first is distributed as p."""
    p = np.array([0.05, 0.30, 0.25, 0.20, 0.12, 0.08])
    q = np.array([0.40, 0.10, 0.25, 0.05, 0.20, 0.00])
    rng = np.random.default_rng(0)
    n = 20000
    firsts = Counter()
    for _ in range(n):
        d = int(rng.choice(6, p=q))
        firsts[verify_sampled(lambda i: p, [d], [q], rng)[0]] += 1
    assert chi2_pvalue(firsts, dict(enumerate(p)), n) > 1e-3
    firsts = Counter(verify_sampled(lambda i: p, [1], None, rng)[0] for _ in range(n))
    assert chi2_pvalue(firsts, dict(enumerate(p)), n) > 1e-3  # a certain (lookup) draft


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7, top_k=4),
    SamplingParams(temperature=1.3, top_p=0.8, repetition_penalty=1.5),
])
def test_token_probabilities_are_what_the_sampler_draws_from(params):
    logits = np.array([2.0, 1.5, -1.0, 0.3, 1.9, 0.0, -0.5, 1.0], np.float32)
    history = [0, 4]
    probs = token_probabilities(logits, params, history)
    s = Sampler(dataclasses.replace(params, seed=3))
    n = 20000
    draws = Counter(s(logits, history) for _ in range(n))
    assert set(draws) <= set(np.flatnonzero(probs).tolist())
    assert chi2_pvalue(draws, dict(enumerate(probs)), n) > 1e-3


def _two_token_law(pair, prompt) -> dict:
    """The target's exact law of its first two sampled tokens (from transformers' logits)."""
    from tiny_models import reference_logits

    first = token_probabilities(reference_logits(pair.target_dir, prompt)[-1], HOT)
    law = {}
    for a in np.flatnonzero(first > 1e-4):
        second = token_probabilities(reference_logits(pair.target_dir, prompt + [int(a)])[-1], HOT)
        for b in np.flatnonzero(second > 1e-6):
            law[(int(a), int(b))] = first[a] * second[b]
    return law


@pytest.mark.parametrize("k", [1, 3])
def test_sampled_tokens_follow_the_targets_distribution(pair, k):
    """Over many seeds, the first two tokens speculative sampling emits (the first draft's
    accepted tokens, corrections and bonus tokens) are distributed as the target's own."""
    law = _two_token_law(pair, PROMPT)
    n = 2500
    seen = Counter()
    for seed in range(n):
        params = SamplingParams(temperature=HOT.temperature, max_new_tokens=2, seed=seed)
        out, _ = pair.run(ModelDrafter(pair.small), params, draft_tokens=k)
        seen[tuple(out)] += 1
    assert chi2_pvalue(seen, law, n) > 1e-3


# ---------------------------------------------------------------- the engine option


class CommaText(Commas):
    """Text "5,17,301," <-> ids [5, 17, 301]."""

    def encode(self, text):
        return [int(t) for t in text.split(",") if t]


def test_engine_with_a_drafter_streams_the_same_text(pair):
    from qcoder_ds.engine import Engine

    prompt = "".join(f"{i}," for i in PROMPT)
    params = SamplingParams(max_new_tokens=NEW, stop=(f",{pair.plain[20]},",))
    plain = Engine(pair.target, CommaText()).complete(prompt, params)
    want = "".join(plain)
    fast = Engine(pair.target, CommaText(), drafter=ModelDrafter(pair.small), draft_tokens=3)
    stream = fast.complete(prompt, params)
    assert "".join(stream) == want and stream.finish_reason == plain.finish_reason == "stop"
    assert stream.tokens.drafted > 0


def test_engine_drafter_names():
    from qcoder_ds.engine import _turn_taking, load_drafter

    assert load_drafter(None, None, None) is None and load_drafter("none", None, None) is None
    assert isinstance(load_drafter("prompt-lookup", None, None), PromptLookup)
    # a drafter model and its target take turns on the cores: no spin-waiting threads
    assert _turn_taking("onnx", "qwen2.5-coder-0.5b-instruct") == {"spinning": False}
    assert _turn_taking("onnx", "prompt-lookup") == {} == _turn_taking("onnx", None)
    assert _turn_taking("openvino", "qwen2.5-coder-0.5b-instruct") == {}
    assert _turn_taking("onnx", "qwen2.5-coder-0.5b-instruct+prompt-lookup") == {"spinning": False}


def test_auto_drafter_is_the_catalogues_choice():
    from qcoder_ds.engine import auto_drafter
    from qcoder_ds.models.catalogue import lookup as entry

    assert auto_drafter(entry("qwen2.5-coder-1.5b-instruct")) == "prompt-lookup"
    assert auto_drafter(entry("qwen2.5-coder-0.5b-instruct")) == "none"  # not measured to pay
    assert auto_drafter(None) == "none"  # a file or directory of one's own


def test_a_named_drafter_or_the_environment_overrides_the_catalogue(monkeypatch):
    from qcoder_ds.engine import choose_drafter
    from qcoder_ds.models.catalogue import lookup as entry

    big = entry("qwen2.5-coder-1.5b-instruct")
    monkeypatch.delenv("QCODER_DRAFTER", raising=False)
    assert choose_drafter(None, big) == choose_drafter("auto", big) == "prompt-lookup"
    assert choose_drafter("none", big) == "none"
    monkeypatch.setenv("QCODER_DRAFTER", "qwen2.5-coder-0.5b-instruct")
    assert choose_drafter(None, big) == "qwen2.5-coder-0.5b-instruct"
    assert choose_drafter("prompt-lookup", None) == "prompt-lookup"  # named beats the env
