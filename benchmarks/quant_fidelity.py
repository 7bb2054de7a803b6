"""How far each int4 layout strays from the model's own weights: the embedded model's fp32
export (the GGUF's weights dequantized) against int4 exports in blocks of 32 (the default,
5.1 bits per weight with fp32 scales and zero points) and 64 (4.56 bits, Q4_0's 4.5), with
and without zero points.

Teacher-forced on three texts of this repository (Python, Markdown, a notebook's JSON), 512
tokens each, every position scored: the share of positions whose top token is the fp32
export's, the mean KL divergence from the fp32 distribution, and the mean negative
log-likelihood of the text itself. Why blocks of 64 are the MoE default but not the dense one:
docs/runtime.md.

    python benchmarks/quant_fidelity.py [--model qwen2.5-coder-1.5b-instruct]
      -> benchmarks/results/quant-fidelity-1.5b.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from decode import _default_gguf, _gguf_source  # noqa: E402

TEXTS = ["qcoder_ds/copilot/checks.py", "docs/copilot.md", "examples/copilot.ipynb"]
VARIANTS = {  # name: OnnxExportOptions fields
    "int4 b32 (default)": {"weights": "int4"},
    "int4 b32 symmetric": {"weights": "int4", "symmetric": True},
    "int4 b64": {"weights": "int4", "block_size": 64},
    "int4 b64 symmetric": {"weights": "int4", "block_size": 64, "symmetric": True},
}


def _export(gguf: Path, name: str, options: dict) -> Path:
    from qcoder_ds.paths import home
    from qcoder_ds.runtime.ort_backend import export_onnx

    out = home() / "bench" / f"{gguf.stem}-fidelity-{name}"
    if not (out / "config.json").is_file():
        opts = dict(options)
        export_onnx(_gguf_source(gguf).checkpoint(), out, opts.pop("weights"), progress=False,
                    **opts)
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from qcoder_ds.runtime.ort_backend import load_onnx

    gguf = _default_gguf(args.model)
    tok = _gguf_source(gguf).tokenizer()
    seqs = []
    for rel in TEXTS:
        ids = tok.encode((HERE.parent / rel).read_text())
        seqs.append(np.array(getattr(ids, "ids", ids)[:args.tokens], dtype=np.int64))

    def scores(path: Path) -> list[np.ndarray]:
        s = load_onnx(path, threads=2, max_context=2 * args.tokens)
        out = []
        for ids in seqs:
            s.reset()
            out.append(_log_softmax(s.forward(ids, all_logits=True).astype(np.float64)))
        return out

    def nll(lp: list[np.ndarray]) -> float:
        return float(np.mean(np.concatenate(
            [-x[np.arange(len(ids) - 1), ids[1:]] for x, ids in zip(lp, seqs, strict=True)])))

    ref = scores(_export(gguf, "fp32", {"weights": "fp32"}))
    result = {"model": gguf.name, "texts": TEXTS, "positions": int(sum(len(s) for s in seqs)),
              "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "fp32_nll": nll(ref), "variants": {}}
    for name, options in VARIANTS.items():
        lp = scores(_export(gguf, name.split(" (")[0].replace(" ", "-"), options))
        bits = 4 + 32 / options.get("block_size", 32) + (
            0 if options.get("symmetric") else 4 / options.get("block_size", 32))
        result["variants"][name] = {
            "bits_per_weight": bits,
            "top1_agrees_with_fp32": float(np.mean(np.concatenate(
                [a.argmax(-1) == b.argmax(-1) for a, b in zip(ref, lp, strict=True)]))),
            "kl_from_fp32": float(np.mean(np.concatenate(
                [(np.exp(a) * (a - b)).sum(-1) for a, b in zip(ref, lp, strict=True)]))),
            "nll": nll(lp)}
        print(name, json.dumps(result["variants"][name]), file=sys.stderr, flush=True)
    tag = "1.5b" if "1.5b" in args.model else "0.5b" if "0.5b" in args.model else "model"
    out = args.out or HERE / "results" / f"quant-fidelity-{tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
