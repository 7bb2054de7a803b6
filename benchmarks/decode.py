"""Decode benchmark (`make bench`): our ORT and OpenVINO backends beside llama.cpp and transformers.

One run, same GGUF, same thread count, same prompt ids. Each engine runs in its own subprocess
(so peak RSS is its own), ``--runs`` times; each run measures load seconds, prefill tok/s on a
``--prompt-tokens`` prompt (one forward over the whole prompt) and greedy decode tok/s over
``--new-tokens`` tokens (EOS ignored, so every engine does the same work). Reported as
min/median/max, with ratios to llama.cpp and each engine's roofline: measured memory bandwidth
(numpy sum over 1 GB) ÷ the weight bytes that engine reads per decoded token.

llama.cpp runs twice: on the GGUF as stored (Q8_0/Q6_K/... mixes that read more bytes per
token than our int4) and on a Q4_0 re-quantization of it made by llama.cpp itself (once,
cached), which reads about what our int4 reads: the like-for-like peer.

    python benchmarks/decode.py                      # all engines, writes results/decode.json
    python benchmarks/decode.py --model qwen2.5-coder-1.5b-instruct --out results/decode-1.5b.json
    python benchmarks/decode.py --engines ours-ort   # just one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
ENGINES = ("ours-ort", "ours-ort-b64", "ours-openvino", "llama.cpp", "llama.cpp-q4_0",
           "transformers")
RESULTS = HERE / "results" / "decode.json"

# a realistic prompt: data-science code, repeated until it is long enough
PROMPT_TEXT = '''import pandas as pd
import matplotlib.pyplot as plt

df = pd.read_csv("sales.csv", parse_dates=["date"])
df["revenue"] = df["units"] * df["unit_price"]
monthly = (df.set_index("date").groupby("region")["revenue"]
           .resample("MS").sum().unstack(0).fillna(0))
top = df.groupby(["region", "product"], as_index=False)["revenue"].sum()
top = top.sort_values("revenue", ascending=False).head(10)
fig, ax = plt.subplots(figsize=(8, 4))
monthly.plot(ax=ax, marker="o")
ax.set_title("Monthly revenue by region")
ax.set_ylabel("revenue (EUR)")
plt.tight_layout()
# SELECT region, SUM(units * unit_price) AS revenue FROM sales GROUP BY region ORDER BY 2 DESC;
'''


# ------------------------------------------------------------------ helpers shared by workers


def peak_rss_mib() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries it over from the forked
    parent across exec, so every worker would report at least the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_bandwidth_gbs(repeats: int = 5) -> float:
    """Read bandwidth: the best of a few numpy sums over 1 GB (what a GEMV-bound decode reads)."""
    a = np.ones(2**28, dtype=np.float32)  # 1 GiB
    a.sum()  # touch every page first
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def gguf_bytes_per_token(path: Path) -> int:
    """llama.cpp reads every tensor once per token, except the embedding table (one row)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        total += int(t.n_bytes)
    return total


def onnx_bytes_per_token(model_path: Path) -> int:
    """Bytes of the initializers that matrix multiplications read (the embedding Gather reads
    one row, rotary caches one row: not counted)."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    sizes = {}
    for init in m.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        sizes[init.name] = n * itemsize
    used = set()
    for node in m.graph.node:
        if "MatMul" in node.op_type or node.op_type == "Gemm":
            used.update(i for i in node.input if i in sizes)
    return sum(sizes[n] for n in used)


def openvino_bytes_per_token(xml_path: Path) -> int:
    """Bytes of the constants that reach a MatMul (through Convert/Subtract/Multiply/Reshape
    decompression chains); the embedding constants reach only a Gather and are not counted."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    passthrough = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"}

    def reaches_matmul(node, depth=0) -> bool:
        for out in node.outputs():
            for tgt in out.get_target_inputs():
                consumer = tgt.get_node()
                kind = consumer.get_type_name()
                if kind in ("MatMul", "FullyConnected"):
                    return True
                if kind in passthrough and depth < 6 and reaches_matmul(consumer, depth + 1):
                    return True
        return False

    total = 0
    for op in model.get_ops():
        if op.get_type_name() == "Constant" and reaches_matmul(op):
            total += int(op.get_byte_size())
    return total


