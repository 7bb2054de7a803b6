"""Block quantization: layout checked against a hand-written unpacking and against ORT itself."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcoder_ds.runtime import quantize
from qcoder_ds.runtime.quantize import (
    QuantizationError,
    dequantize_blockwise,
    dequantize_openvino,
    quantize_blockwise,
    quantize_openvino,
)


def _reference_unpack(packed, scales, zero_points, n, k, bits, block):
    """Dequantize element by element, straight from the MatMulNBits spec (slow, obvious)."""
    kb = scales.shape[1]
    out = np.zeros((n, kb * block), np.float32)
    for r in range(n):
        for b in range(kb):
            if zero_points is None:
                zp = 1 << (bits - 1)
            elif bits == 4:
                byte = zero_points[r, b // 2]
                zp = (byte >> 4) if b % 2 else (byte & 0xF)
            else:
                zp = zero_points[r, b]
            for j in range(block):
                if bits == 4:
                    byte = packed[r, b, j // 2]
                    q = (byte >> 4) if j % 2 else (byte & 0xF)
                else:
                    q = packed[r, b, j]
                out[r, b * block + j] = (float(q) - float(zp)) * scales[r, b]
    return out[:, :k]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_layout_matches_spec_and_error_is_small(bits, symmetric):
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (6, 80)).astype(np.float32)  # 80 = 2.5 blocks: padding path
    qw = quantize_blockwise(w, bits=bits, block_size=32, symmetric=symmetric)
    assert qw.packed.shape == (6, 3, 32 * bits // 8)
    assert qw.scales.shape == (6, 3)
    ref = _reference_unpack(qw.packed, qw.scales, qw.zero_points, 6, 80, bits, 32)
    np.testing.assert_allclose(dequantize_blockwise(qw), ref, rtol=0, atol=1e-7)
    # error bounded by half a step of each block (symmetric: the side opposite the extreme
    # value can clip by up to one step, as in ORT's own quantizer)
    step = np.repeat(np.abs(qw.scales), 32, axis=1)[:, :80]
    assert np.all(np.abs(ref - w) <= step * (1.0 if symmetric else 0.5) + 1e-6)
    # and nothing like zero: quantization must actually track the weights
    assert np.corrcoef(ref.ravel(), w.ravel())[0, 1] > (0.99 if bits == 4 else 0.9999)


def test_zero_block_and_exact_values():
    w = np.zeros((2, 32), np.float32)
    w[1, :16] = 1.0
    qw = quantize_blockwise(w, bits=4)
    np.testing.assert_array_equal(dequantize_blockwise(qw), w)


def _matmulnbits_model(qw, accuracy_level):
    k, n = qw.k, qw.n
    inits = [
        numpy_helper.from_array(qw.packed, "B"),
        numpy_helper.from_array(qw.scales.reshape(-1), "scales"),
    ]
    ins = ["A", "B", "scales"]
    if qw.zero_points is not None:
        inits.append(numpy_helper.from_array(qw.zero_points.reshape(-1), "zp"))
        ins.append("zp")
    node = helper.make_node(
        "MatMulNBits", ins, ["Y"], domain="com.microsoft", K=k, N=n, bits=qw.bits,
        block_size=qw.block_size, accuracy_level=accuracy_level,
    )
    graph = helper.make_graph(
        [node], "mm", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])], inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_ort_matmulnbits_reads_our_packing(bits, symmetric):
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, (48, 96)).astype(np.float32)
    a = rng.normal(0, 1, (3, 96)).astype(np.float32)
    qw = quantize_blockwise(w, bits=bits, symmetric=symmetric)
    expect = a @ dequantize_blockwise(qw).T
    got = _matmulnbits_model(qw, accuracy_level=0).run(None, {"A": a})[0]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    # int8 activations: close, not exact
    got4 = _matmulnbits_model(qw, accuracy_level=4).run(None, {"A": a})[0]
    assert np.abs(got4 - expect).max() < 0.02 * np.abs(expect).max()


def test_ort_gather_block_quantized_reads_our_packing():
    rng = np.random.default_rng(2)
    table = rng.normal(0, 0.05, (10, 64)).astype(np.float32)
    qw = quantize_blockwise(table, bits=8)
    node = helper.make_node(
        "GatherBlockQuantized", ["data", "ids", "scales", "zp"], ["out"],
        domain="com.microsoft", bits=8, block_size=32, gather_axis=0, quantize_axis=1,
    )
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 64])],
        [numpy_helper.from_array(qw.packed.reshape(10, 64), "data"),
         numpy_helper.from_array(qw.scales, "scales"),
         numpy_helper.from_array(qw.zero_points, "zp")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([3, 0, 9], np.int64)
    got = sess.run(None, {"ids": ids})[0]
    np.testing.assert_allclose(got, dequantize_blockwise(qw)[ids], rtol=0, atol=1e-7)


def test_bad_inputs_are_clear():
    with pytest.raises(QuantizationError, match="2-D"):
        quantize_blockwise(np.zeros(32, np.float32))
    with pytest.raises(QuantizationError, match="bits"):
        quantize_blockwise(np.zeros((1, 32), np.float32), bits=3)
    with pytest.raises(QuantizationError, match="block_size"):
        quantize_blockwise(np.zeros((1, 32), np.float32), block_size=24)
    bad = np.zeros((1, 32), np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(QuantizationError, match="NaN"):
        quantize_blockwise(bad)


def _fixed_matrix() -> np.ndarray:
    """Seeded weights plus the awkward blocks: all zero, constant, all on one side of 0, one
    outlier, values below float16's range; 41 rows, so OpenVINO's u4 zero points (3 groups
    per row) are packed across rows."""
    w = np.random.default_rng(17).normal(0, 0.05, (41, 96)).astype(np.float32)
    w[0, :32] = 0.0
    w[1] = 0.25
    w[2] = np.linspace(0.5, 0.6, 96)
    w[3, 40] = 3.0
    w[4] = -np.linspace(0.5, 0.6, 96)
    w[5, :32] = 1e-30
    return w


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


#: sha256 of (packed, scales, zero points) computed by the code before the two quantizers
#: became one (ORT's quantize_blockwise; openvino_graph's quantize_int4 / quantize_int4_sym /
#: quantize_int8 with its _pack_u4): exports must stay bit-identical, or caches go stale
ORT_DIGESTS = [
    (4, False, 96, "7956beb731835051a8b999d355d1a1b70f9562dc38133c0c8cd555498d76b273"),
    (4, False, 80, "ca8288f9b8b0823863d617895053386a5df44f20ea9f47083996de3c00ac9f7b"),
    (4, True, 96, "c13e6f409a2ae8ad44b42d83e0f59bdcc1d302fa6fd3daa7aaab39b9feb1157a"),
    (4, True, 80, "0bd2e7f63e4bb5366a73f569aa93015f8b1bcb0f840b5b63ffc84ec04bb25e51"),
    (8, False, 96, "2ffdd4a4a0a5a876accd66559655ef1956406e85d94d41d1ff6a9865c4729544"),
    (8, False, 80, "593a1fd68361e016dad0b9e1b8d0dab546dd8e023f6301c7c17547ae48e15c4d"),
    (8, True, 96, "8ff3dbd873dbabf259933ddad176ab52d98dfd48b71d7d50cdef9c300ab2d12e"),
    (8, True, 80, "587084a8d9e535d70719b5996356deaca35bbf8996dc26d3532c369f0a416556"),
]
OPENVINO_DIGESTS = [
    (4, False, "38925ff745705230bd87d6dbf48436ad986ee912e47365e1505e1525dccbf26f"),
    (4, True, "d7ca2ef72593f3c63c7cd82b379924a60f794a436161d96c8477c383ec4c7375"),
    (8, False, "fd6f3ebd7e2373fb42b23ae75b7eddc3267fedc7f749cc6e00eff93bdb00e9dc"),
]


@pytest.mark.parametrize(("bits", "symmetric", "k", "digest"), ORT_DIGESTS)
def test_ort_bytes_are_those_of_the_old_quantizer(bits, symmetric, k, digest):
    qw = quantize_blockwise(_fixed_matrix()[:, :k], bits=bits, block_size=32,
                            symmetric=symmetric)
    assert _digest(qw.packed, qw.scales, qw.zero_points) == digest


@pytest.mark.parametrize(("bits", "symmetric", "digest"), OPENVINO_DIGESTS)
def test_openvino_bytes_are_those_of_the_old_quantizer(bits, symmetric, digest):
    qw = quantize_openvino(_fixed_matrix(), bits=bits, group=32, symmetric=symmetric)
    assert _digest(qw.q, qw.scale, qw.zero_point) == digest


def test_openvino_levels_round_trip_within_half_a_step():
    w = np.random.default_rng(0).normal(0, 0.05, (48, 96)).astype(np.float32)
    qw = quantize_openvino(w, 4, 32, symmetric=False)
    assert (qw.element, qw.shape, qw.scale.shape) == ("u4", (48, 3, 32), (48, 3, 1))
    assert qw.scale.dtype == np.float16 and qw.q.nbytes == 48 * 96 // 2
    step = np.repeat(qw.scale.astype(np.float32), 32, axis=-1).reshape(w.shape)
    assert np.all(np.abs(dequantize_openvino(qw) - w) <= step * 0.5 + 1e-6)
    qs = quantize_openvino(w, 4, 32, symmetric=True)
    assert qs.element == "i4" and qs.zero_point is None
    steps = np.repeat(np.abs(qs.scale.astype(np.float32)), 32, axis=-1).reshape(w.shape)
    back = dequantize_openvino(qs)
    # each group's largest weight uses the 16th level (-8) and comes back within half a step;
    # a weight opposite it may round to +8 and be clipped to 7: within one step
    peak = np.abs(back.reshape(48, 3, 32)).max(axis=-1)
    np.testing.assert_allclose(peak, 8 * np.abs(qs.scale[..., 0].astype(np.float32)))
    assert np.all(np.abs(back - w) <= steps + 1e-6)
    q8 = quantize_openvino(w, 8)
    assert (q8.element, q8.q.shape, q8.scale.shape) == ("u8", (48, 96), (48, 1))
    assert np.all(np.abs(dequantize_openvino(q8) - w) <= q8.scale.astype(np.float32) * 0.5
                  + 1e-6)
    # a constant group, and a group all on one side of 0, still round-trip
    for row in (np.full(32, 0.25), np.full(32, -3.0), np.linspace(0.5, 0.6, 32)):
        qr = quantize_openvino(row[None].astype(np.float32), 4, 32)
        err = np.abs(dequantize_openvino(qr).ravel() - row).max()
        assert err <= qr.scale.astype(np.float32).max() * 0.5 + 1e-6
    with pytest.raises(QuantizationError, match="divisible by 32"):
        quantize_openvino(np.zeros((4, 40), np.float32), 4, 32)


def test_row_chunks_give_the_same_bytes(monkeypatch):
    """A 150k-row vocabulary matrix is quantized in chunks; chunking must not change a byte."""
    w = _fixed_matrix()
    whole = [quantize_blockwise(w, 4), quantize_openvino(w, 4, 32, True), quantize_openvino(w, 8)]
    monkeypatch.setattr(quantize, "_ROW_CHUNK", 7)
    chunked = [quantize_blockwise(w, 4), quantize_openvino(w, 4, 32, True),
               quantize_openvino(w, 8)]
    assert _digest(whole[0].packed, whole[0].scales, whole[0].zero_points) == _digest(
        chunked[0].packed, chunked[0].scales, chunked[0].zero_points)
    for a, b in zip(whole[1:], chunked[1:], strict=True):
        assert _digest(a.q, a.scale, a.zero_point) == _digest(b.q, b.scale, b.zero_point)
