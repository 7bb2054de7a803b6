"""The expert kernel (qcoder_ds/runtime/_expert_kernel.c) against ONNX Runtime's MatMulNBits on
the same blob: the same arithmetic (int8 activations per block at accuracy_level 4, fp32
below), so the same numbers to float rounding, on every path this CPU has, for every layout
the store writes; and bad buffers refused."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from qcoder_ds.runtime.expert_kernel import BlobExpert, _require, kernel_simd
from qcoder_ds.runtime.moe_onnx import expert_arrays, expert_model

# hidden, expert FFN, block, weights, symmetric, rows
CASES = [
    (2048, 768, 64, "int4", False, 1),  # Qwen3-Coder-30B-A3B's expert, decode
    (2048, 768, 64, "int4", False, 9),  # a prefill chunk: more rows than one pass of 8
    (2048, 768, 32, "int4", False, 1),
    (512, 256, 32, "int4", True, 1),  # symmetric: zero point 8
    (512, 192, 64, "int4", False, 1),  # 3 blocks of 64: a group tail, no whole group
    (96, 40, 32, "int4", False, 3),  # K not a multiple of the block: zero padded
    (64, 32, 32, "int4", False, 1),  # odd block count: zero points half a byte
    (256, 128, 32, "int8", False, 1),
    (256, 128, 64, "int8", True, 2),
]
PATHS = ["auto", "avx2", "portable"]


def _expert(hidden, inter, block, weights, symmetric, seed=0):
    rng = np.random.default_rng(seed)
    gate, up = (rng.normal(0, .05, (inter, hidden)).astype(np.float32) for _ in range(2))
    down = rng.normal(0, .05, (hidden, inter)).astype(np.float32)
    return expert_arrays(gate, up, down, weights, block, symmetric)


def _ort(arrays, hidden, inter, block, weights, level):
    quant = {"weights": weights, "block_size": block, "accuracy_level": level}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(expert_model(arrays, hidden, inter, quant), so,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("hidden,inter,block,weights,symmetric,rows", CASES)
@pytest.mark.parametrize("level", [4, 0])
def test_kernel_equals_matmulnbits(hidden, inter, block, weights, symmetric, rows, level):
    arrays = _expert(hidden, inter, block, weights, symmetric)
    x = np.random.default_rng(1).standard_normal((rows, hidden)).astype(np.float32)
    ref = _ort(arrays, hidden, inter, block, weights, level).run(None, {"x": x})[0]
    scale = np.abs(ref).max()
    got = {p: BlobExpert(arrays, hidden, inter, weights, block, level, p).run(x) for p in PATHS}
    for path, y in got.items():
        assert y.shape == ref.shape and y.dtype == np.float32
        assert np.abs(y - ref).max() <= 1e-4 * scale, (path, np.abs(y - ref).max() / scale)
    # the paths differ only in the order floats are added
    assert np.abs(got["auto"] - got["portable"]).max() <= 1e-5 * scale
    # and the int8 activations really are int8: not the fp32 answer
    if level == 4:
        exact = _ort(arrays, hidden, inter, block, weights, 0).run(None, {"x": x})[0]
        assert np.abs(got["auto"] - exact).max() > 1e-3 * scale


def test_the_fastest_path_is_used_where_the_cpu_has_it():
    import platform

    simd = kernel_simd()
    assert simd in ("avx512-vnni", "avx2", "portable")
    if platform.machine() == "x86_64":
        flags = open("/proc/cpuinfo").read().split()
        if "avx512_vnni" in flags and "avx512vl" in flags:
            assert simd == "avx512-vnni"
        elif "avx2" in flags and "fma" in flags:
            assert simd == "avx2"


def test_fp32_experts_are_numpy_matmuls():
    arrays = _expert(64, 32, 32, "fp32", False)
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    ref = _ort(arrays, 64, 32, 32, "fp32", 0).run(None, {"x": x})[0]
    got = BlobExpert(arrays, 64, 32, "fp32", 32).run(x)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_buffers_that_disagree_with_the_shape_are_refused():
    k = _require()
    a = _expert(64, 32, 32, "int4", False)
    x = np.zeros((1, 64), np.float32)
    out = np.empty_like(x)
    args = [a["gate_up.packed"], a["gate_up.scales"], a["gate_up.zp"], a["down.packed"],
            a["down.scales"], a["down.zp"]]
    with pytest.raises(ValueError, match=r"gate_up: weights do not match \[64, 64\]"):
        k.expert(x, out, *args, 64, 32, 32, 8)  # int4 bytes read as int8
    with pytest.raises(ValueError, match=r"down: weights do not match"):
        k.expert(x, out, *args[:3], a["down.packed"][:-1], *args[4:], 64, 32, 32, 4)
    with pytest.raises(ValueError, match="not rows of 64 floats"):
        k.expert(np.zeros((1, 63), np.float32), np.empty((1, 63), np.float32), *args, 64, 32,
                 32, 4)
    with pytest.raises(ValueError, match="bits 3"):
        k.expert(x, out, *args, 64, 32, 32, 3)
    with pytest.raises(TypeError):
        k.expert(x, np.empty((1, 64), np.float32)[:, ::2], *args, 64, 32, 32, 4)


def test_a_dropped_experts_buffer_is_read_into_again(tmp_path):
    """An evicted expert's buffer takes the next read (its pages are already there), and the
    expert read into it is the new one, not the old one's leftovers."""
    from qcoder_ds.models.config import ArchConfig
    from qcoder_ds.runtime.expert_kernel import BlobExpertBuilder
    from qcoder_ds.runtime.expert_store import ExpertStore, ExpertStoreWriter

    quant = {"backend": "onnx", "weights": "int4", "block_size": 32, "symmetric": False,
             "accuracy_level": 4}
    w = ExpertStoreWriter(tmp_path, 1, 3, "a" * 64, quant)
    for e in range(3):
        w.add(0, e, _expert(64, 32, 32, "int4", False, seed=e))
    w.close()
    store = ExpertStore(tmp_path, "a" * 64)
    cfg = ArchConfig("qwen3_moe", 100, 64, 0, 1, 4, 2, 16, 1e-6, 1e6, 128, False, False, True,
                     3, 1, 32, True)
    build = BlobExpertBuilder(store, cfg)
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    first, _ = build(0, 0)
    buf = first.buffer
    y0 = first.run(x)
    del first  # evicted: its buffer goes back to the builder
    second, _ = build(0, 1)
    assert second.buffer is buf
    ref = BlobExpert(_expert(64, 32, 32, "int4", False, seed=1), 64, 32, "int4", 32).run(x)
    assert np.array_equal(second.run(x), ref) and not np.array_equal(y0, ref)
    third, _ = build(0, 2)  # nothing spare while the second lives: a buffer of its own
    assert third.buffer is not buf


def test_no_rows_is_no_work():
    a = _expert(64, 32, 32, "int4", False)
    x = np.zeros((0, 64), np.float32)
    assert BlobExpert(a, 64, 32, "int4", 32).run(x).shape == (0, 64)
