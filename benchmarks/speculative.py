"""Speculative decoding: the 1.5B plain, with the 0.5B drafting, with prompt lookup, with both.

One process, one run. Per prompt the modes run interleaved, in an order that rotates each
round, so a busy machine slows them alike; speed-ups are ratios of decode tok/s within a round.
Modes: ``plain`` (the model without a drafter), ``plain-nospin`` (its threads sleep between
ops, as they do beside a drafter model), ``drafter-k4`` (the 0.5B, k fixed at 4), ``drafter``
(k adaptive), ``lookup`` (prompt lookup, k adaptive), ``both`` (lookup where an n-gram
matches, the 0.5B elsewhere); ``--modes`` picks some. llama.cpp (llama-cpp-python) runs the
1.5B's GGUF on the same prompts, plain and with its own prompt-lookup drafter
(``LlamaPromptLookupDecoding``), for its ratio.
Prompts: a 128-token decode of decode.py's prompt, the copilot's own first prompt for each
development request of benchmarks/copilot.py, and repair prompts (the copilot asked to fix a
cell that failed), recorded by running the pipeline with an engine that records instead of
generating. Every greedy speculative answer is compared with plain decoding's, token for token.

    .venv/bin/python benchmarks/speculative.py [--threads 2] [--rounds 2] [--limit N] [--no-llama]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET = "qwen2.5-coder-1.5b-instruct"
DRAFTER = "qwen2.5-coder-0.5b-instruct"
OUT = ROOT / "benchmarks/results/speculative.json"


class _Recorded(BaseException):
    """Ends a copilot request once its prompt is recorded (not an Exception: nothing in the
    pipeline catches it)."""


class Recorder:
    """An engine that records the copilot's chat calls. With ``broken`` it first answers that
    cell, so that the pipeline's repair prompt (the failing cell, its error) is recorded."""

    def __init__(self, engine, broken: str | None = None):
        self.engine, self.broken, self.calls = engine, broken, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def chat(self, messages, params=None, cancel=None, truncate=False, reply_prefix=""):
        self.calls.append((self.engine.render_chat(messages) + reply_prefix, params))
        if self.broken is not None and len(self.calls) == 1:
            return iter([self.broken])
        raise _Recorded


def copilot_prompts(engine, limit: int | None) -> list[dict]:
    """(name, prompt text, params) of the copilot's first prompts and of two repair prompts."""
    import pandas as pd
    from copilot import REQUESTS

    from qcoder_ds.copilot.pipeline import Copilot, Options
    from qcoder_ds.copilot.tasks import Task

    sales = pd.read_csv(ROOT / "examples/data/sales.csv", parse_dates=["order_date"])
    conn = sqlite3.connect(Path(tempfile.mkdtemp(prefix="qcoder-spec-")) / "sales.sqlite")
    sales.to_sql("orders", conn, index=False)
    ns = {"sales": sales, "conn": conn, "pd": pd}
    asks = [(r, f, None) for r, f in REQUESTS[:limit]]
    asks += [("total revenue per region", None,
              "result = sales.groupby('regoin')['revenue'].sum()\nresult"),
             ("average units per product", None,
              "result = sales.groupby('product')['unit'].mean()\nresult")]
    out = []
    for request, flag, broken in asks:
        rec = Recorder(engine, broken)
        try:
            Copilot(rec, model=TARGET).ask(request, ns, Options(task=Task(flag) if flag else None))
        except _Recorded:
            pass
        if broken is None or len(rec.calls) > 1:
            text, params = rec.calls[-1]  # greedy (the pipeline samples its repairs)
            out.append({"name": ("repair: " if broken else "") + request, "text": text,
                        "params": dataclasses.replace(params, temperature=0.0)})
    return out


def run_mode(engine, ids, params, mode: tuple, eos: bool = True) -> dict:
    """One generation: its tokens, wall seconds (prefill included; after the warm-up the
    prompt is in the KV caches, so this is decode) and the drafter's statistics. ``eos``
    False: EOS ignored, so every mode decodes the same number of tokens."""
    from qcoder_ds.runtime.generate import generate_text

    session, drafter, k = mode
    options = {} if eos else {"eos_token_ids": ()}
    t = time.perf_counter()
    stream = generate_text(session, engine.tokenizer, ids, params,
                           prefill_chunk=engine.prefill_chunk, drafter=drafter, draft_tokens=k,
                           **options)
    text = "".join(stream)
    seconds = time.perf_counter() - t
    gen = stream.tokens
    row = {"tokens": list(gen.generated), "seconds": seconds, "text": text,
           "finish": gen.finish_reason, "tok_s": len(gen.generated) / seconds}
    if drafter is not None:
        row.update(passes=gen.passes, drafted=gen.drafted, accepted=gen.accepted,
                   k_median=statistics.median(gen.k_history)
                   if gen.k_history else None)
    return row


