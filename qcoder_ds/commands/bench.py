"""`qcoder bench`: the decode benchmark (benchmarks/decode.py) from the command line.

The benchmark compares against llama.cpp and transformers, which are not runtime dependencies,
so it lives in the source tree's benchmarks/ folder (install the `bench` extra to run it all).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from qcoder_ds.errors import QcoderError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode.py"


def _module():
    if not SCRIPT.is_file():
        return None
    spec = importlib.util.spec_from_file_location("qcoder_bench_decode", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="decode benchmark: ours (ORT, OpenVINO) vs llama.cpp and transformers",
        description="Load seconds, prefill and decode tok/s, peak RSS, roofline; "
                    "writes benchmarks/results/decode.json.")
    mod = _module()
    if mod is not None:
        mod.build_arg_parser(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mod = _module()
    if mod is None:
        raise QcoderError(f"{SCRIPT} not found: `qcoder bench` runs from a source checkout "
                          "of qcoder-ds (git clone, then `make bench`)")
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    bad = [e for e in engines if e not in mod.ENGINES]
    if bad:
        raise QcoderError(f"unknown engine(s) {', '.join(bad)}; choose from "
                          f"{', '.join(mod.ENGINES)}")
    results = mod.run_benchmark(args.gguf, engines, args.threads, args.runs,
                                args.prompt_tokens, args.new_tokens, args.weights, args.out,
                                model=args.model)
    print(mod.markdown_table(results))
    return 0
