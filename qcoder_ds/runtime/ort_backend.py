"""ONNX Runtime backend: export a checkpoint to ONNX, and run it with an in-place KV cache.

``export_onnx`` writes ``model.onnx`` + ``model.onnx.data`` + ``config.json`` into a
temporary sibling folder and renames it into place only when complete, so an interrupted
export never leaves a half-written model where the cache would find it.

``OrtDecoderSession`` keeps each layer's KV cache as one preallocated OrtValue of
``max_context`` positions, bound (IOBinding) both as the layer's past input and its present
output: GroupQueryAttention appends the new keys/values in place, and nothing is copied
between steps. The same graph does prefill (any chunk length), one-token decode, and scoring
a speculative draft (``logits_to_keep`` = k + 1, bound only for that call). Rewinding the cache
is free: rows past ``position`` are never read, and the next step overwrites them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qcoder_ds.errors import ContextLengthError, ModelError, QcoderError
from qcoder_ds.models.checkpoint import Checkpoint
from qcoder_ds.models.config import ArchConfig
from qcoder_ds.runtime.backend import DecoderSession
from qcoder_ds.runtime.onnx_graph import (  # noqa: F401  (EXPORTER_VERSION: the cache key)
    DATA_FILE,
    EXPORTER_VERSION,
    OnnxExportOptions,
    build_decoder,
    save_model,
)

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"
#: KV capacity when the caller does not ask for one: 4096 positions of Qwen2.5-0.5B's cache
#: take 96 MiB (fp32); the model's full 32k window would take 768 MiB.
DEFAULT_MAX_CONTEXT = 4096
#: at most this much memory for all prompt caches together (``DecoderSession.prefix_slots``;
#: each allocated only when a prompt needs it): three for the 0.5B and 1.5B models at 4096
#: positions (96 and 224 MiB each), a single one for a model whose cache is larger
CACHE_BYTES = 768 << 20
MAX_PREFIX_SLOTS = 3
#: int4 block of a mixture-of-experts export: 4.56 bits per weight with its fp32 scales and
#: zero points, Q4_0's 4.5, against 5.1 at 32. Measured at Qwen3-Coder-30B-A3B's expert shape
#: (benchmarks/results/moe-cold-b64.json against -b32.json): 21% faster fully resident
#: decode, ~30% cheaper expert builds
#: and 11% more experts in the same budget; the price is fidelity (on the dense 1.5B, KL from
#: the fp32 weights 0.058 against 0.042). Dense exports keep 32, the block their copilot
#: figures were measured with.
MOE_BLOCK_SIZE = 64  # when hidden and expert FFN sizes are multiples of it, else 32


def moe_block_size(cfg: ArchConfig) -> int:
    """The int4/int8 block of a MoE export: MOE_BLOCK_SIZE where the hidden and expert FFN
    sizes are multiples of it (QMoE wants whole blocks), else 32."""
    whole = not (cfg.hidden_size % MOE_BLOCK_SIZE or cfg.moe_intermediate_size % MOE_BLOCK_SIZE)
    return MOE_BLOCK_SIZE if whole else 32


def export_onnx(ckpt: Checkpoint, out_dir: Path, weights: str = "int4", progress: bool = True,
                **options) -> None:
    """Export ``ckpt`` to ``out_dir`` (model.onnx, model.onnx.data, config.json).

    ``options`` are further ``OnnxExportOptions`` fields (block_size, symmetric,
    accuracy_level, lm_head, embeddings). An existing ``out_dir`` is replaced atomically.
    """
    cfg = ckpt.config
    if cfg.num_experts:
        options.setdefault("block_size", moe_block_size(cfg))
    opts = OnnxExportOptions(weights=weights, **options)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        meta = {**ckpt.config.to_dict(), "export": {"backend": "onnx", **opts.to_dict()}}
        if ckpt.config.num_experts:  # dense graphs per layer + an expert store
            from qcoder_ds.runtime.moe_ort import export_moe_onnx

            meta["moe"] = export_moe_onnx(ckpt, tmp, opts, progress=progress)
        else:
            with open(tmp / DATA_FILE, "wb") as data:
                model = build_decoder(ckpt.config, ckpt.tensor, data, opts, progress=progress)
            save_model(model, tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _config_from_dict(d: dict) -> ArchConfig:
    fields = ArchConfig.__dataclass_fields__
    return ArchConfig(**{k: v for k, v in d.items() if k in fields})


def load_onnx(out_dir: Path, threads: int | None = None, max_context: int | None = None,
              spinning: bool | None = None, **moe_options) -> DecoderSession:
    """Open an export made by ``export_onnx``; ``threads`` defaults to the usable CPU cores.

    ``spinning=False`` makes the session's idle threads sleep instead of spin-waiting for the
    next op: needed where two sessions take turns on the same cores (a speculative drafter and
    its target), since each one's spinning threads would take the cores from the other. On a
    loaded 2-core machine this took the 0.5B drafter's step from ~55 ms to ~17 ms.

    A mixture-of-experts export loads as a MoE session; ``moe_options`` (``expert_ram``,
    ``policy``, ``prefetch``, ``trace``) go to ``moe_ort.load_moe_onnx`` and are refused for
    a dense model."""
    out_dir = Path(out_dir)
    meta = _read_meta(out_dir)
    if meta.get("moe"):
        from qcoder_ds.runtime.moe_ort import load_moe_onnx

        return load_moe_onnx(out_dir, meta, threads or _default_threads(), max_context,
                             spinning, **moe_options)
    if moe_options:
        raise QcoderError(f"{', '.join(sorted(moe_options))}: only for a mixture-of-experts "
                          f"model, and {out_dir} is a dense export")
    spinning = True if spinning is None else spinning
    for f in (MODEL_FILE, DATA_FILE):
        if not (out_dir / f).is_file():
            raise ModelError(f"{out_dir}: no {f}; not a complete ONNX export "
                             f"(run `qcoder export MODEL --backend onnx` again)")
    cfg = _config_from_dict(meta)
    return OrtDecoderSession(out_dir / MODEL_FILE, cfg, threads or _default_threads(),
                             max_context or min(cfg.max_position_embeddings, DEFAULT_MAX_CONTEXT),
                             spinning)


def _read_meta(out_dir: Path) -> dict:
    """The export's config.json (dense or MoE)."""
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        dense = (out_dir / MODEL_FILE).is_file() or (out_dir / "layer_0.onnx").is_file()
        raise ModelError(f"{out_dir}: no {CONFIG_FILE if dense else MODEL_FILE}; "
                         f"not a complete ONNX export "
                         f"(run `qcoder export MODEL --backend onnx` again)")
    try:
        meta = json.loads(path.read_text())
        _config_from_dict(meta)
    except (ValueError, TypeError) as e:
        raise ModelError(f"{path}: unreadable export config ({e})") from None
    return meta