class LlamaCpp:
    """The target's GGUF in llama.cpp, plain and with its prompt-lookup drafter, greedy."""

    def __init__(self, threads: int):
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        from qcoder_ds.models.sources import resolve

        path = str(resolve(TARGET).path)
        # the longest prompt (~660 tokens) and answer (384); a drafter needs every position's
        # logits kept (n_ctx x vocab floats)
        common = dict(n_ctx=1152, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.plain = Llama(path, **common)
        self.lookup = Llama(path, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10),
                            logits_all=True, **common)
        self.path = path

    def measure(self, text: str, max_tokens: int, eos: bool, rounds: int) -> dict:
        out = {}
        for name, llm in (("plain", self.plain), ("lookup", self.lookup)):
            ids = llm.tokenize(text.encode(), add_bos=False, special=True)
            llm(ids, max_tokens=2, temperature=0.0)  # warm-up: the prompt in its cache
            speeds = []
            for _ in range(rounds):
                t = time.perf_counter()
                r = llm.create_completion(ids, max_tokens=max_tokens, temperature=0.0,
                                          top_k=1,
                                          logit_bias=None if eos else {llm.token_eos(): -100.0})
                n = r["usage"]["completion_tokens"]
                speeds.append(n / (time.perf_counter() - t))
            out[name] = {"tok_s": round(statistics.median(speeds), 2), "new_tokens": n}
        out["lookup_speedup"] = round(out["lookup"]["tok_s"] / out["plain"]["tok_s"], 3)
        return out


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(engine, prompts: list[dict], modes: dict, rounds: int, llama=None) -> list[dict]:
    """Every prompt in every mode, ``rounds`` times, the mode order rotating per round."""
    rows = []
    for p in prompts:
        ids = engine.tokenizer.encode(p["text"])
        eos = p.get("eos", True)
        for drafter in modes.values():  # warm-up: prompt caches filled, not timed
            run_mode(engine, ids, _short(p["params"]), drafter, eos)
        runs = {m: [] for m in modes}
        for r in range(rounds):
            order = list(modes)[r % len(modes):] + list(modes)[:r % len(modes)]
            for mode in order:
                runs[mode].append(run_mode(engine, ids, p["params"], modes[mode], eos))
        rows.append(_summarise(p["name"], len(ids), runs))
        if llama is not None:
            rows[-1]["llama.cpp"] = llama.measure(p["text"], p["params"].max_new_tokens,
                                                  eos, rounds)
        print(json.dumps({x: rows[-1][x] for x in ("name", "new_tokens", "speedup",
                                                   "identical")}), flush=True)
    return rows


def _short(params):
    return dataclasses.replace(params, max_new_tokens=2)


def _summarise(name: str, prompt_tokens: int, runs: dict) -> dict:
    plain = runs["plain"]
    row = {"name": name, "prompt_tokens": prompt_tokens, "new_tokens": len(plain[0]["tokens"]),
           "finish": plain[0]["finish"], "tok_s": {}, "speedup": {}, "identical": {},
           "acceptance": {}, "tokens_per_pass": {}}
    for mode, rs in runs.items():
        row["tok_s"][mode] = round(statistics.median(r["tok_s"] for r in rs), 2)
        if mode == "plain":
            continue
        ratios = [p["seconds"] / r["seconds"] for p, r in zip(plain, rs, strict=True)]
        row["speedup"][mode] = round(statistics.median(ratios), 3)
        row["identical"][mode] = all(r["tokens"] == p["tokens"]
                                     for p, r in zip(plain, rs, strict=True))
        if "drafted" in rs[0]:
            drafted, accepted, passes = (rs[0][x] for x in ("drafted", "accepted", "passes"))
            row["acceptance"][mode] = round(accepted / drafted, 3) if drafted else None
            row["tokens_per_pass"][mode] = round((accepted + passes) / passes, 2)
            row.setdefault("k_median", {})[mode] = rs[0]["k_median"]
        if not row["identical"][mode]:
            row.setdefault("first_difference", {})[mode] = _first_difference(plain[0], rs[0])
    return row