def prompt_ids(n: int, gguf_path: Path) -> list[int]:
    """``n`` token ids of PROMPT_TEXT from the model's own tokenizer (identical for all engines);
    a GGUF without a tokenizer (test models) gets seeded random ids instead."""
    from qcoder_ds.errors import QcoderError

    try:
        from qcoder_ds.models.tokenizer import load_tokenizer_from_gguf

        tok = load_tokenizer_from_gguf(gguf_path)
    except (ImportError, QcoderError):
        from qcoder_ds.models.gguf_checkpoint import GGUFCheckpoint

        vocab = GGUFCheckpoint(gguf_path).config.vocab_size
        return np.random.default_rng(0).integers(0, vocab, size=n).tolist()
    ids: list[int] = []
    while len(ids) < n:
        ids += tok.encode(PROMPT_TEXT)
    return ids[:n]


# ------------------------------------------------------------------ one engine, one run


def run_ours(backend: str, gguf_path: Path, ids: list[int], new_tokens: int, threads: int,
             weights: str, out_dir: Path | None = None) -> dict:
    from qcoder_ds.runtime.export import export_dir, get_backend, is_complete
    from qcoder_ds.runtime.generate import generate_tokens
    from qcoder_ds.runtime.sampler import SamplingParams

    source = _gguf_source(gguf_path)
    # a side export (ours-ort-b64) is finished once its config.json is written; a cached one
    # once its manifest is
    done = (out_dir / "config.json").is_file() if out_dir else None
    out_dir = out_dir or export_dir(source, backend, weights)
    if not (done if done is not None else is_complete(out_dir)):
        # exporting here would put the export's memory in peak RSS
        raise SystemExit(f"no complete {backend} export at {out_dir} (did the exporter change "
                         "during the run?); run the benchmark again")
    t0 = time.perf_counter()
    session = get_backend(backend).load(out_dir, threads)
    load_s = time.perf_counter() - t0
    # a warm-up so the first-call costs (allocations, kernel selection) are not in the numbers
    list(generate_tokens(session, ids[:16], SamplingParams(max_new_tokens=4)))
    session.reset()  # measure a cold prefill of the whole prompt (no prefix reuse)
    gen = generate_tokens(session, ids, SamplingParams(max_new_tokens=new_tokens),
                          prefill_chunk=len(ids))
    toks = list(gen)
    assert len(toks) == new_tokens, (len(toks), gen.finish_reason)
    if backend == "onnx":
        wbytes = onnx_bytes_per_token(out_dir / "model.onnx")
    else:
        wbytes = openvino_bytes_per_token(next(out_dir.glob("*.xml")))
    return {
        "load_s": load_s,
        "prefill_tok_s": len(ids) / gen.prefill_seconds,
        # the first new token comes from the prefill's logits; new_tokens - 1 decode steps ran
        "decode_tok_s": (new_tokens - 1) / gen.decode_seconds,
        "weight_bytes_per_token": wbytes,
        "weights": weights,
        "tokens": toks[:16],
    }


def _gguf_source(gguf_path: Path):
    from qcoder_ds.models.sources import resolve

    return resolve(str(gguf_path), require_tokenizer=False)


def b64_export(gguf: Path, log=lambda m: None) -> Path:
    """Our int4 export of ``gguf`` in blocks of 64 (4.56 bits per weight with its fp32 scales
    and zero points, Q4_0's 4.5; the default's blocks of 32 take 5.1): the equal-bits peer of
    llama.cpp's Q4_0, made once and kept in ``$QCODER_HOME/bench``. Not the default: its
    logits stray further from the model's (docs/runtime.md)."""
    from qcoder_ds.paths import home
    from qcoder_ds.runtime.ort_backend import export_onnx

    out = home() / "bench" / f"{gguf.stem}-onnx-int4-b64"
    if not (out / "config.json").is_file():
        log(f"exporting {gguf.name} to ONNX int4 in blocks of 64")
        export_onnx(_gguf_source(gguf).checkpoint(), out, "int4", progress=False, block_size=64)
    return out


