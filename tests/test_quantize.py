"""Block quantization: layout checked against a hand-written unpacking and against ORT itself."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcoder_ds.runtime.quantize import (
    QuantizationError,
    dequantize_blockwise,
    quantize_blockwise,
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
