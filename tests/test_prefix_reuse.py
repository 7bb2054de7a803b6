"""Prefix reuse in the KV cache, the same on every backend: a prompt that starts like the
cached tokens prefills only its new part, and the logits equal a fresh prefill's."""

import numpy as np
import pytest

from qcoder_ds.models.checkpoint import HFCheckpoint

PROMPT = [5, 17, 301, 42, 7, 88, 150, 3, 499, 260, 61, 12]


def _ort(hf, out):
    from qcoder_ds.runtime.ort_backend import export_onnx, load_onnx

    export_onnx(HFCheckpoint(hf), out, weights="fp32", progress=False)
    return load_onnx(out)


def _openvino(hf, out):
    pytest.importorskip("openvino")
    from qcoder_ds.runtime.openvino_backend import load_openvino
    from qcoder_ds.runtime.openvino_graph import export_openvino

    export_openvino(HFCheckpoint(hf), out, weights="fp32", progress=False)
    return load_openvino(out, threads=1)


@pytest.mark.parametrize("load", [_ort, _openvino], ids=["onnx", "openvino"])
def test_fp32_prefix_reuse_matches_a_fresh_prefill(tiny_dir, tmp_path, load):
    from tiny_models import reference_logits

    hf = tiny_dir("qwen2")
    s = load(hf, tmp_path / "export")
    first, second = PROMPT + [9, 400, 33], PROMPT + [77, 128]
    s.forward(np.array(first))
    assert s.cached_ids == first
    kept = s.reuse_prefix(np.array(second))
    assert kept == len(PROMPT) and s.position == len(PROMPT)
    got = s.forward(np.array(second[kept:]))
    ref = reference_logits(hf, second)
    assert np.abs(got - ref[-1]).max() <= 1e-3
    # the same prompt again: all but its last token are kept, and that one is run again
    assert s.reuse_prefix(np.array(second)) == len(second) - 1
    assert np.abs(s.forward(np.array(second[-1:])) - ref[-1]).max() <= 1e-3
    # a different first token: nothing is kept
    assert s.reuse_prefix(np.array([1] + PROMPT)) == 0 and s.position == 0
    assert np.abs(s.forward(np.array(PROMPT)) - reference_logits(hf, PROMPT)[-1]).max() <= 1e-3


@pytest.mark.parametrize("load", [_ort, _openvino], ids=["onnx", "openvino"])
def test_interleaved_prompts_each_keep_their_cache(tiny_dir, tmp_path, load):
    """Three prompts that start differently (a notebook's pandas, plot and SQL requests) each
    keep their cache; a fourth evicts the least recently used; logits stay exact."""
    from tiny_models import reference_logits

    hf = tiny_dir("qwen2")
    s = load(hf, tmp_path / "export")
    assert s.prefix_slots == 3
    a, b, c, d = ([k] + PROMPT for k in (100, 200, 300, 400))
    for prompt in (a, b, c):
        assert s.reuse_prefix(np.array(prompt)) == 0
        s.forward(np.array(prompt))
    for prompt in (a, b, c):  # each one found again, all but its new tokens kept
        longer = prompt + [9, 33]
        kept = s.reuse_prefix(np.array(longer))
        assert kept == len(prompt)
        got = s.forward(np.array(longer[kept:]))
        assert np.abs(got - reference_logits(hf, longer)[-1]).max() <= 1e-3
    assert s.reuse_prefix(np.array(d)) == 0  # a fourth kind evicts a's cache, the oldest
    s.forward(np.array(d))
    assert s.reuse_prefix(np.array(a + [5])) == 0
    s.forward(np.array(a + [5]))
    kept = s.reuse_prefix(np.array(c + [9, 33, 7]))  # c was used after b: still there
    assert kept == len(c) + 2
    got = s.forward(np.array([7]))
    assert np.abs(got - reference_logits(hf, c + [9, 33, 7])[-1]).max() <= 1e-3


def test_a_short_shared_start_does_not_take_over_a_cache():
    """Prompts sharing only the chat template's first tokens go to separate caches."""
    from test_generate import ScriptedSession

    class Slotted(ScriptedSession):
        prefix_slots = 2

        def _use_slot(self, slot):
            self.slots_used.append(slot)

        def rewind(self, n):
            return True

    s = Slotted([], max_context=512)
    s.slots_used = []
    long_a = list(range(1, 200))
    s.forward(np.array(long_a))
    other = long_a[:10] + [7] * 150  # 10 shared tokens of 199: not worth a's cache
    assert s.reuse_prefix(np.array(other)) == 0 and s.slots_used == [1]
    s.forward(np.array(other))
    assert s.reuse_prefix(np.array(long_a + [3])) == len(long_a) and s.slots_used == [1, 0]


def test_a_backend_claiming_caches_it_cannot_switch_is_told_so():
    from test_generate import ScriptedSession

    from qcoder_ds.errors import QcoderError

    class Claims(ScriptedSession):
        prefix_slots = 2

    s = Claims([], max_context=512)
    s.forward(np.array(list(range(1, 100))))
    with pytest.raises(QcoderError, match="prefix_slots = 2 but has no _use_slot"):
        s.reuse_prefix(np.array([7] * 50))
