"""MoE benchmark (issue 14): Qwen3-Coder-30B-A3B's layer shapes on a synthetic model, qcoder's
expert cache at expert budgets of 100/50/25%, every eviction policy and Belady's optimum on the
same routing trace, llama.cpp on the same model, and a projection to the full 48 layers.

The real weights are not obtainable here, so the model is ``synthetic_moe.py``'s (random weights,
the real shapes, skewed and topic-local routing; see its docstring for the routing assumptions),
``--layers`` of them (default 4: 512 experts, 1.36 GB of int4 experts), vocabulary cut to 32768.
Decoding is teacher-forced on ``synthetic_moe.token_stream`` (the same ids for every engine), so
that every run routes the same tokens.

Measured, each engine in its own subprocess (peak RSS is its own):

- machine: memory read bandwidth (numpy sum over 1 GiB), disk read bandwidth sequential and in
  expert-sized random reads (our own file's pages dropped from the page cache first with
  posix_fadvise, so the reads reach the disk; no global cache drop on a shared machine);
- qcoder (ONNX Runtime, int4 experts) at each budget: decode tok/s, peak RSS, bytes the cache
  read from the expert store per token, bytes read from storage per token (/proc/self/io), hit
  rate, prefetch accuracy (share of prefetched experts the layer then used) and the share of
  misses the prefetcher hid (requests that found their expert built or being built);
- pairs (``--engines pairs --pairs N``): N rounds of alternating runs, qcoder fully resident,
  qcoder at a 50% budget with the defaults (lfu-decay, prefetch that switches itself off),
  llama.cpp's repacked Q4_0 resident and qcoder resident decoding in the one-graph mode instead
  of the decode kernel; the median ratios: the issue's bars, less at the mercy of one run's
  load;
- the routing trace of the 100% run replayed by the cache simulator under every policy and
  Belady at each budget, and the same for a numpy-routed 48-layer trace of the synthetic router
  (the projection's hit rates);
- llama.cpp (llama-cpp-python, Q4_0 GGUF of the same weights, mmap): fully resident (file
  pre-read) and, where a memory cgroup can be made (v1 or v2, as root), under a memory limit of
  the same expert budget plus its measured non-expert memory: then the kernel's page cache is its
  expert cache, and misses are page faults that read the disk.
- projection for 48 layers on this machine's measured bandwidths: time per token = bytes read
  from memory / memory bandwidth + misses x (expert bytes / random-read disk bandwidth + qcoder's
  measured build time per expert, now the store's read from the page cache and its first-read
  hash), misses from the simulator's hit rate.

    python benchmarks/moe.py                       # 4 layers, 64 tokens, writes results/moe.json
    python benchmarks/moe.py --layers 2 --tokens 32 --engines simulator llama.cpp
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import synthetic_moe as syn  # noqa: E402

RESULTS = HERE / "results" / "moe.json"
ENGINES = ("simulator", "qcoder", "pairs", "llama.cpp", "moefied")
BUDGETS = (1.0, 0.5, 0.25)
FULL = syn.SyntheticSpec(layers=48, vocab=151936)  # Qwen3-Coder-30B-A3B
INT4_BYTES_PER_PARAM = 0.5625  # 4-bit codes + an fp16 scale per block of 32 (Q4_0, int4 b32)


# ------------------------------------------------------------------------------ machine


def peak_rss_mib() -> float:
    """VmHWM of this process (not ru_maxrss, which Linux carries over from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def io_read_bytes() -> int:
    """Bytes this process caused to be read from storage (page-cache hits excluded)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def memory_bandwidth_gbs(repeats: int = 5) -> float:
    """Best of a few numpy sums over 1 GiB: the read bandwidth a GEMV-bound decode sees."""
    a = np.ones(2**28, dtype=np.float32)
    a.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def drop_file_cache(path: Path) -> None:
    """Drop one file's clean pages from the page cache (ours only; nothing global)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_bandwidth(path: Path, chunk: int, seconds: float = 4.0) -> dict:
    """Read bandwidth from storage: sequential 8 MiB reads and random ``chunk``-sized reads of
    ``path`` after dropping its pages, each for about ``seconds``."""
    size = path.stat().st_size
    out = {}
    rng = np.random.default_rng(0)
    for mode in ("sequential", "random"):
        drop_file_cache(path)
        fd = os.open(path, os.O_RDONLY)
        n, t0, pos = 0, time.perf_counter(), 0
        step = 8 << 20 if mode == "sequential" else chunk
        try:
            while time.perf_counter() - t0 < seconds:
                if mode == "random":
                    pos = int(rng.integers(0, max(1, size - step)) // 4096 * 4096)
                elif pos + step > size:
                    break
                n += len(os.pread(fd, step, pos))
                pos += step
        finally:
            os.close(fd)
        out[f"{mode}_gbs"] = n / (time.perf_counter() - t0) / 1e9
    out["random_chunk_bytes"] = chunk
    drop_file_cache(path)
    return out


# ------------------------------------------------------------------------------ model


def expert_bytes_int4(spec: syn.SyntheticSpec) -> int:
    return int(spec.expert_params() * INT4_BYTES_PER_PARAM)


def dense_bytes_int4(spec: syn.SyntheticSpec) -> dict:
    """Bytes read per token outside the experts (int4 matmuls, fp32 router), per part."""
    h, q, kv = spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    attn = (q * h + 2 * kv * h + h * q) * INT4_BYTES_PER_PARAM
    router = spec.experts * h * 4
    head = spec.vocab * h * INT4_BYTES_PER_PARAM
    return {"attention_per_layer": int(attn), "router_per_layer": router, "lm_head": int(head),
            "total": int(spec.layers * (attn + router) + head)}


def ensure_model(spec: syn.SyntheticSpec, work: Path, need_hf: bool) -> syn.Written:
    """The synthetic model under ``work``, written once per spec (a spec.json marks it done)."""
    marker = work / "spec.json"
    want = json.dumps(asdict(spec), sort_keys=True)
    w = syn.Written(hf_dir=work / "hf" if need_hf else None,
                    gguf={"Q4_0": work / "model-Q4_0.gguf"})
    if marker.is_file() and marker.read_text() == want and (not need_hf or (work / "hf").is_dir()):
        return w
    t = time.perf_counter()
    syn.write_synthetic(spec, work, hf=need_hf, gguf_types=("Q4_0",), progress=True)
    marker.write_text(want)
    print(f"synthetic model written in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return w


# ------------------------------------------------------------------------------ simulator


def simulate_rows(trace, budgets, warmup: int) -> list[dict]:
    from qcoder_ds.runtime.cache_simulator import sweep

    return sweep(trace, list(budgets), warmup=warmup)


def numpy_trace(spec: syn.SyntheticSpec, tokens: int):
    from qcoder_ds.runtime.moe_trace import Trace

    ids = syn.token_stream(spec, tokens)
    return Trace(spec.layers, spec.experts, spec.top_k, f"synthetic-numpy-{spec.layers}L",
                 syn.numpy_trace(spec, ids))


# ------------------------------------------------------------------------------ workers


def worker_qcoder(args) -> dict:
    from qcoder_ds.runtime.ort_backend import load_onnx

    ids = json.loads(Path(args.ids).read_text())
    io0 = io_read_bytes()
    t = time.perf_counter()
    # fully resident: "all", which lets the one-graph mode hold its own copy of the experts
    ram = "all" if args.budget >= 1 else f"{args.budget * 100:g}%"
    s = load_onnx(Path(args.export), threads=args.threads, expert_ram=ram,
                  policy=args.policy, prefetch=not args.no_prefetch,
                  trace=args.trace or None, fused=False if args.no_fused else None,
                  decode_kernel=False if args.no_decode_kernel else None)
    load_s = time.perf_counter() - t
    kernel = bool(getattr(s, "decode_kernel", False))  # (close() stops it)
    warm = args.warmup
    for tok in ids[:warm]:
        s.forward(np.array([tok], dtype=np.int64))
    before = s.cache_stats()
    io1 = io_read_bytes()
    t = time.perf_counter()
    for tok in ids[warm:]:
        s.forward(np.array([tok], dtype=np.int64))
    dt = time.perf_counter() - t
    after = s.cache_stats()
    io2 = io_read_bytes()
    s.close()
    n = len(ids) - warm
    counters = ("hits", "misses", "waited", "loads", "bytes_read", "evictions",
                "prefetch_predicted", "prefetch_predicted_used", "prefetch_loaded",
                "prefetch_loaded_used", "prefetch_errors", "build_seconds")
    delta = {k: after[k] - before[k] for k in counters if k in after and k in before}
    req = delta.get("hits", 0) + delta.get("misses", 0)
    hidden = delta.get("waited", 0) + delta.get("prefetch_loaded_used", 0)
    return {
        "budget": args.budget, "policy": args.policy, "prefetch": not args.no_prefetch,
        "fused": not args.no_fused and args.budget >= 1,
        "decode_kernel": kernel,
        "load_s": load_s, "decode_tok_s": n / dt, "peak_rss_mib": peak_rss_mib(),
        "tokens_timed": n,
        "cache_bytes_read_per_token": delta.get("bytes_read", 0) / n,
        "storage_bytes_read_per_token": (io2 - io1) / n,
        "storage_bytes_read_at_load": io1 - io0,
        "hit_rate": delta.get("hits", 0) / req if req else None,
        "prefetch_accuracy": (delta["prefetch_loaded_used"] / delta["prefetch_loaded"]
                              if delta.get("prefetch_loaded") else None),
        "prediction_accuracy": (delta["prefetch_predicted_used"] / delta["prefetch_predicted"]
                                if delta.get("prefetch_predicted") else None),
        # of the experts that had to be loaded, the share the prefetcher loaded ahead of the
        # request (the read it hid, wholly or partly)
        "loads_hidden_by_prefetch": (hidden / (hidden + delta.get("misses", 0))
                                     if hidden + delta.get("misses", 0) else None),
        "cache_delta": delta,
    }


def worker_llama(args) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    if args.no_repack:
        # llama.cpp repacks Q4_0 for AVX2 into anonymous memory at load, so the weights leave
        # the mmap and the page cache stops being its expert cache; keep them in the mapping
        lc = llama_cpp.llama_cpp  # the module llama.py calls it from
        default = lc.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        lc.llama_model_default_params = params
    ids = json.loads(Path(args.ids).read_text())
    io0 = io_read_bytes()
    t = time.perf_counter()
    llm = Llama(args.gguf, n_ctx=len(ids) + 8, n_batch=8, n_threads=args.threads,
                n_threads_batch=args.threads, use_mmap=True, verbose=False)
    load_s = time.perf_counter() - t
    warm = args.warmup
    for tok in ids[:warm]:
        llm.eval([tok])
    io1, f1 = io_read_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    t = time.perf_counter()
    for tok in ids[warm:]:
        llm.eval([tok])
    dt = time.perf_counter() - t
    io2, f2 = io_read_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    n = len(ids) - warm
    status = Path("/proc/self/status").read_text()
    rss = {k: int(line.split()[1]) / 1024 for line in status.splitlines()
           for k in ("RssAnon", "RssFile") if line.startswith(k + ":")}
    return {"mode": args.mode, "budget": args.budget, "repack": not args.no_repack,
            "load_s": load_s,
            "decode_tok_s": n / dt, "peak_rss_mib": peak_rss_mib(), "tokens_timed": n,
            "storage_bytes_read_per_token": (io2 - io1) / n,
            "major_faults_per_token": (f2 - f1) / n,
            "storage_bytes_read_at_load_and_warmup": io1 - io0,
            "rss_anon_mib": rss.get("RssAnon"), "rss_file_mib": rss.get("RssFile")}


# ------------------------------------------------------------------------------ cgroup


class MemoryCgroup:
    """A memory-limited cgroup of our own (v2 if its memory controller is enabled, else v1),
    removed on exit; ``available()`` says why not where it cannot be made."""

    V2 = Path("/sys/fs/cgroup")
    V1 = Path("/sys/fs/cgroup/memory")

    def __init__(self, limit_bytes: int):
        self.limit = int(limit_bytes)
        name = f"qcoder_moe_bench_{os.getpid()}_{time.monotonic_ns()}"
        if (self.V2 / "cgroup.controllers").is_file() and "memory" in (
                self.V2 / "cgroup.subtree_control").read_text():
            self.path, self.limit_file = self.V2 / name, "memory.max"
        else:
            self.path, self.limit_file = self.V1 / name, "memory.limit_in_bytes"

    @staticmethod
    def available() -> str | None:
        try:
            with MemoryCgroup(1 << 30):
                return None
        except OSError as e:
            return f"no writable memory cgroup ({e.strerror or e})"

    def __enter__(self) -> MemoryCgroup:
        self.path.mkdir()
        (self.path / self.limit_file).write_text(str(self.limit))
        return self

    def join(self) -> None:
        """Put the calling process in the cgroup (a subprocess's preexec_fn)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int | None:
        for f in ("memory.max_usage_in_bytes", "memory.peak"):
            with contextlib.suppress(OSError, ValueError):
                return int((self.path / f).read_text())
        return None

    def __exit__(self, *exc) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


# ------------------------------------------------------------------------------ driver


def _run_worker(argv: list[str], cgroup: MemoryCgroup | None = None, timeout: int = 1800
                ) -> dict:
    cmd = ["nice", "-n", "10", sys.executable, str(Path(__file__).resolve()), *argv]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=cgroup.join if cgroup else None)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"rc {p.returncode}"],
                "returncode": p.returncode}
    return json.loads(p.stdout.strip().splitlines()[-1])


def projection(spec48: syn.SyntheticSpec, machine: dict, hit_rates: dict,
               build_ms: float | None) -> list[dict]:
    """Decode time per token of the 48-layer model at each budget from measured bandwidths and
    the simulator's hit rates (see the module docstring)."""
    eb = expert_bytes_int4(spec48)
    dense = dense_bytes_int4(spec48)["total"]
    routes = spec48.layers * spec48.top_k
    mem = machine["memory_bandwidth_gbs"] * 1e9
    # the slower of the two: on a VM the host's cache can make either look fast
    disk = min(machine["disk"]["random_gbs"], machine["disk"]["sequential_gbs"]) * 1e9
    rows = []
    for frac, per_policy in hit_rates.items():
        for policy, hit in per_policy.items():
            misses = routes * (1 - hit)
            mem_s = (dense + routes * eb) / mem
            read_s = misses * eb / disk
            build_s = misses * (build_ms or 0) / 1e3
            rows.append({"budget": frac, "policy": policy, "hit_rate": hit,
                         "expert_ram_gib": frac * spec48.layers * spec48.experts * eb / 2**30,
                         "misses_per_token": misses,
                         "disk_bytes_per_token": misses * eb,
                         "memory_s": mem_s, "read_s": read_s, "build_s": build_s,
                         # a miss that only reads (llama.cpp's page cache, or a prepacked blob)
                         "tok_s_read_only": 1 / (mem_s + read_s),
                         # qcoder today: a miss reads the blob (measured "build": the store's
                         # read, from the page cache, and its hash the first time)
                         "tok_s_read_and_build": 1 / (mem_s + read_s + build_s)})
    return rows


def run(args) -> dict:
    spec = syn.SyntheticSpec(layers=args.layers)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    engines = set(args.engines)
    model = ensure_model(spec, work, need_hf="qcoder" in engines)
    gguf = model.gguf["Q4_0"]
    ids = syn.token_stream(spec, args.tokens + args.warmup)
    ids_file = work / "ids.json"
    ids_file.write_text(json.dumps(ids))
    out: dict = {
        "command": " ".join(["python benchmarks/moe.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg": os.getloadavg()},
        "model": {"spec": asdict(spec), "note": "synthetic weights, Qwen3-Coder-30B-A3B "
                  "layer shapes, vocabulary cut to 32768; routing as synthetic_moe.py says",
                  "expert_bytes_int4": expert_bytes_int4(spec),
                  "experts_total_bytes_int4": expert_bytes_int4(spec) * spec.layers * spec.experts,
                  "gguf_q4_0_bytes": gguf.stat().st_size,
                  "dense_bytes_int4": dense_bytes_int4(spec)},
        "tokens": args.tokens, "warmup_tokens": args.warmup, "threads": args.threads,
        "qcoder_block_size": args.block_size,
    }
    out["machine"]["memory_bandwidth_gbs"] = memory_bandwidth_gbs()
    out["machine"]["disk"] = disk_bandwidth(gguf, expert_bytes_int4(spec))
    print(json.dumps(out["machine"]), file=sys.stderr)

    # the 48-layer routing, numpy-routed through the synthetic routers
    from qcoder_ds.runtime.cache_simulator import routing_stats

    t48 = numpy_trace(FULL, args.projection_tokens)
    sim48 = simulate_rows(t48, BUDGETS[1:], warmup=args.projection_tokens // 4)
    out["simulator_numpy_48_layers"] = {"routing": routing_stats(t48), "rows": sim48}

    build_ms = (args.previous.get("qcoder_expert_build") or {}).get("build_ms")
    if "qcoder" in engines:
        export = work / f"onnx-int4-b{args.block_size}"
        if not (export / "config.json").is_file():
            from qcoder_ds.models.checkpoint import HFCheckpoint
            from qcoder_ds.runtime.ort_backend import export_onnx

            t = time.perf_counter()
            export_onnx(HFCheckpoint(model.hf_dir), export, weights="int4", progress=True,
                        block_size=args.block_size)
            out["qcoder_export_s"] = time.perf_counter() - t
        runs = []
        trace = work / "qcoder-100.trace"
        for b in args.budgets:
            for policy, pf in ([(args.policy, "on"), (args.policy, "per-expert")] if b >= 1
                               else [(p, m) for p in args.policies for m in args.prefetch_modes]):
                argv = ["--worker", "qcoder", "--export", str(export), "--ids", str(ids_file),
                        "--budget", str(b), "--policy", policy, "--threads", str(args.threads),
                        "--warmup", str(args.warmup)]
                if pf == "off":
                    argv.append("--no-prefetch")
                if pf == "per-expert":
                    argv.append("--no-fused")
                if b >= 1:
                    argv += ["--trace", str(trace)]
                store = export / "experts.bin"
                if store.is_file():  # first loads read the disk, as after a reboot
                    drop_file_cache(store)
                r = _run_worker(argv)
                print(json.dumps(r), file=sys.stderr)
                runs.append(r)
        out["qcoder"] = runs
        with contextlib.suppress(Exception):
            from qcoder_ds.runtime.expert_store import ExpertStore
            from qcoder_ds.runtime.moe_ort import measure_expert_build
            from qcoder_ds.runtime.moe_session import config_from_meta

            meta = json.loads((export / "config.json").read_text())
            store = ExpertStore(export, meta["moe"]["export_id"])
            out["qcoder_expert_build"] = measure_expert_build(store, config_from_meta(meta))
            build_ms = out["qcoder_expert_build"]["build_ms"]
            store.close()
        if trace.is_file():
            from qcoder_ds.runtime.moe_trace import read_trace

            tr = read_trace(trace)
            out["simulator_qcoder_trace"] = {"routing": routing_stats(tr),
                                             "rows": simulate_rows(tr, BUDGETS[1:],
                                                                   warmup=args.warmup)}

    if "pairs" in engines:  # the export the qcoder engine makes (run it first)
        export = work / f"onnx-int4-b{args.block_size}"
        if not (export / "config.json").is_file():
            raise SystemExit(f"no export at {export}: run --engines qcoder first")
        out["qcoder_pairs"] = resident_budget_pairs(args, export, ids_file, gguf)

    if "simulator" in engines or "qcoder" in engines:
        tr = numpy_trace(spec, args.tokens + args.warmup)
        out["simulator_numpy"] = {"routing": routing_stats(tr),
                                  "rows": simulate_rows(tr, BUDGETS[1:], warmup=args.warmup)}

    if "llama.cpp" in engines:
        out["llama.cpp"] = run_llama(args, spec, gguf, ids_file)

    if "moefied" in engines:
        out["moefied"] = run_moefied(args, work)

    out["projection_48_layers"] = projection_section(out, sim48, build_ms)
    return out


def resident_budget_pairs(args, export: Path, ids_file: Path, gguf: Path) -> dict:
    """The bars' ratios, measured as ``--pairs`` rounds of alternating runs on the same warm
    page cache: qcoder fully resident, qcoder at 50% with the defaults (lfu-decay, prefetch
    that switches itself off) and, where llama-cpp-python is installed, llama.cpp's repacked
    Q4_0 fully resident. One run's speed moves with the machine's load (±20% here), a median
    of ratios measured minutes apart less."""
    try:
        import llama_cpp  # noqa: F401
        with open(gguf, "rb") as f:  # resident: its pages read in first
            while f.read(64 << 20):
                pass
    except ImportError:
        gguf = None
    rows = []
    for _ in range(args.pairs):
        pair = {}
        for b in (1.0, 0.5):
            r = _run_worker(["--worker", "qcoder", "--export", str(export), "--ids",
                             str(ids_file), "--budget", str(b), "--policy", "lfu-decay",
                             "--threads", str(args.threads), "--warmup", str(args.warmup)])
            pair[str(b)] = r.get("decode_tok_s")
        pair["ratio"] = pair["0.5"] / pair["1.0"] if pair["0.5"] and pair["1.0"] else None
        if gguf is not None:
            r = _run_worker(["--worker", "llama.cpp", "--gguf", str(gguf), "--ids", str(ids_file),
                             "--threads", str(args.threads), "--warmup", str(args.warmup),
                             "--mode", "resident", "--budget", "1.0"])
            pair["llama.cpp"] = r.get("decode_tok_s")
            pair["resident_vs_llama_cpp"] = (pair["1.0"] / pair["llama.cpp"]
                                             if pair["1.0"] and pair["llama.cpp"] else None)
        # our other fused path: the whole model in one ONNX Runtime graph (QMoE), decoding
        r = _run_worker(["--worker", "qcoder", "--export", str(export), "--ids", str(ids_file),
                         "--budget", "1.0", "--threads", str(args.threads),
                         "--warmup", str(args.warmup), "--no-decode-kernel"])
        pair["1.0 graph"] = r.get("decode_tok_s")
        pair["kernel_vs_graph"] = (pair["1.0"] / pair["1.0 graph"]
                                   if pair["1.0"] and pair["1.0 graph"] else None)
        if pair.get("llama.cpp") and pair["1.0 graph"]:
            pair["graph_vs_llama_cpp"] = pair["1.0 graph"] / pair["llama.cpp"]
        print(json.dumps(pair), file=sys.stderr)
        rows.append(pair)

    def median(key: str) -> float | None:
        xs = sorted(p[key] for p in rows if p.get(key) is not None)
        return xs[len(xs) // 2] if xs else None
    return {"budget": 0.5, "policy": "lfu-decay", "prefetch": "default (switches itself off)",
            "pairs": rows, "median_ratio": median("ratio"),
            "median_resident_vs_llama_cpp": median("resident_vs_llama_cpp"),
            "median_kernel_vs_graph": median("kernel_vs_graph"),
            "median_graph_vs_llama_cpp": median("graph_vs_llama_cpp")}


def projection_section(out: dict, sim48: list[dict], build_ms: float | None) -> dict:
    hit = {row["fraction"]: {n: r["hit_rate"] for n, r in row["results"].items()}
           for row in sim48}
    hit[1.0] = {"all resident": 1.0}
    return {
        "assumptions": "int4 experts (0.5625 B/param) and attention, fp32 routers, full "
                       "151936 vocabulary lm_head; memory-bound matmuls at the measured "
                       "bandwidth; each miss reads one expert at the measured random-read "
                       "bandwidth (the slower of sequential and random, since a VM's host cache "
                       "can inflate either) (and, for qcoder as it is, pays its measured build "
                       "time: the store's read from the page cache and a first-read hash); "
                       "compute, reads and builds do not overlap (prefetch would overlap some: "
                       "the time is an upper bound)",
        "expert_bytes": expert_bytes_int4(FULL),
        "dense_bytes_per_token": dense_bytes_int4(FULL)["total"],
        "qcoder_build_ms_per_expert": build_ms,
        "rows": projection(FULL, out["machine"], hit, build_ms),
    }


def run_moefied(args, work: Path) -> dict:
    """A real-weights routing trace: the embedded dense model MoEfied (models/moefy.py, E
    experts, gate-mass router, top-k), exported by the MoE exporter, decoding real code (this
    repository's cache simulator, teacher-forced) with a trace; then the simulator on it."""
    from qcoder_ds.models.moefy import MoefiedCheckpoint
    from qcoder_ds.models.sources import resolve
    from qcoder_ds.runtime.cache_simulator import routing_stats
    from qcoder_ds.runtime.moe_trace import read_trace
    from qcoder_ds.runtime.ort_backend import export_onnx

    src = resolve(args.moefied_model)
    export = work / f"moefied-{args.moefied_experts}x{args.moefied_top_k}"
    if not (export / "config.json").is_file():
        ckpt = MoefiedCheckpoint(src.checkpoint(), experts=args.moefied_experts,
                                 top_k=args.moefied_top_k, router="gate-mass")
        t = time.perf_counter()
        export_onnx(ckpt, export, weights="int4", progress=True)
        print(f"MoEfied export in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    text = (REPO / "qcoder_ds" / "runtime" / "cache_simulator.py").read_text()
    ids = src.tokenizer().encode(text)[: args.moefied_tokens]
    ids_file = work / "moefied-ids.json"
    ids_file.write_text(json.dumps(ids))
    trace = work / "moefied.trace"
    r = _run_worker(["--worker", "qcoder", "--export", str(export), "--ids", str(ids_file),
                     "--budget", "1.0", "--policy", "lru", "--threads", str(args.threads),
                     "--warmup", "1", "--trace", str(trace)])
    res: dict = {"model": args.moefied_model, "experts": args.moefied_experts,
                 "top_k": args.moefied_top_k, "router": "gate-mass", "tokens": len(ids),
                 "text": "qcoder_ds/runtime/cache_simulator.py", "run": r}
    if trace.is_file():
        tr = read_trace(trace)
        res["routing"] = routing_stats(tr)
        res["rows"] = simulate_rows(tr, (0.75, 0.5, 0.25), warmup=len(tr.tokens) // 8)
    return res


def run_llama(args, spec: syn.SyntheticSpec, gguf: Path, ids_file: Path) -> list[dict]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return [{"error": "llama-cpp-python is not installed (pip install 'qcoder-ds[bench]')"}]
    base = ["--worker", "llama.cpp", "--gguf", str(gguf), "--ids", str(ids_file),
            "--threads", str(args.threads), "--warmup", str(args.warmup)]
    runs = []
    # fully resident: the file's pages read in first, so decode reads no disk
    with open(gguf, "rb") as f:
        while f.read(64 << 20):
            pass
    r = _run_worker(base + ["--mode", "resident", "--budget", "1.0"])
    runs.append(r)
    print(json.dumps(r), file=sys.stderr)
    # the mmap-as-cache runs: weights left in the file mapping (no AVX2 repack), so the page
    # cache under the cgroup's limit is what holds the experts
    base += ["--no-repack"]
    r = _run_worker(base + ["--mode", "resident", "--budget", "1.0"])
    runs.append(r)
    print(json.dumps(r), file=sys.stderr)
    why = MemoryCgroup.available()
    if why:
        runs.append({"mode": "cgroup", "error": why})
        return runs
    experts = expert_bytes_int4(spec) * spec.layers * spec.experts
    non_expert = gguf.stat().st_size - experts
    anon = (r.get("rss_anon_mib") or 0) * 2**20  # without repack: buffers, KV, python
    for b in args.budgets:
        if b >= 1:
            continue
        limit = int(anon + non_expert + b * experts + (64 << 20))
        drop_file_cache(gguf)
        with MemoryCgroup(limit) as cg:
            res = _run_worker(base + ["--mode", "cgroup", "--budget", str(b)], cgroup=cg)
            res["cgroup_limit_bytes"] = limit
            res["cgroup_peak_bytes"] = cg.peak()
        drop_file_cache(gguf)
        print(json.dumps(res), file=sys.stderr)
        runs.append(res)
    return runs


def summary(out: dict) -> str:
    lines = []
    for key in ("simulator_numpy", "simulator_qcoder_trace", "simulator_numpy_48_layers",
                "moefied"):
        if key in out and "rows" in out[key]:
            lines.append(f"{key}: routing {json.dumps(out[key]['routing'])}")
            for row in out[key]["rows"]:
                rates = ", ".join(f"{n} {r['hit_rate']:.3f}" for n, r in row["results"].items())
                lines.append(f"  budget {row['fraction']:.0%} ({row['capacity']} experts): {rates}")
    for r in out.get("qcoder", []):
        lines.append(f"qcoder {json.dumps(r)}")
    for r in out.get("llama.cpp", []):
        lines.append(f"llama.cpp {json.dumps(r)}")
    for r in out.get("projection_48_layers", {}).get("rows", []):
        lines.append(f"48 layers projected: budget {r['budget']:.0%} {r['policy']}: "
                     f"{r['tok_s_read_only']:.2f} tok/s reading misses, "
                     f"{r['tok_s_read_and_build']:.2f} reading and building them, "
                     f"{r['disk_bytes_per_token'] / 1e6:.0f} MB/token from disk")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64, help="timed decode tokens")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--policy", default="lfu-decay", help="the policy of the 100%% run")
    ap.add_argument("--policies", nargs="+", default=["lru", "lfu-decay"],
                    help="policies run by qcoder below 100%%")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--projection-tokens", type=int, default=400)
    ap.add_argument("--moefied-model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--moefied-experts", type=int, default=8)
    ap.add_argument("--moefied-top-k", type=int, default=2)
    ap.add_argument("--moefied-tokens", type=int, default=400)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "qcoder-moe-bench"))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--reproject", action="store_true",
                    help="recompute the 48-layer projection in --out from its measurements")
    ap.add_argument("--merge", action="store_true",
                    help="update --out with the engines run, keeping the others' results")
    # worker side
    ap.add_argument("--worker", choices=["qcoder", "llama.cpp"])
    ap.add_argument("--export")
    ap.add_argument("--gguf")
    ap.add_argument("--ids")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--trace")
    ap.add_argument("--mode", default="resident")
    ap.add_argument("--no-prefetch", action="store_true")
    ap.add_argument("--pairs", type=int, default=5,
                    help="alternating runs resident / 50%% of the 'pairs' engine")
    ap.add_argument("--no-decode-kernel", action="store_true",
                    help="qcoder worker: the resident graph decodes, not the decode kernel")
    ap.add_argument("--no-fused", action="store_true",
                    help="fully resident on the per-layer path with the expert kernel, not "
                         "the one-graph QMoE model")
    ap.add_argument("--block-size", type=int, default=64,
                    help="int4 block of qcoder's export (64, the MoE default: 4.56 bits per "
                         "weight with its scales and zero points, Q4_0's 4.5; 32: 5.1)")
    ap.add_argument("--prefetch-modes", nargs="+", default=["on"], choices=["on", "off"],
                    help="budgeted qcoder runs with prefetch on, off or both")
    ap.add_argument("--no-repack", action="store_true")
    args = ap.parse_args(argv)
    if args.worker == "qcoder":
        print(json.dumps(worker_qcoder(args)))
        return 0
    if args.worker == "llama.cpp":
        print(json.dumps(worker_llama(args)))
        return 0
    if args.reproject:  # the projection again from a results file's measurements
        out = json.loads(Path(args.out).read_text())
        out["projection_48_layers"] = projection_section(
            out, out["simulator_numpy_48_layers"]["rows"],
            (out.get("qcoder_expert_build") or {}).get("build_ms"))
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(summary(out))
        return 0
    args.previous = {}
    if args.merge and Path(args.out).is_file():
        args.previous = json.loads(Path(args.out).read_text())
    out = run(args)
    if args.merge:  # keep the engines not rerun; the newest run's machine and projection
        out = {**args.previous, **out,
               "commands": [*args.previous.get("commands", [args.previous.get("command")]),
                            out["command"]]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(summary(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
