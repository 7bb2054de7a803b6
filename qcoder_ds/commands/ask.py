"""`qcoder ask`: stream a code answer from the local model.

Without data the request goes to the model as it is; with ``--data``/``--db`` it goes to the
copilot's pipeline (qcoder_ds.copilot.cli_ask), which describes the table, checks the answer
on it and repairs it.
"""

from __future__ import annotations

import argparse
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
        return run_pipeline(args)  # the copilot: the table's context, checks, repair
    messages = build_ask_messages(args.request)
    prefix = REPLY_PREFIX
    engine = Engine.load(args.model, backend=args.backend, weights=args.weights,
                         threads=args.threads)
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
    return 0


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
