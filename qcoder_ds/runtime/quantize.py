"""Block-wise weight quantization in the exact layouts ONNX Runtime's contrib ops read.

``MatMulNBits`` (the int4/int8 linear layers) and ``GatherBlockQuantized`` (the quantized
embedding table) both take a weight ``W`` of shape ``[N, K]`` (Hugging Face ``[out, in]``
layout) cut into blocks of ``block_size`` along K, each block with its own scale and
(optionally) zero point:  ``w = (q - zero_point) * scale``.

Packing, as ORT's kernels expect it:

- ``packed``: uint8 ``[N, k_blocks, block_size * bits / 8]``; for 4 bits, element ``2i`` of a
  block sits in the low nibble of byte ``i`` and element ``2i+1`` in the high nibble.
- ``scales``: float32 ``[N, k_blocks]``.
- ``zero_points``: uint8 ``[N, ceil(k_blocks * bits / 8)]`` packed like the weights, or ``None``
  for symmetric quantization (ORT then uses ``2**(bits-1)``: 8 for int4, 128 for int8).

K that is not a multiple of the block size is zero-padded up to one (ORT does the same).
Work is done in row chunks so a 150k x 896 vocabulary matrix never needs several full-size
float32 temporaries at once.

OpenVINO's exports use the same quantizer (:func:`quantize_openvino`): scales rounded up to
float16, and the bytes laid out as its u4/i4/u8 constants want them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcoder_ds.errors import QcoderError

#: rows quantized at a time, to bound the float32 temporaries
_ROW_CHUNK = 8192


class QuantizationError(QcoderError):
    """A weight cannot be quantized with the requested settings."""


@dataclass(frozen=True)
class BlockQuantized:
    """One weight matrix quantized block-wise along K (see the module docstring for layout)."""

    packed: np.ndarray  # uint8 [N, k_blocks, blob_size]
    scales: np.ndarray  # float32 [N, k_blocks] (float16 when made for OpenVINO)
    zero_points: np.ndarray | None  # uint8 [N, ceil(k_blocks * bits / 8)] or None (symmetric)
    n: int
    k: int
    bits: int
    block_size: int

    @property
    def k_blocks(self) -> int:
        return self.packed.shape[1]

    @property
    def nbytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.nbytes
        return self.packed.nbytes + self.scales.nbytes + zp


def _check(w: np.ndarray, bits: int, block_size: int) -> None:
    if w.ndim != 2:
        raise QuantizationError(f"expected a 2-D weight [N, K], got shape {w.shape}")
    if bits not in (4, 8):
        raise QuantizationError(f"bits must be 4 or 8, not {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise QuantizationError(f"block_size must be a power of two >= 16, not {block_size}")
    if not np.all(np.isfinite(w)):
        raise QuantizationError("weight holds NaN or infinite values; the checkpoint is corrupt")


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Pack uint8 values < 16 along the last axis, two per byte, low nibble first."""
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(p: np.ndarray, count: int) -> np.ndarray:
    out = np.empty(p.shape[:-1] + (p.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = p & 0x0F
    out[..., 1::2] = p >> 4
    return out[..., :count]


def f16_round_up(scale: np.ndarray) -> np.ndarray:
    """Non-negative scales as float16, rounded up, never down: a scale rounded down would push
    the extreme weights of a block past the last level, where they are clipped by more than
    half a step. A zero scale (a constant block) becomes 1.0: any scale restores it exactly."""
    s16 = scale.astype(np.float16)
    low = s16.astype(np.float32) < scale
    s16[low] = np.nextafter(s16[low], np.float16(np.inf))
    s16[s16 == 0] = np.float16(1.0)
    return s16


def _quantize_rows(
    w: np.ndarray, bits: int, block_size: int, symmetric: bool, f16_scales: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantize rows of w (already padded to a multiple of block_size) -> (q, scales, zp).

    The one quantization formula of both backends; ``f16_scales`` rounds each scale up to
    float16 (OpenVINO stores f16 scales) before the levels are computed from it, so the
    stored pair is self-consistent."""
    n, k = w.shape
    blocks = w.reshape(n, k // block_size, block_size)
    qmax = (1 << bits) - 1
    if symmetric:
        mid = 1 << (bits - 1)
        # the signed value of largest magnitude maps to -mid exactly (ORT's own convention),
        # which uses the full [-mid, mid-1] range
        idx = np.abs(blocks).argmax(axis=-1)[..., None]
        extreme = np.take_along_axis(blocks, idx, axis=-1)[..., 0]
        scales = (extreme / -mid).astype(np.float32)
        if f16_scales:
            mag = f16_round_up(np.abs(extreme) / mid)
            scales = np.where(extreme > 0, -mag, mag).astype(np.float16)
        safe = np.where(scales == 0, 1.0, scales).astype(np.float32)
        q = np.clip(np.rint(blocks / safe[..., None]) + mid, 0, qmax).astype(np.uint8)
        return q.reshape(n, k), scales, None
    lo = np.minimum(blocks.min(axis=-1), 0.0)  # keep 0.0 exactly representable
    hi = np.maximum(blocks.max(axis=-1), 0.0)
    scales = ((hi - lo) / qmax).astype(np.float32)
    if f16_scales:
        scales = f16_round_up(scales)
    safe = np.where(scales == 0, 1.0, scales).astype(np.float32)
    zp = np.clip(np.rint(-lo / safe), 0, qmax).astype(np.uint8)
    q = np.clip(np.rint(blocks / safe[..., None]) + zp[..., None], 0, qmax).astype(np.uint8)
    return q.reshape(n, k), scales, zp


def quantize_blockwise(
    w: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = False
) -> BlockQuantized:
    """Quantize ``w`` ``[N, K]`` for MatMulNBits / GatherBlockQuantized.

    Asymmetric (with zero points) is the default: it keeps more precision for weights whose
    blocks are not centred on zero, at a negligible cost in bytes.
    """
    w = np.asarray(w)
    _check(w, bits, block_size)
    return _quantize(w, bits, block_size, symmetric, f16_scales=False)


def _quantize(w: np.ndarray, bits: int, block_size: int, symmetric: bool,
              f16_scales: bool) -> BlockQuantized:
    """Quantize in row chunks into ORT's packed layout (any block size; callers check it)."""
    n, k = w.shape
    k_blocks = -(-k // block_size)
    kp = k_blocks * block_size
    packed = np.empty((n, k_blocks, block_size * bits // 8), np.uint8)
    scales = np.empty((n, k_blocks), np.float16 if f16_scales else np.float32)
    zps = None if symmetric else np.empty((n, -(-k_blocks * bits // 8)), np.uint8)
    for r0 in range(0, n, _ROW_CHUNK):
        r1 = min(n, r0 + _ROW_CHUNK)
        rows = w[r0:r1].astype(np.float32, copy=False)
        if kp != k:
            rows = np.pad(rows, ((0, 0), (0, kp - k)))
        q, s, z = _quantize_rows(rows, bits, block_size, symmetric, f16_scales)
        scales[r0:r1] = s
        q = q.reshape(r1 - r0, k_blocks, block_size)
        packed[r0:r1] = _pack_nibbles(q) if bits == 4 else q
        if zps is not None:
            zps[r0:r1] = _pack_nibbles(z) if bits == 4 else z
    return BlockQuantized(packed, scales, zps, n, k, bits, block_size)


@dataclass(frozen=True)
class OpenVINOWeight:
    """One matrix as OpenVINO's compressed constants hold it: ``(q - zero_point) * scale``."""

    element: str  # "u4", "i4" (two's complement nibbles, no zero point) or "u8"
    shape: tuple[int, ...]  # of the q constant: [N, G, group] (4 bits) or [N, K] (8 bits)
    q: np.ndarray  # 4 bits: uint8, two per byte, low nibble first; 8 bits: uint8 [N, K]
    scale: np.ndarray  # float16 [N, G, 1] (4 bits) or [N, 1] (8 bits)
    zero_point: np.ndarray | None  # shaped like scale: u4 packed flat, or uint8; None for i4


def quantize_openvino(w: np.ndarray, bits: int = 4, group: int = 32,
                      symmetric: bool = False) -> OpenVINOWeight:
    """Quantize ``w`` [out, in] for OpenVINO: 4 bits per group of ``group`` inputs (symmetric:
    i4 like llama.cpp's Q4_0, else u4 with u4 zero points), 8 bits per row with zero points.

    The same formula and block layout as :func:`quantize_blockwise` with f16 scales; only the
    bytes are laid out differently (:func:`_openvino_layout`)."""
    w = np.asarray(w)
    n, k = w.shape
    if bits == 4 and k % group:
        raise QuantizationError(f"int4 needs in_features divisible by {group}, got {k}")
    if bits == 8:
        group, symmetric = k, False
    return _openvino_layout(_quantize(w, bits, group, symmetric, f16_scales=True))


def _openvino_layout(qw: BlockQuantized) -> OpenVINOWeight:
    """ORT's packing -> OpenVINO's: 4-bit levels are packed alike (blocks hold an even number
    of values); i4 stores ``q - 8`` (flip bit 3 of each nibble); u4 zero points are packed
    across rows, not per row."""
    n, kb = qw.scales.shape
    if qw.bits == 8:
        zp = qw.zero_points[:, :kb]
        return OpenVINOWeight("u8", (n, qw.k), qw.packed.reshape(n, qw.k), qw.scales, zp)
    shape = (n, kb, qw.block_size)
    scale = qw.scales[..., None]
    if qw.zero_points is None:
        return OpenVINOWeight("i4", shape, qw.packed.reshape(-1) ^ np.uint8(0x88), scale, None)
    zp = _pack_nibbles(_unpack_nibbles(qw.zero_points, kb).reshape(-1))
    return OpenVINOWeight("u4", shape, qw.packed.reshape(-1), scale, zp)


def dequantize_blockwise(qw: BlockQuantized) -> np.ndarray:
    """The float32 ``[N, K]`` matrix that ORT computes with (for tests and error figures)."""
    n, kb, bs = qw.n, qw.k_blocks, qw.block_size
    q = _unpack_nibbles(qw.packed, bs) if qw.bits == 4 else qw.packed
    if qw.zero_points is None:
        zp = np.full((n, kb), 1 << (qw.bits - 1), np.float32)
    elif qw.bits == 4:
        zp = _unpack_nibbles(qw.zero_points, kb).astype(np.float32)
    else:
        zp = qw.zero_points[:, :kb].astype(np.float32)
    w = (q.astype(np.float32) - zp[..., None]) * qw.scales[..., None]
    return w.reshape(n, kb * bs)[:, : qw.k]


def dequantize_openvino(qw: OpenVINOWeight) -> np.ndarray:
    """The float32 [out, in] matrix OpenVINO's decompression chain computes (for tests)."""
    scale = qw.scale.astype(np.float32)
    if qw.element == "u8":
        return (qw.q.astype(np.float32) - qw.zero_point) * scale
    count = int(np.prod(qw.shape))
    q = _unpack_nibbles(qw.q, count).reshape(qw.shape).astype(np.float32)
    if qw.element == "i4":
        q = (q.astype(np.uint8) ^ 8).astype(np.float32) - 8  # two's complement nibbles
    else:
        q -= _unpack_nibbles(qw.zero_point, scale.size).reshape(scale.shape)
    return (q * scale).reshape(qw.shape[0], -1)