def _first_difference(a: dict, b: dict) -> dict:
    n = min(len(a["tokens"]), len(b["tokens"]))
    i = next((j for j in range(n) if a["tokens"][j] != b["tokens"][j]), n)
    return {"token_index": i, "plain": a["tokens"][i:i + 3], "speculative": b["tokens"][i:i + 3]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    ap.add_argument("--modes", default=None, help="comma-separated subset of the modes "
                    "(plain always runs)")
    ap.add_argument("--limit", type=int, default=None, help="first N copilot requests only")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from decode import PROMPT_TEXT

    load_at_start = os.getloadavg()[0]
    from qcoder_ds.engine import Engine, load_drafter
    from qcoder_ds.runtime.export import load_session
    from qcoder_ds.runtime.sampler import SamplingParams
    from qcoder_ds.runtime.speculative import DEFAULT_DRAFT_TOKENS, LookupThenModel

    rss = {"before": rss_mib()}
    engine = Engine.load(TARGET, threads=args.threads, progress=False, drafter="none")
    rss["target"] = rss_mib()
    # the target and the drafter as Engine.load(drafter=...) loads them: threads that sleep
    # between ops, since the two sessions take turns on the same cores
    quiet = load_session(TARGET, threads=args.threads, progress=False, spinning=False)
    rss["second_target"] = rss_mib()
    drafter = load_drafter(DRAFTER, quiet, engine.tokenizer, threads=args.threads,
                           progress=False, spinning=False)
    rss["drafter"] = rss_mib()
    lookup = load_drafter("prompt-lookup", quiet, engine.tokenizer)
    modes = {"plain": (engine.session, None, None), "plain-nospin": (quiet, None, None),
             "drafter-k4": (quiet, drafter, 4), "drafter": (quiet, drafter, None),
             "lookup": (engine.session, lookup, None),
             "both": (quiet, LookupThenModel(drafter), None)}
    if args.modes:
        keep = {"plain", *args.modes.split(",")}
        modes = {m: v for m, v in modes.items() if m in keep}
    llama = None if args.no_llama else LlamaCpp(args.threads)
    prompts = [{"name": "128-token decode", "text": PROMPT_TEXT,
                "params": SamplingParams(max_new_tokens=128), "eos": False}]
    prompts += copilot_prompts(engine, args.limit)
    rows = measure(engine, prompts, modes, args.rounds, llama)
    result = {"target": TARGET, "drafter": DRAFTER, "max_k": DEFAULT_DRAFT_TOKENS,
              "threads": args.threads, "rounds": args.rounds,
              "machine": platform.processor() or platform.machine(),
              "loadavg_at_start": load_at_start, "loadavg_at_end": os.getloadavg()[0],
              "note": "speedup: median over rounds of plain seconds / mode seconds, same prompt, "
                      "modes interleaved; greedy; llama.cpp: its GGUF as stored, its own "
                      "plain and prompt-lookup runs",
              "rss_mib": {k: round(v) for k, v in rss.items()},
              "drafter_rss_mib": round(rss["drafter"] - rss["second_target"]),
              "prompts": rows, "summary": _overall(rows)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


def _overall(rows: list[dict]) -> dict:
    out = {}
    for mode in rows[0]["speedup"]:
        out[mode] = {"speedup_median": round(statistics.median(r["speedup"][mode]
                                                                for r in rows), 3),
                     "speedup_copilot_median": round(statistics.median(
                         r["speedup"][mode] for r in rows if r["name"] != "128-token decode"), 3),
                     "identical": sum(r["identical"][mode] for r in rows),
                     "prompts": len(rows)}
    if "llama.cpp" in rows[0]:
        out["llama.cpp lookup"] = {"speedup_median": round(statistics.median(
            r["llama.cpp"]["lookup_speedup"] for r in rows), 3)}
        out["llama.cpp plain vs ours plain"] = {"tok_s_ratio_median": round(statistics.median(
            r["tok_s"]["plain"] / r["llama.cpp"]["plain"]["tok_s"] for r in rows), 3)}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
