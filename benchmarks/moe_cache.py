"""The expert cache end to end on a synthetic Qwen3-MoE: decode speed, hits, bytes read and
prefetch accuracy against the budget, the policy and prefetch on/off.

A random model (transformers' Qwen3MoeForCausalLM, random weights, every layer MoE) routes
close to uniformly, so hit rates here follow the budget share and say nothing of a real
model's locality (the routing-trace simulator does that); what this measures is the cost of
misses, what prefetch overlaps, and that each setting runs. Settings are interleaved per
round on the same export (ONNX Runtime, int4).

    python benchmarks/moe_cache.py [--layers 6 --experts 32 --hidden 512 --ffn 256 --top-k 4]
      -> benchmarks/results/moe-cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "moe"))

OUT = Path(__file__).parent / "results" / "moe-cache.json"

SETTINGS = {
    "all, fused (QMoE)": {"expert_ram": "all"},
    "all, per-layer, expert kernel": {"expert_ram": "all", "fused": False},
    "50%, lru, prefetch": {"expert_ram": "50%", "policy": "lru"},
    "25%, lru, prefetch": {"expert_ram": "25%", "policy": "lru"},
    "25%, lru, no prefetch": {"expert_ram": "25%", "policy": "lru", "prefetch": False},
    "25%, lfu-decay, prefetch": {"expert_ram": "25%", "policy": "lfu-decay"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from tiny_moe import build_tiny_moe

    from qcoder_ds.models.checkpoint import HFCheckpoint
    from qcoder_ds.runtime.ort_backend import export_onnx, load_onnx

    res: dict = {"model": vars(args), "cpus": len(os.sched_getaffinity(0)),
                 "load_avg_start": os.getloadavg(), "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        hf = build_tiny_moe(tmp / "hf", args.layers, args.experts, args.top_k, True,
                            hidden_size=args.hidden, moe_intermediate_size=args.ffn)

        export_onnx(HFCheckpoint(hf), tmp / "export", weights="int4", progress=False)
        res["export_s"] = time.perf_counter() - t
        rng = np.random.default_rng(0)
        prompt = rng.integers(0, 512, args.prompt)
        runs: dict[str, list] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name, options in SETTINGS.items():
                s = load_onnx(tmp / "export", threads=2, **options)
                t0 = time.perf_counter()
                logits = s.forward(prompt)
                t1 = time.perf_counter()
                for _ in range(args.decode):
                    logits = s.forward(np.array([int(logits.argmax())]))
                t2 = time.perf_counter()
                s.cache.wait_idle()
                stats = s.cache_stats()
                s.close()
                runs[name].append({"prefill_s": t1 - t0,
                                   "decode_tok_s": args.decode / (t2 - t1), **stats})
        for name, rr in runs.items():
            last = rr[-1]
            res["settings"][name] = {
                "decode_tok_s_median": statistics.median(r["decode_tok_s"] for r in rr),
                "prefill_s_median": statistics.median(r["prefill_s"] for r in rr),
                **{k: last[k] for k in ("capacity_experts", "fused", "hit_rate", "loads",
                                        "bytes_read", "evictions", "prefetch_loaded",
                                        "prefetch_accuracy", "prediction_accuracy")}}
    res["load_avg_end"] = os.getloadavg()
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