def q4_0_copy(gguf: Path, log=lambda m: None) -> Path:
    """``gguf`` re-quantized to Q4_0 by llama.cpp (every 2-D weight; made once, kept beside our
    exports), the equal-bits peer of our int4."""
    import ctypes

    import llama_cpp

    from qcoder_ds.paths import home

    out = home() / "bench" / f"{gguf.stem}-q4_0.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    log(f"re-quantizing {gguf.name} to Q4_0 with llama.cpp")
    if llama_cpp.llama_model_quantize(str(gguf).encode(), str(tmp).encode(),
                                      ctypes.byref(params)) != 0:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"llama.cpp could not re-quantize {gguf} to Q4_0")
    os.replace(tmp, out)
    return out


def run_llama_cpp(gguf_path: Path, ids: list[int], new_tokens: int, threads: int) -> dict:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(str(gguf_path), n_ctx=len(ids) + new_tokens + 16, n_batch=len(ids),
                n_ubatch=len(ids), n_threads=threads, n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:  # the only row computed (logits_all is off)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    llm.eval(ids[:16])  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t
    tok = int(np.argmax(last_logits()))
    toks = [tok]
    t = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([tok])
        tok = int(np.argmax(last_logits()))
        toks.append(tok)
    decode_s = time.perf_counter() - t
    return {
        "load_s": load_s,
        "prefill_tok_s": len(ids) / prefill_s,
        "decode_tok_s": (new_tokens - 1) / decode_s,
        "weight_bytes_per_token": gguf_bytes_per_token(gguf_path),
        "weights": _gguf_weights(gguf_path),
        "tokens": toks[:16],
    }


def _gguf_weights(path: Path) -> str:
    import gguf

    kinds = sorted({t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors
                    if len(t.shape) > 1})
    return "gguf " + "/".join(kinds)


def run_transformers(gguf_path: Path, ids: list[int], new_tokens: int, threads: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0
    with torch.inference_mode():
        model(torch.tensor([ids[:16]]))  # warm-up
        t = time.perf_counter()
        out = model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - t
        past = out.past_key_values
        tok = int(out.logits[0, -1].argmax())
        toks = [tok]
        t = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = int(out.logits[0, -1].argmax())
            toks.append(tok)
        decode_s = time.perf_counter() - t
    params = dict(model.named_parameters())
    wbytes = sum(p.numel() * p.element_size() for n, p in params.items()
                 if "embed_tokens" not in n or model.config.tie_word_embeddings)
    return {
        "load_s": load_s,
        "prefill_tok_s": len(ids) / prefill_s,
        "decode_tok_s": (new_tokens - 1) / decode_s,
        "weight_bytes_per_token": int(wbytes),
        "weights": "fp32",
        "tokens": toks[:16],
    }


def worker(args: argparse.Namespace) -> None:
    """One engine, one run, in this (fresh) process; prints one JSON line."""
    ids = json.loads(Path(args.ids_file).read_text())
    gguf_path = Path(args.gguf)
    if args.worker == "ours-ort":
        r = run_ours("onnx", gguf_path, ids, args.new_tokens, args.threads, args.weights)
    elif args.worker == "ours-ort-b64":
        r = run_ours("onnx", gguf_path, ids, args.new_tokens, args.threads, "int4",
                     b64_export(gguf_path))
        r["weights"] = "int4 b64"
    elif args.worker == "ours-openvino":
        r = run_ours("openvino", gguf_path, ids, args.new_tokens, args.threads, args.weights)
    elif args.worker in ("llama.cpp", "llama.cpp-q4_0"):  # the caller passes the Q4_0 copy
        r = run_llama_cpp(gguf_path, ids, args.new_tokens, args.threads)
    elif args.worker == "transformers":
        r = run_transformers(gguf_path, ids, args.new_tokens, args.threads)
    else:
        raise SystemExit(f"unknown engine {args.worker}")
    r["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(r), flush=True)


# ------------------------------------------------------------------ the whole benchmark


def _stats(xs: list[float]) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def _default_gguf(model: str = DEFAULT_MODEL) -> Path:
    try:
        from qcoder_ds.models.sources import resolve

        src = resolve(model)
        for attr in ("path", "gguf_path", "file"):
            p = getattr(src, attr, None)
            if p and Path(p).is_file():
                return Path(p)
    except Exception as e:  # noqa: BLE001 - fall through to a clear message
        raise SystemExit(f"cannot find the embedded model ({e}); pass --gguf PATH") from None
    raise SystemExit("cannot find the embedded model's GGUF file; pass --gguf PATH")


def _engine_available(engine: str) -> str | None:
    """None if the engine can run here, else why not."""
    mods = {"ours-ort": "onnxruntime", "ours-ort-b64": "onnxruntime", "ours-openvino": "openvino",
            "llama.cpp": "llama_cpp",
            "llama.cpp-q4_0": "llama_cpp", "transformers": "transformers"}
    import importlib.util

    if importlib.util.find_spec(mods[engine]) is None:
        return f"{mods[engine]} is not installed (pip install 'qcoder-ds[bench]')"
    return None


_OURS = {"ours-ort": "onnx", "ours-openvino": "openvino"}  # (ours-ort-b64: b64_export)


def _one_run(engine: str, gguf: Path, ids_file: Path, threads: int, new_tokens: int,
             weights: str) -> dict:
    """One engine, one run, in a fresh subprocess (so load time and peak RSS are its own)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--gguf",
           str(gguf), "--ids-file", str(ids_file), "--threads", str(threads),
           "--new-tokens", str(new_tokens), "--weights", weights]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        return {"error": " | ".join((p.stderr or p.stdout).strip().splitlines()[-5:])}
    return json.loads(line[len("RESULT "):])


def run_benchmark(gguf: Path | None = None, engines: tuple[str, ...] = ENGINES, threads: int = 2,
                  runs: int = 3, prompt_tokens: int = 512, new_tokens: int = 128,
                  weights: str = "int4", out: Path | None = RESULTS,
                  log=lambda m: print(m, file=sys.stderr, flush=True),
                  model: str = DEFAULT_MODEL) -> dict:
    """The whole side-by-side run; returns (and writes to ``out``) the results dict."""
    gguf = Path(gguf) if gguf else _default_gguf(model)
    ids = prompt_ids(prompt_tokens, gguf)
    log(f"model {gguf} ({gguf.stat().st_size / 1e6:.0f} MB), {threads} threads, "
        f"{len(ids)}-token prompt, {new_tokens} new tokens, {runs} runs per engine")
    bw = memory_bandwidth_gbs()
    log(f"memory read bandwidth: {bw:.1f} GB/s")
    results: dict = {
        "machine": {"cpu": _cpu_name(), "cores_visible": os.cpu_count(),
                    "python": platform.python_version(), "memory_bandwidth_gbs": round(bw, 2),
                    # other work on the machine skews everything: recorded, not corrected
                    "loadavg_1m_at_start": round(os.getloadavg()[0], 2)},
        "setup": {"model": str(gguf.name), "gguf_bytes": gguf.stat().st_size,
                  "threads": threads, "runs": runs, "prompt_tokens": len(ids),
                  "new_tokens": new_tokens, "our_weights": weights,
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "engines": {},
    }
    runnable = []
    for engine in engines:
        why = _engine_available(engine)
        if why:
            log(f"{engine}: skipped, {why}")
            results["engines"][engine] = {"skipped": why}
            continue
        if engine == "ours-ort-b64":
            b64_export(gguf, log)
        elif engine.startswith("ours-"):
            from qcoder_ds.runtime.export import ensure_export

            t = time.perf_counter()
            ensure_export(_gguf_source(gguf), _OURS[engine], weights, progress=True, log=log)
            log(f"{engine}: export ready ({time.perf_counter() - t:.0f} s)")
        if engine == "llama.cpp-q4_0":
            q4 = q4_0_copy(gguf, log)
        runnable.append(engine)
    per_run: dict[str, list[dict]] = {e: [] for e in runnable}
    with tempfile.TemporaryDirectory() as td:
        ids_file = Path(td) / "ids.json"
        ids_file.write_text(json.dumps(ids))
        # round-robin (run 1 of every engine, then run 2, ...) so that whatever else the
        # machine does at the time weighs on every engine alike
        for i in range(runs):
            for engine in runnable:
                r = _one_run(engine, q4 if engine == "llama.cpp-q4_0" else gguf, ids_file,
                             threads, new_tokens, weights)
                per_run[engine].append(r)
                if "error" in r:
                    log(f"{engine}: run {i + 1} failed: {r['error']}")
                else:
                    log(f"{engine}: run {i + 1}: load {r['load_s']:.2f} s, prefill "
                        f"{r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s, "
                        f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    for engine in runnable:
        ok = [r for r in per_run[engine] if "error" not in r]
        entry: dict = {"runs": per_run[engine]}
        if ok:
            for k in ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mib"):
                entry[k] = _stats([r[k] for r in ok])
            wb = ok[0]["weight_bytes_per_token"]
            roof = bw * 1e9 / wb
            entry["weights"] = ok[0]["weights"]
            entry["weight_bytes_per_token"] = wb
            entry["roofline_tok_s"] = roof
            entry["fraction_of_roofline"] = entry["decode_tok_s"]["median"] / roof
        results["engines"][engine] = entry
    results["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    # the roofline is a physical limit: use the best bandwidth seen (start or end)
    bw_end = memory_bandwidth_gbs()
    results["machine"]["memory_bandwidth_gbs_end"] = round(bw_end, 2)
    if bw_end > bw:
        bw = bw_end
        results["machine"]["memory_bandwidth_gbs"] = round(bw, 2)
        for e in results["engines"].values():
            if "weight_bytes_per_token" in e:
                e["roofline_tok_s"] = bw * 1e9 / e["weight_bytes_per_token"]
                e["fraction_of_roofline"] = e["decode_tok_s"]["median"] / e["roofline_tok_s"]
    for peer, key in (("llama.cpp", "vs_llama_cpp"), ("llama.cpp-q4_0", "vs_llama_cpp_q4_0")):
        base = results["engines"].get(peer, {})
        if "decode_tok_s" not in base:
            continue
        for e in results["engines"].values():
            if "decode_tok_s" in e:
                e[key] = {
                    "decode": e["decode_tok_s"]["median"] / base["decode_tok_s"]["median"],
                    "prefill": e["prefill_tok_s"]["median"] / base["prefill_tok_s"]["median"],
                }
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, out)
        log(f"results written to {out}")
    return results


def markdown_table(results: dict) -> str:
    """The README table: medians (min-max), ratios to llama.cpp, fraction of the roofline."""
    rows = ["| engine | weights | load s | prefill tok/s | decode tok/s | peak RSS MiB "
            "| decode vs llama.cpp | decode vs llama.cpp Q4_0 | prefill vs llama.cpp "
            "| roofline tok/s | of roofline |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(s: dict, fmt: str) -> str:
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"

    for name, e in results["engines"].items():
        if "decode_tok_s" not in e:
            rows.append(f"| {name} | – | {e.get('skipped', 'failed')} ||||||||")
            continue
        vs = e.get("vs_llama_cpp", {})
        q4 = e.get("vs_llama_cpp_q4_0", {})
        rows.append(
            f"| {name} | {e['weights']} | {cell(e['load_s'], '.2f')} "
            f"| {cell(e['prefill_tok_s'], '.0f')} | {cell(e['decode_tok_s'], '.1f')} "
            f"| {e['peak_rss_mib']['median']:.0f} "
            f"| {vs.get('decode', float('nan')):.2f}× | {q4.get('decode', float('nan')):.2f}× "
            f"| {vs.get('prefill', float('nan')):.2f}× "
            f"| {e['roofline_tok_s']:.0f} | {e['fraction_of_roofline']:.0%} |")
    s = results["setup"]
    m = results["machine"]
    rows.append("")
    rows.append(f"{s['model']}, {s['threads']} threads, {s['prompt_tokens']}-token prompt, "
                f"{s['new_tokens']} new tokens, median (min–max) of {s['runs']} runs, "
                f"{m['cpu']}, memory read bandwidth {m['memory_bandwidth_gbs']} GB/s, "
                f"load average {m.get('loadavg_1m_at_start', '?')} → "
                f"{m.get('loadavg_1m_at_end', '?')} on {m['cores_visible']} cores.")
    return "\n".join(rows)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gguf", type=Path, help="GGUF file (default: --model's)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="catalogue name")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"comma-separated subset of {', '.join(ENGINES)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--weights", default="int4", choices=("int4", "int8", "fp32"),
                   help="weight format of our exports")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--ids-file", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise SystemExit(f"unknown engine(s) {bad}; choose from {', '.join(ENGINES)}")
    results = run_benchmark(args.gguf, engines, args.threads, args.runs, args.prompt_tokens,
                            args.new_tokens, args.weights, args.out, model=args.model)
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
