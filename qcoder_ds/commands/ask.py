"""`qcoder ask`: stream a code answer from the local model.

Without data the request goes to the model as it is; with ``--data``/``--db`` it goes to the
copilot's pipeline (qcoder_ds.copilot.cli_ask), which describes the table, checks the answer
on it and repairs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from qcoder_ds.copilot.cli_ask import run_pipeline
from qcoder_ds.errors import QcoderError

SYSTEM = ("You are a careful data-science assistant. You answer with one Python code block "
          "and nothing else.")
REPLY_PREFIX = "```python\n"  # the answer starts inside a code block, so it is code


def build_ask_messages(request: str) -> list[dict]:
    """The chat for a request without data: the request and the answer's expected form."""
    user = f"{request.strip()}\n\nReply with one ```python code block."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ask", help="ask the local model for code (streams the answer)",
                              description="Stream a Python answer from the local model.")
    p.add_argument("request", help='what you want, e.g. "total revenue per region as a bar chart"')
    p.add_argument("--data", metavar="FILE", help="a .csv/.parquet table the code should use as df")
    p.add_argument("--db", metavar="FILE", help="a SQLite database the code may query as conn")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="with --data/--db: skip running the answer on a sample")
    p.add_argument("--safe", action="store_true", help="with --data/--db: block unsafe code")
    p.add_argument("--sql", action="store_true", help="with --db: answer with a SQL query")
    _add_model_options(p)
    p.add_argument("--max-tokens", type=int, default=512, help="most new tokens (default 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--full", action="store_true",
                   help="print the whole answer, not just up to the end of the first code block")
    p.set_defaults(func=run)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from qcoder_ds.models.choice import COPILOT_MODEL, SMALL_MODEL

    p.add_argument("--model", default=None,
                   help=f"catalogue name, GGUF file or HF directory (default {COPILOT_MODEL}, "
                        f"or {SMALL_MODEL} where memory is short; see `qcoder models list`)")
    p.add_argument("--backend", default="onnx", choices=_backends(), help="runtime (default onnx)")
    p.add_argument("--weights", default="int4", choices=("int4", "int8", "fp32"),
                   help="weight format of the export (default int4)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    add_moe_options(p)


def add_moe_options(p: argparse.ArgumentParser) -> None:
    """The expert cache of a mixture-of-experts model (Qwen3-Coder-30B-A3B); see docs/moe.md."""
    g = p.add_argument_group("mixture-of-experts models")
    g.add_argument("--expert-ram", metavar="SIZE", default=None,
                   help="memory for experts: 6GB, 6GiB, 50%% (of all experts), all, or auto "
                        "(default: $QCODER_EXPERT_RAM, else auto = what fits in 60%% of the "
                        "memory available)")
    g.add_argument("--expert-policy", default=None, metavar="NAME",
                   help="eviction policy: lru, lfu, lfu-decay, nextuse (default: "
                        "$QCODER_EXPERT_POLICY, else lfu-decay)")
    g.add_argument("--no-prefetch", dest="prefetch", action="store_false",
                   help="do not build the next layer's likely experts in the background")
    g.add_argument("--trace", metavar="FILE", default=None,
                   help="write the routing trace (every token's experts per layer) to FILE")


def moe_settings(args: argparse.Namespace) -> dict:
    """``Engine.load(moe=...)`` from the command line's MoE options."""
    return {"expert_ram": getattr(args, "expert_ram", None),
            "policy": getattr(args, "expert_policy", None),
            "prefetch": getattr(args, "prefetch", True),
            "trace": getattr(args, "trace", None)}


def _backends() -> list[str]:
    from qcoder_ds.runtime.export import BACKENDS

    return list(BACKENDS)


def run(args: argparse.Namespace) -> int:
    from qcoder_ds.engine import Engine
    from qcoder_ds.runtime.sampler import SamplingParams

    if not args.request.strip():
        raise QcoderError("the request is empty: say what code you want")
    from qcoder_ds.models.choice import default_model

    args.model = args.model or default_model().name
    if args.data or args.db:
        if args.trace or not args.prefetch:
            raise QcoderError("--trace and --no-prefetch work without --data/--db only")
        # the pipeline loads its own engine: it reads the budget and policy from here
        for var, value in (("QCODER_EXPERT_RAM", args.expert_ram),
                           ("QCODER_EXPERT_POLICY", args.expert_policy)):
            if value:
                os.environ[var] = value
        return run_pipeline(args)  # the copilot: the table's context, checks, repair
    messages = build_ask_messages(args.request)
    prefix = REPLY_PREFIX
    engine = Engine.load(args.model, backend=args.backend, weights=args.weights,
                         threads=args.threads, moe=moe_settings(args))
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature,
                            seed=args.seed)
    cancel = threading.Event()
    stream = engine.chat(messages, params, cancel, reply_prefix=prefix)
    out = sys.stdout
    text = prefix
    out.write(prefix)
    out.flush()
    try:
        for piece in stream:
            if not args.full:
                piece, done = _until_block_end(text, piece)
            else:
                done = False
            text += piece
            out.write(piece)
            out.flush()
            if done:
                stream.close()
                break
    except KeyboardInterrupt:
        cancel.set()
        stream.close()
        raise
    if not text.endswith("\n"):
        out.write("\n")
    _report_experts(engine)
    return 0


def _report_experts(engine) -> None:
    """One line on stderr about the expert cache, for a mixture-of-experts model."""
    stats = getattr(engine.session, "cache_stats", None)
    if stats is None:
        return
    from qcoder_ds.runtime.expert_cache import human_bytes

    d = stats()
    rate = d.get("hit_rate")
    acc = d.get("prefetch_accuracy")
    print(f"experts: {d['capacity_experts']} resident at most "
          f"({human_bytes(d['budget_bytes'])}, {d['policy']}), hit rate "
          f"{'-' if rate is None else f'{rate:.2f}'}, {d['loads']} built "
          f"({human_bytes(d['bytes_read'])} read), prefetch accuracy "
          f"{'-' if acc is None else f'{acc:.2f}'}", file=sys.stderr)
    close = getattr(engine.session, "close", None)
    if close is not None:
        close()  # flushes a --trace file


def _until_block_end(before: str, piece: str) -> tuple[str, bool]:
    """Cut ``piece`` right after the fence that closes the first code block, if it is in it."""
    text = before + piece
    first = text.find("```")
    if first < 0:
        return piece, False
    second = text.find("```", first + 3)
    if second < 0:
        return piece, False
    end = second + 3
    return text[len(before):end], True
