"""Experts run straight from their blobs in the expert store: what the ONNX Runtime backend's
expert cache holds when not every expert fits.

An expert is ``y = down(SiLU(gate(x)) * up(x))``. Its blob holds gate and up as one
block-quantized matrix and down as another, in MatMulNBits' layout (int4 or int8, blocks of
32 or 64, zero points or symmetric), or fp32 matrices. ``_expert_kernel`` (C, built with the
package) computes it from those bytes as MatMulNBits' int8 path does (accuracy_level 4:
activations quantized to int8 per block, exact int32 dot products), with AVX-512 VNNI or
AVX2 where the CPU has them (fp32 activations for an export made with a lower
``accuracy_level``, as MatMulNBits does); fp32 experts are two numpy matmuls.

Why not an ONNX Runtime session per expert, as before: a session prepacks its weights when it
is built, ~2.5 ms of a ~4.5 ms miss at Qwen3-Coder-30B-A3B's expert shape, and keeps them
beside the blob, 2.4x the blob's bytes resident. From the blob a miss is a read, and a
resident expert costs its blob (benchmarks/moe_experts.py measures both sides).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qcoder_ds.errors import ModelError
from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime.expert_store import ExpertStore

try:
    from qcoder_ds.runtime import _expert_kernel
except ImportError as e:  # a source tree whose extension was never built
    _expert_kernel = None
    _IMPORT_ERROR = str(e)


def kernel_simd() -> str:
    """The instruction set the int4 kernel uses on this CPU: ``avx512-vnni``, ``avx2`` or
    ``portable``."""
    return _require().simd()


def _require():
    if _expert_kernel is None:
        raise ModelError(f"qcoder-ds's expert kernel is not built ({_IMPORT_ERROR}); "
                         f"reinstall the package (`pip install -e .` in a checkout)")
    return _expert_kernel


class BlobExpert:
    """One resident expert: its blob's arrays (views of the buffer read from the store) and
    what the kernel needs to know about them. ``recycle``, if given, gets the buffer back
    when the expert is dropped (evicted, and no thread running it)."""

    __slots__ = ("arrays", "hidden", "inter", "block", "bits", "int8_acts", "path",
                 "recycle", "buffer")

    def __init__(self, arrays: dict[str, np.ndarray], hidden: int, inter: int, weights: str,
                 block: int, accuracy_level: int = 4, simd: str = "auto"):
        self.arrays, self.hidden, self.inter = arrays, hidden, inter
        self.block = block
        # which path the kernel takes: the best this CPU has, or (tests) a lesser one
        self.path = {"auto": 0, "portable": 1, "avx2": 2}[simd]
        # MatMulNBits' levels: 4 quantizes the activations to int8, the others keep them fp32
        self.int8_acts = accuracy_level >= 4
        self.bits = {"int4": 4, "int8": 8, "fp32": 32}[weights]
        if self.bits != 32:
            _require()
        self.recycle: Callable[[np.ndarray], None] | None = None
        self.buffer: np.ndarray | None = None

    def __del__(self):
        if self.recycle is not None and self.buffer is not None:
            self.recycle(self.buffer)

    def run(self, x: np.ndarray) -> np.ndarray:
        """x [n, hidden] float32 -> [n, hidden]."""
        a = self.arrays
        x = np.ascontiguousarray(x, np.float32)
        if self.bits == 32:
            gu = x @ a["gate_up.weight_t"]
            gate, up = gu[:, :self.inter], gu[:, self.inter:]
            with np.errstate(over="ignore"):  # exp(-gate) -> inf: SiLU -> 0, as it should
                act = gate / (1.0 + np.exp(-gate)) * up
            return act @ a["down.weight_t"]
        out = np.empty_like(x)
        _expert_kernel.expert(x, out, a["gate_up.packed"], a["gate_up.scales"],
                              a.get("gate_up.zp"), a["down.packed"], a["down.scales"],
                              a.get("down.zp"), self.hidden, self.inter, self.block,
                              self.bits, self.int8_acts, self.path)
        return out


#: buffers of dropped experts kept for the next reads, at most (a fresh 2.7 MB buffer's page
#: faults cost ~1.2 ms on the VMs measured, four times the read from the page cache)
SPARE_BUFFERS = 8


class BlobExpertBuilder:
    """The expert cache's loader: (layer, expert) -> (BlobExpert, bytes it holds). A build is
    the store's read (and its sha256 check the first time), into the buffer of an expert
    dropped before where there is one."""

    def __init__(self, store: ExpertStore, cfg: ArchConfig):
        self.store, self.cfg = store, cfg
        self._spare: list[np.ndarray] = []
        q = store.quantization
        self.weights, self.block = str(q["weights"]), int(q.get("block_size") or 32)
        self.accuracy_level = int(q.get("accuracy_level", 4))
        if self.weights != "fp32":
            _require()

    def __call__(self, layer: int, expert: int) -> tuple[BlobExpert, int]:
        try:
            buf = self._spare.pop()  # atomic: the prefetch thread builds too
        except IndexError:
            buf = np.empty(self.store.blob_bytes, np.uint8)
        arrays = self.store.read(layer, expert, buf)
        ex = BlobExpert(arrays, self.cfg.hidden_size, self.cfg.moe_intermediate_size,
                        self.weights, self.block, self.accuracy_level)
        ex.buffer, ex.recycle = buf, self._give_back
        return ex, self.store.blob_bytes

    def _give_back(self, buf: np.ndarray) -> None:
        if len(self._spare) < SPARE_BUFFERS:
            self._spare.append(buf)