def decoder_options(threads: int, spinning: bool = True) -> ort.SessionOptions:
    """Session options of a whole decoder graph: ``threads`` intra-op threads, sequential."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtDecoderSession(DecoderSession):
    """A decoder on ONNX Runtime's CPU EP, batch 1, with its KV cache bound in place.

    ``model`` is the graph's file, or its serialized bytes with ``options`` that say where
    its external data is (the fully resident mixture-of-experts graph, assembled at load)."""

    def __init__(self, model: Path | bytes, cfg: ArchConfig, threads: int, max_context: int,
                 spinning: bool = True, options: ort.SessionOptions | None = None):
        if max_context > cfg.max_position_embeddings:
            raise ContextLengthError(
                f"max_context {max_context} exceeds the model's "
                f"{cfg.max_position_embeddings} positions")
        self.config = cfg
        self.max_context = max_context
        so = options or decoder_options(threads, spinning)
        what = model if isinstance(model, Path) else "the assembled model graph"
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                                so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types
            raise ModelError(f"{what}: ONNX Runtime cannot load this export ({e})") from None
        out = {o.name: o for o in self.session.get_outputs()}
        self.vocab_size = int(out["logits"].shape[-1])
        self._kv_shape = [1, cfg.num_kv_heads, max_context, cfg.head_dim]
        cache_bytes = 2 * cfg.num_layers * int(np.prod(self._kv_shape)) * 4
        self.prefix_slots = max(1, min(MAX_PREFIX_SLOTS, CACHE_BYTES // cache_bytes))
        self._caches: dict[int, list[ort.OrtValue]] = {}
        self._bind = self.session.io_binding()
        self._use_slot(0)
        self._logits = ort.OrtValue.ortvalue_from_shape_and_type([1, 1, self.vocab_size],
                                                                 np.float32)
        # exports before exporter version 3 have no logits_to_keep: they score one at a time
        self.scores_all_positions = any(i.name == "logits_to_keep"
                                        for i in self.session.get_inputs())
        self._keep_one = ort.OrtValue.ortvalue_from_numpy(np.array([1], np.int64))
        self._bind_last_only()
        self.position = 0

    def _bind_last_only(self) -> None:
        """The binding plain prefill and decode run with: one row of logits, into one buffer."""
        if self.scores_all_positions:
            self._bind.bind_ortvalue_input("logits_to_keep", self._keep_one)
        self._bind.bind_ortvalue_output("logits", self._logits)

    def _use_slot(self, slot: int) -> None:
        """Bind cache ``slot`` (allocated on first use) as every layer's past and present: the
        attention node appends to it in place."""
        if slot not in self._caches:
            self._caches[slot] = [ort.OrtValue.ortvalue_from_shape_and_type(self._kv_shape,
                                                                           np.float32)
                                  for _ in range(2 * self.config.num_layers)]
        bufs = iter(self._caches[slot])
        for i in range(self.config.num_layers):
            for kind in ("key", "value"):
                buf = next(bufs)
                self._bind.bind_ortvalue_input(f"past_key_values.{i}.{kind}", buf)
                self._bind.bind_ortvalue_output(f"present.{i}.{kind}", buf)

    def _reset(self) -> None:
        pass  # stale cache rows past `position` are never read

    def rewind(self, n: int) -> bool:
        return 0 <= n <= self.position  # the same reason: rows past `n` are overwritten

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        self._run(ids)
        return self._logits.numpy()[0, 0].copy()

    def _forward_all(self, ids: np.ndarray) -> np.ndarray:
        """Logits of every new position, bound for this call only (plain decode's binding,
        one row, is put back, so it pays nothing for this)."""
        if not self.scores_all_positions:
            return super()._forward_all(ids)
        n = ids.size
        keep = ort.OrtValue.ortvalue_from_numpy(np.array([n], np.int64))
        out = ort.OrtValue.ortvalue_from_shape_and_type([1, n, self.vocab_size], np.float32)
        self._bind.bind_ortvalue_input("logits_to_keep", keep)
        self._bind.bind_ortvalue_output("logits", out)
        try:
            self._run(ids)
        finally:
            self._bind_last_only()
        return out.numpy()[0].copy()

    def _run(self, ids: np.ndarray) -> None:
        n = ids.size
        total = self.position + n
        self._bind.bind_cpu_input("input_ids", ids.astype(np.int64).reshape(1, n))
        self._bind.bind_cpu_input("seqlens_k", np.array([total - 1], np.int32))
        self._bind.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        try:
            self.session.run_with_iobinding(self._bind)
        except Exception as e:  # ORT's own exception types; the cache up to `position` is intact
            raise QcoderError(f"ONNX Runtime failed on {n} tokens at position "
                              f"{self.position}: {e}") from None
        self.position = total
