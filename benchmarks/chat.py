"""Chat latency through the real server: send → first streamed token, send → checked cell.

Starts ``jupyter server`` as a subprocess with the chat extension (its own config, data and
root folders, a random token and port), starts a kernel through the REST API, loads
examples/data/sales.csv in it as ``sales`` over the kernel's own websocket, then asks the
chat (WebSocket ``qcoder/chat``, ``kernel_id`` set) one request at a time, as a sidebar user
would: the kernel snapshot, the queue, the model and the sandboxed check are all in the
measured time. "First token" is the model's first token (the answer's opening, a code fence
and imports, is sent before the model starts: ``first_shown_s``). One warm-up request (it
loads the engine) is not counted. Writes benchmarks/results/chat.json (median and p90 of N
requests).

    .venv/bin/python benchmarks/chat.py [--n 6] [--out FILE]
    QCODER_MODEL=qwen2.5-coder-0.5b-instruct .venv/bin/python benchmarks/chat.py --n 3

The model is the default ``qcoder_ds.models.choice`` picks (``QCODER_MODEL`` overrides).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WARM_UP = "number of rows of sales per region"
REQUESTS = [  # the pandas and plot requests of benchmarks/copilot.py, in its order
    "total revenue per region",
    "revenue per region for 2023 as a bar chart, largest first",
    "average units per product",
    "the 5 orders with the largest revenue",
    "monthly revenue as a line chart",
    "share of revenue per region in percent",
]
SETUP = ("import pandas as pd\n"
         f"sales = pd.read_csv({str(ROOT / 'examples/data/sales.csv')!r}, "
         "parse_dates=['order_date'])\n")


def _openings() -> set[str]:
    from qcoder_ds.copilot.pipeline import Copilot
    from qcoder_ds.copilot.tasks import Task

    return {Copilot._prefix(t) for t in Task} - {""}


OPENINGS = _openings()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, port: int, token: str) -> subprocess.Popen:
    config = tmp / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"qcoder_ds.server": True}}}))
    (tmp / "root").mkdir()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(tmp / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    cmd = [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
           "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={tmp / 'root'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root
        cmd.append("--allow-root")
    return subprocess.Popen(cmd, env=env, stdout=open(tmp / "server.log", "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)


async def wait_ready(base: str, token: str, proc: subprocess.Popen, limit_s: float = 120):
    from tornado.httpclient import AsyncHTTPClient

    client = AsyncHTTPClient()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited; see its log")
        try:
            r = await client.fetch(f"{base}api/status", headers=_auth(token), raise_error=False)
            if r.code == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"the server did not answer within {limit_s:.0f} s")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def start_kernel(base: str, token: str) -> str:
    from tornado.httpclient import AsyncHTTPClient
    from tornado.websocket import websocket_connect

    r = await AsyncHTTPClient().fetch(f"{base}api/kernels", method="POST",
                                      body=json.dumps({"name": "python3"}),
                                      headers=_auth(token))
    kid = json.loads(r.body)["id"]
    session = uuid.uuid4().hex
    ws = await websocket_connect(f"{base.replace('http', 'ws', 1)}api/kernels/{kid}/channels"
                                 f"?session_id={session}&token={token}")
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "bench",
                   "session": session, "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": SETUP, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.read_message(), 300))
        if msg.get("parent_header", {}).get("msg_id") == msg_id and \
                msg["header"]["msg_type"] == "execute_reply":
            if msg["content"]["status"] != "ok":
                raise SystemExit(f"loading the data failed: {msg['content']}")
            break
    ws.close()
    return kid


async def ask(ws, request: str, kid: str) -> dict:
    """One request; times measured here, from the send, as the sidebar sees them."""
    job = uuid.uuid4().hex[:8]
    sent = time.perf_counter()
    ws.write_message(json.dumps({"type": "ask", "id": job, "request": request,
                                 "action": "ask", "notebook_path": "bench.ipynb",
                                 "kernel_id": kid, "cell": None, "selection": None,
                                 "model": None}))
    first = shown = None
    while True:
        event = json.loads(await asyncio.wait_for(ws.read_message(), 900))
        if event.get("id") != job:
            continue
        if event["type"] == "token":
            if shown is None:
                shown = time.perf_counter() - sent
            # the answer's opening (the code fence and imports) is sent before the model
            # runs; the first token the model wrote is the one after it
            if first is None and event["text"] not in OPENINGS:
                first = time.perf_counter() - sent
        if event["type"] in ("done", "error", "stopped"):
            done = time.perf_counter() - sent
            answer = event.get("answer") or {}
            return {"request": request, "event": event["type"], "ok": answer.get("ok", False),
                    "task": answer.get("task"), "first_token_s": round(first or 0, 2),
                    "first_shown_s": round(shown or 0, 2),
                    "done_s": round(done, 2),
                    "server_first_token_s": answer.get("first_token_s"),
                    "server_total_s": answer.get("total_s"),
                    "repairs": (answer.get("metadata") or {}).get("repairs"),
                    "message": event.get("message"),
                    "cell": answer.get("cell", "")}


def percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def run(args: argparse.Namespace) -> dict:
    from tornado.httpclient import AsyncHTTPClient
    from tornado.websocket import websocket_connect

    from qcoder_ds.models.choice import default_model

    tmp = Path(tempfile.mkdtemp(prefix="qcoder-chat-bench-"))
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}/"
    proc = start_server(tmp, port, token)
    try:
        await wait_ready(base, token, proc)
        kid = await start_kernel(base, token)
        ws = await websocket_connect(f"ws://127.0.0.1:{port}/qcoder/chat?token={token}")
        t0 = time.perf_counter()
        warm = await ask(ws, WARM_UP, kid)
        warm_s = time.perf_counter() - t0
        print(f"warm-up (loads the engine): {warm_s:.1f} s ({warm['event']})", flush=True)
        rows = []
        for i in range(args.n):
            row = await ask(ws, REQUESTS[i % len(REQUESTS)], kid)
            rows.append(row)
            print(f"{row['done_s']:6.1f}s first {row['first_token_s']:5.1f}s "
                  f"{row['event']} ok={row['ok']} {row['request']}", flush=True)
        r = await AsyncHTTPClient().fetch(f"{base}qcoder/settings", headers=_auth(token))
        model = json.loads(r.body)["model"]
        ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    ftt = [r["first_token_s"] for r in rows if r["event"] == "done"]
    shown = [r["first_shown_s"] for r in rows if r["event"] == "done"]
    done = [r["done_s"] for r in rows if r["event"] == "done"]
    stat = lambda xs: {"median": round(statistics.median(xs), 2),  # noqa: E731
                       "p90": round(percentile(xs, 0.9), 2)} if xs else None
    return {
        "benchmark": "chat latency through the Jupyter server (WebSocket qcoder/chat)",
        "model": model, "default_choice": default_model().why, "requests": len(rows),
        "warm_up_s": round(warm_s, 2),
        "first_token_s": stat(ftt), "first_shown_s": stat(shown), "done_s": stat(done),
        "answered": sum(r["event"] == "done" for r in rows),
        "passed_checks": sum(bool(r["ok"]) for r in rows),
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_now": os.getloadavg()[0]},
        "command": " ".join(["benchmarks/chat.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6, help="measured requests (after the warm-up)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/chat.json")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = args.out.with_suffix(".json.tmp")
    part.write_text(json.dumps(result, indent=2))
    part.replace(args.out)
    print(json.dumps({k: result[k] for k in ("model", "first_token_s", "done_s", "answered",
                                              "passed_checks")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
