"""The OpenVINO backend: a ``DecoderSession`` over a stateful model from ``openvino_graph``.

The KV cache lives inside the compiled model (ReadValue/Assign variables that the CPU plugin
fuses into its attention node), so one call per chunk is all the Python side does. The compiled
blob is cached under ``out_dir/ov_cache`` (OpenVINO's CACHE_DIR), so a second load skips the
graph transformations: ~1.5 s instead of ~10 s for the 0.5B model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from qcoder_ds.errors import ContextLengthError, ModelError, QcoderError
from qcoder_ds.runtime.backend import DecoderSession
from qcoder_ds.runtime.openvino_graph import (  # noqa: F401  (compile_properties: API)
    CACHE_SUBDIR,
    CONFIG_JSON,
    EXPORTER_VERSION,
    MODEL_BIN,
    MODEL_XML,
    _last_line,
    _ov,
    compile_properties,
)


class OpenVINODecoderSession(DecoderSession):
    """One compiled decoder with its own KV cache, batch size 1."""

    def __init__(self, out_dir: Path, threads: int | None = None,
                 properties: dict | None = None, max_context: int | None = None):
        ov, _ = _ov()
        self.dir = Path(out_dir)
        xml = self.dir / MODEL_XML
        cfg_path = self.dir / CONFIG_JSON
        if not (xml.is_file() and (self.dir / MODEL_BIN).is_file() and cfg_path.is_file()):
            raise ModelError(f"{self.dir}: no complete OpenVINO export here (expected {MODEL_XML}, "
                             f"{MODEL_BIN}, {CONFIG_JSON}); run `qcoder export MODEL "
                             f"--backend openvino`")
        try:
            self.meta = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"{cfg_path}: unreadable export config ({e}); export again") from None
        if self.meta.get("backend") != "openvino":
            raise ModelError(f"{self.dir}: not an OpenVINO export "
                             f"(backend {self.meta.get('backend')!r})")
        if self.meta.get("exporter_version") != EXPORTER_VERSION:
            raise ModelError(f"{self.dir}: exported by exporter version "
                             f"{self.meta.get('exporter_version')}, this build reads "
                             f"{EXPORTER_VERSION}; export again")
        self.vocab_size = int(self.meta["vocab_size"])
        positions = int(self.meta["max_position_embeddings"])
        # the cache grows with use (nothing is allocated up front), so the default is the
        # model's whole window
        self.max_context = int(max_context or positions)
        if self.max_context > positions:
            raise ContextLengthError(f"max_context {self.max_context} exceeds the model's "
                                     f"{positions} positions")
        self.position = 0
        props = {**compile_properties(self.meta, threads), **(properties or {})}
        core = ov.Core()
        if os.access(self.dir, os.W_OK):  # a read-only export compiles every time instead
            # (CACHE_MODE OPTIMIZE_SIZE would keep the weights out of the blob, but in
            # OpenVINO 2026.4 a model loaded that way returned empty logits: not used)
            core.set_property({"CACHE_DIR": str(self.dir / CACHE_SUBDIR)})
        try:
            self.compiled = core.compile_model(str(xml), "CPU", props)
        except RuntimeError as e:
            raise ModelError(f"{self.dir}: OpenVINO could not compile the model: "
                             f"{_last_line(e)}") from None
        # one infer request per prompt cache: each holds its own KV state, which grows with use
        self.prefix_slots = 3
        self._requests = {0: self.compiled.create_infer_request()}
        self.request = self._requests[0]
        self._beam = np.zeros(1, np.int32)
        self._keep_one = np.ones(1, np.int64)
        self.scores_all_positions = True  # exporter version 3 has logits_to_keep

    def _use_slot(self, slot: int) -> None:
        if slot not in self._requests:
            self._requests[slot] = self.compiled.create_infer_request()
        self.request = self._requests[slot]

    def _reset(self) -> None:
        self.request.reset_state()

    def rewind(self, n: int) -> bool:
        """Cut every KV state to its first ``n`` positions (axis 2 of [1, kv_heads, seq, d])."""
        ov, _ = _ov()
        if not 0 < n <= self.position:
            return False
        for state in self.request.query_state():
            kv = state.state.data
            if kv.ndim != 4 or kv.shape[2] != self.position:
                return False
            state.state = ov.Tensor(np.ascontiguousarray(kv[:, :, :n]))
        return True

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        return self._infer(ids, self._keep_one)[-1]

    def _forward_all(self, ids: np.ndarray) -> np.ndarray:
        return self._infer(ids, np.array([ids.size], np.int64))

    def _infer(self, ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Run ``ids``; the logits of their last ``keep`` positions, [keep, vocab]."""
        n = ids.size
        pos = np.arange(self.position, self.position + n, dtype=np.int64)[None]
        self.request.infer({"input_ids": ids.astype(np.int64, copy=False)[None],
                            "position_ids": pos, "beam_idx": self._beam,
                            "logits_to_keep": keep}, share_inputs=True)
        self.position += n
        return self.request.get_output_tensor(0).data[0].copy()


def load_openvino(out_dir: Path, threads: int | None = None,
                  max_context: int | None = None, **moe_options) -> DecoderSession:
    """Load an export written by ``export_openvino`` for generation on the CPU; ``threads``
    defaults to OpenVINO's choice (the physical cores). A mixture-of-experts export loads as
    a MoE session, ``moe_options`` (``expert_ram``, ``policy``, ``prefetch``, ``trace``)
    going to ``moe_openvino.load_moe_openvino``."""
    out_dir = Path(out_dir)
    meta = _moe_meta(out_dir)
    if meta is not None:
        from qcoder_ds.runtime.moe_openvino import load_moe_openvino

        return load_moe_openvino(out_dir, meta, threads, max_context, **moe_options)
    if moe_options:
        raise QcoderError(f"{', '.join(sorted(moe_options))}: only for a mixture-of-experts "
                          f"model, and {out_dir} is a dense export")
    return OpenVINODecoderSession(out_dir, threads=threads, max_context=max_context)


def export_openvino(ckpt, out_dir: Path, weights: str = "int4", progress: bool = True,
                    **options) -> None:
    """The backend's export: a dense decoder (``openvino_graph.export_openvino``) or, for a
    mixture-of-experts model, per-layer models and an expert store
    (``moe_openvino.export_moe_openvino``); ``options`` as those take them."""
    if ckpt.config.num_experts:
        from qcoder_ds.runtime.moe_openvino import export_moe_openvino

        export_moe_openvino(ckpt, Path(out_dir), weights, progress, **options)
        return
    from qcoder_ds.runtime.openvino_graph import export_openvino as export_dense

    export_dense(ckpt, Path(out_dir), weights=weights, progress=progress, **options)


def _moe_meta(out_dir: Path) -> dict | None:
    """config.json of a MoE export (checked like a dense one's), else None."""
    try:
        meta = json.loads((out_dir / CONFIG_JSON).read_text())
    except (OSError, ValueError):
        return None  # the dense session says what is wrong
    if not isinstance(meta, dict) or not meta.get("moe"):
        return None
    if meta.get("backend") != "openvino" or meta.get("exporter_version") != EXPORTER_VERSION:
        raise ModelError(f"{out_dir}: not an OpenVINO MoE export of exporter version "
                         f"{EXPORTER_VERSION}; export again")
    return meta
