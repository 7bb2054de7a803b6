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
