"""`qcoder trace`: read a MoE routing trace (``qcoder ask --trace FILE``) and replay it through
the expert cache simulator: hit rate of every eviction policy and of Belady's optimum at the
budgets asked, so a policy and an ``--expert-ram`` can be chosen offline."""

from __future__ import annotations

import argparse
import json
import re

from qcoder_ds.errors import QcoderError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trace", help="MoE routing traces: statistics and cache simulation",
        description="Replay a routing trace (written by qcoder ask --trace) through the expert "
                    "cache simulator under every eviction policy and Belady's optimum.")
    sub = p.add_subparsers(dest="trace_command", metavar="ACTION")
    s = sub.add_parser("simulate", help="hit rate per policy and Belady at each budget")
    s.add_argument("trace", help="a trace file")
    s.add_argument("--budget", action="append", default=None,
                   help="a share of all experts (25%%), a count of experts (1536), or bytes "
                        "(8GiB, with --expert-bytes); repeatable; default 50%% and 25%%")
    s.add_argument("--expert-bytes", type=int, default=0,
                   help="bytes of one expert (for byte budgets and bytes read)")
    s.add_argument("--policy", action="append", default=None,
                   help="policies to replay (default: all); Belady is always added")
    s.add_argument("--warmup", type=int, default=0, help="tokens replayed but not counted")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=simulate)
    st = sub.add_parser("stats", help="routing skew and temporal locality of a trace")
    st.add_argument("trace")
    st.set_defaults(func=stats)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def parse_budget(text: str, total_experts: int, expert_bytes: int) -> int:
    """A budget as a count of experts: '25%', '1536' (experts) or '8GiB' (needs expert bytes)."""
    t = text.strip()
    if t.endswith("%"):
        try:
            share = float(t[:-1]) / 100
        except ValueError:
            raise QcoderError(f"bad budget {text!r}: use 25%, 1536 or 8GiB") from None
        if not 0 < share <= 1:
            raise QcoderError(f"budget {text!r} must be above 0% and at most 100%")
        return max(1, round(share * total_experts))
    if t.isdigit():
        return int(t)
    m = re.fullmatch(r"([\d.]+)\s*([KMG]i?B)", t, re.IGNORECASE)
    if not m:
        raise QcoderError(f"bad budget {text!r}: use 25%, 1536 (experts) or 8GiB")
    if expert_bytes <= 0:
        raise QcoderError(f"budget {text!r} is in bytes: give --expert-bytes (one expert's size)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()] // expert_bytes)


def simulate(args: argparse.Namespace) -> int:
    from qcoder_ds.runtime.cache_simulator import compare
    from qcoder_ds.runtime.moe_trace import read_trace

    trace = read_trace(args.trace)
    total = trace.layers * trace.experts
    rows = []
    for b in args.budget or ["50%", "25%"]:
        cap = parse_budget(b, total, args.expert_bytes)
        res = compare(trace, cap, args.policy, warmup=args.warmup, expert_bytes=args.expert_bytes)
        rows.append({"budget": b, "capacity": cap, "share": cap / total,
                     "results": {n: r.to_dict() for n, r in res.items()}})
    if args.json:
        print(json.dumps({"trace": args.trace, "model": trace.model, "layers": trace.layers,
                          "experts": trace.experts, "top_k": trace.top_k,
                          "tokens": len(trace.tokens), "budgets": rows}, indent=1))
        return 0
    print(f"{args.trace}: {trace.model or 'model ?'}, {len(trace.tokens)} tokens, "
          f"{trace.layers} layers x {trace.experts} experts, top-{trace.top_k}")
    for row in rows:
        print(f"budget {row['budget']} = {row['capacity']} experts ({row['share']:.0%} of all)")
        for name, r in row["results"].items():
            extra = f", {r['bytes_read'] / max(1, len(trace.tokens)) / 1e6:.1f} MB/token" \
                if args.expert_bytes else ""
            print(f"  {name:<10} hit rate {r['hit_rate']:.3f} ({r['misses']} misses{extra})")
    return 0


def stats(args: argparse.Namespace) -> int:
    from qcoder_ds.runtime.cache_simulator import routing_stats
    from qcoder_ds.runtime.moe_trace import read_trace

    print(json.dumps(routing_stats(read_trace(args.trace)), indent=1))
    return 0
