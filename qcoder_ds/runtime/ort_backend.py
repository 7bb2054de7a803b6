"""ONNX Runtime backend: export a checkpoint to ONNX, and run it with an in-place KV cache.

``export_onnx`` writes ``model.onnx`` + ``model.onnx.data`` + ``config.json`` into a
temporary sibling folder and renames it into place only when complete, so an interrupted
export never leaves a half-written model where the cache would find it.

``load_onnx`` opens an export as an :class:`~qcoder_ds.runtime.ort_session.OrtDecoderSession`
(or, for a mixture-of-experts export, through :mod:`qcoder_ds.runtime.moe_ort`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from qcoder_ds.errors import ModelError, QcoderError
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
from qcoder_ds.runtime.ort_session import OrtDecoderSession

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"
#: KV capacity when the caller does not ask for one: 4096 positions of Qwen2.5-0.5B's cache
#: take 96 MiB (fp32); the model's full 32k window would take 768 MiB.
DEFAULT_MAX_CONTEXT = 4096
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


