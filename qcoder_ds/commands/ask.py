"""`qcoder ask`: stream a code answer from the local model, optionally about a data file.

The prompt here is deliberately simple (the full copilot, with live-kernel context, checks and
repair, lives in qcoder_ds.copilot); ``build_ask_messages`` is the one function to replace.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from qcoder_ds.errors import QcoderError

SYSTEM = ("You are a careful data-science assistant. You answer with one Python code block "
          "and nothing else.")


class DataFileError(QcoderError):
    """The --data file cannot be read as a table."""


def load_table(path: str | Path):
    """A pandas DataFrame from a .csv / .tsv / .parquet / .json file."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{p}: no such file")
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            return pd.read_csv(p)
        if suffix == ".tsv":
            return pd.read_csv(p, sep="\t")
        if suffix in (".parquet", ".pq"):
            try:
                return pd.read_parquet(p)
            except ImportError as e:
                raise DataFileError(f"{p}: reading Parquet needs pyarrow ({e})") from None
        if suffix in (".json", ".jsonl"):
            return pd.read_json(p, lines=suffix == ".jsonl")
    except DataFileError:
        raise
    except Exception as e:  # pandas raises many kinds; all mean "not a readable table"
        raise DataFileError(f"{p}: cannot read it as a table ({type(e).__name__}: {e})") from None
    raise DataFileError(f"{p}: unsupported data file type {suffix!r} "
                        f"(use .csv, .tsv, .parquet or .json)")


def describe_frame(df, name: str = "df", head_rows: int = 5, max_columns: int = 40) -> str:
    """What the model needs to know about a DataFrame: shape, columns with dtypes, first rows."""
    cols = list(df.columns)[:max_columns]
    lines = [f"`{name}` has {len(df)} rows and {df.shape[1]} columns:"]
    lines += [f"- {c}: {df[c].dtype}" for c in cols]
    if df.shape[1] > max_columns:
        lines.append(f"- ... and {df.shape[1] - max_columns} more columns")
    with_pd_options = df[cols].head(head_rows).to_string(max_colwidth=40)
    lines += ["", f"{name}.head({head_rows}):", with_pd_options]
    return "\n".join(lines)


def build_ask_messages(request: str, df=None) -> list[dict]:
    """The chat for one `qcoder ask` request; ``df`` is the loaded --data table, if any.

    The model is told the DataFrame already exists: left alone it writes ``pd.read_csv`` with
    an invented path or re-creates the data from literals (RESEARCH.md).
    """
    if df is None:
        user = f"{request.strip()}\n\nReply with one ```python code block."
    else:
        user = (
            f"A pandas DataFrame named `df` is already loaded in memory. Do not read any "
            f"file and do not create `df` again; `pandas as pd` and `matplotlib.pyplot as plt` "
            f"are imported.\n\n{describe_frame(df)}\n\nTask: {request.strip()}\n\n"
            f"Reply with one ```python code block that uses the existing `df`."
        )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def ask_reply_prefix(df=None) -> str:
    """How the model's answer starts: an open code block, and with data, the imports and a
    reminder that ``df`` exists. The 0.5B model ignores "do not read the file" in the request
    about half the time, but continues code that already says so."""
    if df is None:
        return "```python\n"
    return ("```python\nimport pandas as pd\nimport matplotlib.pyplot as plt\n\n"
            "# `df` is already loaded: use it as it is, do not read a file or create it again\n")


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
    if getattr(args, "data", None) or getattr(args, "db", None):
        from qcoder_ds.copilot.cli_ask import run_pipeline

        return run_pipeline(args)  # the copilot: live context, checks, repair
    df = load_table(args.data) if args.data else None
    messages = build_ask_messages(args.request, df)
    prefix = ask_reply_prefix(df)
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
