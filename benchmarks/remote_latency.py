"""Copilot latency through a model server against the local engine, on the same requests.

Starts llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) on a free
localhost port with the embedded 0.5B GGUF, loads the local engine (the same model, ONNX
Runtime int4), and asks the copilot the requests of ``benchmarks/copilot.py`` through each,
interleaved (local then server, then server then local, ...) so both see the same load: time
to first token and time to a checked cell. Also measures how well the local Qwen2.5 tokenizer
counts the server's tokens (the fallback where a server has no tokenizer endpoint) on the
prompts the copilot sent, against the chars/3.5 estimate.

On one machine the server and the local engine use the same cores (2 threads each), so the
figures are a ratio, not what a lab server gives a class. Writes
benchmarks/results/remote-latency.json.

    python benchmarks/remote_latency.py [--limit 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = "qwen2.5-coder-0.5b-instruct"


def _requests() -> list[tuple[str, str | None]]:
    """The requests of benchmarks/copilot.py, so the figures compare with its."""
    spec = importlib.util.spec_from_file_location("bench_copilot", ROOT / "benchmarks" /
                                                  "copilot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.REQUESTS)


def _start_server(gguf: str, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", MODEL,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
             "--n_threads", str(threads), "--n_threads_batch", str(threads)],
            stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/v1"


def _write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="first N requests only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/remote-latency.json")
    args = ap.parse_args(argv)

    import pandas as pd

    from qcoder_ds.copilot.context import approx_tokens
    from qcoder_ds.copilot.pipeline import Copilot, Options
    from qcoder_ds.copilot.tasks import Task
    from qcoder_ds.engine import Engine
    from qcoder_ds.models.sources import resolve
    from qcoder_ds.remote_engine import RemoteEngine, wait_until_ready

    sales = pd.read_csv(ROOT / "examples/data/sales.csv", parse_dates=["order_date"])
    tmp = Path(tempfile.mkdtemp(prefix="qcoder-bench-remote-"))
    conn = sqlite3.connect(tmp / "sales.sqlite")
    sales.to_sql("orders", conn, index=False)
    ns = {"sales": sales, "conn": conn, "pd": pd}

    gguf = str(resolve(MODEL).path)
    t0 = time.perf_counter()
    proc, url = _start_server(gguf, args.threads, tmp / "server.log")
    try:
        remote = RemoteEngine.connect(f"openai:{MODEL}@{url}")
        wait_until_ready(remote, timeout_s=300)
        server_load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        local = Engine.load(MODEL, threads=args.threads, progress=False)
        local_load_s = time.perf_counter() - t0
        copilots = {"local": Copilot(local, model=MODEL),
                    "server": Copilot(remote, model=remote.name)}
        rows: list[dict] = []
        counts: list[dict] = []
        for i, (request, flag) in enumerate(_requests()[: args.limit]):
            order = ("local", "server") if i % 2 == 0 else ("server", "local")
            row: dict = {"request": request}
            for which in order:
                ans = copilots[which].ask(request, ns, Options(task=Task(flag) if flag
                                                              else None))
                row[which] = {"ok": ans.ok, "repairs": ans.repairs,
                              "first_token_s": round(ans.first_token_s or 0, 2),
                              "checked_cell_s": round(ans.total_s, 2)}
                if which == "server" and ans.prompt is not None:
                    for m in ans.prompt.messages:
                        n_server = len(remote.server_tokens(m["content"]) or [])
                        counts.append({"server": n_server,
                                       "local": len(remote._local().encode(m["content"])),
                                       "approx": approx_tokens(m["content"])})
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write(args.out, _summary(rows, counts, server_load_s, local_load_s, args,
                                      remote))
        for cp in copilots.values():
            if cp.sandbox is not None:
                cp.sandbox.close()
        result = _summary(rows, counts, server_load_s, local_load_s, args, remote)
        _write(args.out, result)
        print(json.dumps({k: result[k] for k in ("ratio_server_over_local", "passed_checks",
                                                 "token_counts")}))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


def _summary(rows: list[dict], counts: list[dict], server_load_s: float,
             local_load_s: float, args, remote) -> dict:
    med = {w: {k: _median([r[w][k] for r in rows]) for k in ("first_token_s",
                                                             "checked_cell_s")}
           for w in ("local", "server")}
    ratio = {k: round(med["server"][k] / med["local"][k], 2) if med["local"][k] else None
             for k in ("first_token_s", "checked_cell_s")}
    exact = sum(c["server"] == c["local"] for c in counts)
    approx_err = [abs(c["approx"] - c["server"]) / c["server"] for c in counts if c["server"]]
    return {
        "benchmark": "copilot latency through a model server vs the local engine",
        "model": MODEL, "server": "llama-cpp-python 0.3.36 (python -m llama_cpp.server), "
                                  "same GGUF, n_ctx 4096",
        "local": "qcoder Engine, ONNX Runtime int4", "threads": args.threads,
        "requests": len(rows), "load_s": {"server": round(server_load_s, 2),
                                          "local": round(local_load_s, 2)},
        "median": med, "ratio_server_over_local": ratio,
        "passed_checks": {w: sum(r[w]["ok"] for r in rows) for w in ("local", "server")},
        "token_counts": {"texts": len(counts), "local_equals_server": exact,
                         "token_source": remote.token_source,
                         "approx_mean_abs_rel_error": round(statistics.mean(approx_err), 3)
                         if approx_err else None},
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_now": round(os.getloadavg()[0], 2)},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "server and local engine share one machine's cores: a ratio, not absolute",
    }


if __name__ == "__main__":
    raise SystemExit(main())
