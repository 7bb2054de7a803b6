"""`qcoder export MODEL`: build (or find) the cached ONNX / OpenVINO export of a model."""

from __future__ import annotations

import argparse
import shutil
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    from qcoder_ds.runtime.export import BACKENDS, WEIGHTS

    p = subparsers.add_parser(
        "export", help="export a model to ONNX or OpenVINO (cached; later starts load it)",
        description="Export MODEL (catalogue name, GGUF file or HF directory) for a runtime. "
                    "The result is cached by source, options and exporter version.")
    p.add_argument("model", help="catalogue name, GGUF file or Hugging Face directory")
    p.add_argument("--backend", default="onnx", choices=list(BACKENDS))
    p.add_argument("--weights", default="int4", choices=list(WEIGHTS),
                   help="int4 (block-32), int8, or fp32 (for parity checks)")
    p.add_argument("--force", action="store_true", help="rebuild even if a cached export exists")
    p.add_argument("--check", action="store_true",
                   help="load the export afterwards and run one forward pass")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qcoder_ds.models.sources import resolve
    from qcoder_ds.runtime.export import ensure_export, export_dir, get_backend, is_complete

    source = resolve(args.model)
    target = export_dir(source, args.backend, args.weights)
    if args.force and target.exists():
        shutil.rmtree(target)
    cached = is_complete(target)
    out = ensure_export(source, args.backend, args.weights, progress=True)
    if cached:
        print(f"already exported (cached): {out}", file=sys.stderr)
    if args.check:
        import numpy as np

        t = time.perf_counter()
        session = get_backend(args.backend).load(out, None)
        load_s = time.perf_counter() - t
        session.reset()
        logits = session.forward(np.array([1, 2, 3], dtype=np.int64))
        if logits.shape != (session.vocab_size,) or not np.isfinite(logits).all():
            print(f"check failed: logits {logits.shape}, finite={np.isfinite(logits).all()}",
                  file=sys.stderr)
            return 1
        print(f"check ok: loaded in {load_s:.1f} s, context {session.max_context} tokens",
              file=sys.stderr)
    print(out)
    return 0
