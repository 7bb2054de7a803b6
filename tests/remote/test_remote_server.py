"""The remote engine against a real llama-cpp-python server running the embedded 0.5B.

One server per module (started with an API key); the test that kills a server mid-stream
starts its own. Slow: the server loads the model and generates on two shared cores.
"""

from __future__ import annotations

import ast
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from real_server import KEY, MODEL, free_port, start_server

from qcoder_ds.copilot.validate import check_columns, check_names
from qcoder_ds.engine import Engine
from qcoder_ds.errors import GenerationCancelled
from qcoder_ds.remote_engine import (
    RemoteEngine,
    ServerAuthError,
    ServerUnreachable,
    StreamBroken,
)
from qcoder_ds.runtime.sampler import SamplingParams

pytestmark = pytest.mark.slow

SALES = Path(__file__).resolve().parents[2] / "examples" / "data" / "sales.csv"
ASK = [{"role": "system", "content": "You are a concise Python assistant."},
       {"role": "user", "content": "Write a Python function that returns the squares of a "
                                   "list of numbers, with a docstring."}]


def _server_text(server, messages, max_tokens: int) -> str:
    """The same request, not streamed, straight from the server (what the stream must add
    up to)."""
    r = httpx.post(server.url + "/chat/completions", trust_env=False, timeout=120,
                   headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": MODEL, "messages": messages, "max_tokens": max_tokens,
                         "temperature": 0.0, "stream": False})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def shell(server):
    IPython = pytest.importorskip("IPython")
    sh = IPython.core.interactiveshell.InteractiveShell.instance()
    sh.reset(new_session=False)
    sh.run_line_magic("load_ext", "qcoder_ds")
    sales = pd.read_csv(SALES, parse_dates=["order_date"])
    conn = sqlite3.connect(":memory:")
    sales.to_sql("orders", conn, index=False)
    sh.user_ns.update(sales=sales, conn=conn)
    yield sh
    sh._qcoder_magics.state.engines.clear()
    sh._qcoder_magics.state.copilots.clear()
    sh.user_ns.pop("sales", None)
    sh.user_ns.pop("conn", None)


@pytest.mark.parametrize("flags,request_", [
    ("--pandas", "total revenue per region"),
    ("--sql", "number of orders per sales_rep"),
])
def test_the_magic_answers_through_the_server_with_checked_cells(shell, server, keyed,
                                                                 flags, request_, capsys):
    shell.run_cell_magic("qcoder", f"{flags} --model {server.model}", request_)
    out = capsys.readouterr().out
    payloads = shell.payload_manager.read_payload()
    shell.payload_manager.clear_payload()
    cells = [p for p in payloads if p["source"] == "set_next_input"]
    assert cells, f"no cell was inserted:\n{out}"
    code = cells[-1]["text"]
    assert cells[-1]["metadata"]["qcoder"]["ok"] is True, out
    assert cells[-1]["metadata"]["qcoder"]["model"] == server.model
    tree = ast.parse(code)
    ns = shell.user_ns
    assert check_names(tree, ns) == [] and check_columns(tree, ns) == []
    assert shell.run_cell(code, store_history=False).success
    engine = shell._qcoder_magics.state.engines[(server.model, "onnx", "int4", None)]
    assert isinstance(engine, RemoteEngine)


def test_stream_adds_up_to_the_servers_answer_in_order(server, keyed):
    engine = Engine.load(server.model)
    assert isinstance(engine, RemoteEngine)
    stream = engine.chat(ASK, SamplingParams(max_new_tokens=24, temperature=0.0))
    pieces = list(stream)
    assert len(pieces) > 5  # streamed, not one block at the end
    assert "".join(pieces) == _server_text(server, ASK, 24) == stream.text
    assert stream.finish_reason in ("eos", "length")


def test_stop_strings_end_the_answer_before_them(server, keyed):
    engine = RemoteEngine.connect(server.model)
    full = "".join(engine.chat(ASK, SamplingParams(max_new_tokens=16)))
    assert "square" in full[5:]  # "```python\ndef square_numbers(..." from the 0.5B
    stream = engine.chat(ASK, SamplingParams(max_new_tokens=16, stop=("square",)))
    text = "".join(stream)
    assert text == full[:full.index("square")] and stream.finish_reason == "stop"


def test_cancel_stops_within_a_second_and_frees_the_server(server, keyed):
    engine = RemoteEngine.connect(server.model)
    cancel = threading.Event()
    long = [{"role": "user", "content": "Count from 1 to 2000, one number per line."}]
    stream = engine.chat(long, SamplingParams(max_new_tokens=3000), cancel)
    got = [next(stream)]
    set_at: list[float] = []

    def press_stop() -> None:
        set_at.append(time.monotonic())
        cancel.set()

    timer = threading.Timer(1.0, press_stop)
    timer.start()
    with pytest.raises(GenerationCancelled):
        for piece in stream:
            got.append(piece)
    noticed = time.monotonic()
    timer.join()
    assert stream.finish_reason == "cancelled" and len(got) > 1
    assert noticed - set_at[0] <= 1.0  # the user's stop is honoured within a second
    # the server stopped generating: a short request is answered at once, not after the
    # 3000 tokens the cancelled one asked for (llama-cpp-python serves one at a time)
    t0 = time.monotonic()
    short = "".join(engine.chat(ASK, SamplingParams(max_new_tokens=5)))
    assert short and time.monotonic() - t0 < 60


def test_wrong_or_missing_key_is_a_clear_error(server, monkeypatch):
    monkeypatch.setenv("QCODER_API_KEY", "not-the-key")
    engine = RemoteEngine.connect(server.model)
    with pytest.raises(ServerAuthError, match="401.*key in QCODER_API_KEY is not the server's"):
        list(engine.chat(ASK))
    monkeypatch.delenv("QCODER_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # never read: it is not the class's key
    engine = RemoteEngine.connect(server.model)
    with pytest.raises(ServerAuthError, match="QCODER_API_KEY is not set"):
        list(engine.chat(ASK))


def test_a_refused_port_is_a_clear_error_in_the_notebook(shell, keyed, capsys):
    name = f"openai:{MODEL}@http://127.0.0.1:{free_port()}/v1"
    engine = RemoteEngine.connect(name)
    with pytest.raises(ServerUnreachable, match="cannot reach .* is the server running"):
        list(engine.chat(ASK))
    before = dict(shell.user_ns)
    shell.run_cell_magic("qcoder", f"--pandas --model {name}", "total revenue per region")
    out = capsys.readouterr().out
    assert "qcoder: cannot reach the model server at http://127.0.0.1:" in out
    assert "Traceback" not in out
    assert shell.user_ns["sales"] is before["sales"]  # the notebook's state is as it was


def test_token_counts_are_the_servers(server, keyed):
    engine = RemoteEngine.connect(server.model)
    texts = ["df.groupby('region')['revenue'].sum()", "SELECT COUNT(*) FROM orders;",
             "Überschrift — 合计 ✓\n\tindent", SALES.read_text()[:3000]]
    for text in texts:
        assert engine.count_tokens(text) == len(engine.server_tokens(text))
    assert "checked equal" in engine.token_source
    assert engine.max_context == 4096  # llama-cpp-python does not say: the default


def test_a_server_killed_mid_stream_keeps_what_arrived(tmp_path, keyed):
    own = start_server(tmp_path)
    try:
        engine = RemoteEngine.connect(own.model)
        long = [{"role": "user", "content": "Count from 1 to 2000, one number per line."}]
        stream = engine.chat(long, SamplingParams(max_new_tokens=3000))
        got = [next(stream), next(stream), next(stream)]
        os.killpg(own.proc.pid, signal.SIGKILL)
        with pytest.raises(StreamBroken, match="stopped in the middle of the answer") as info:
            for piece in stream:
                got.append(piece)
        assert info.value.partial == "".join(got) and len(info.value.partial) > 0
        own.proc.wait(timeout=30)
        with pytest.raises(ServerUnreachable, match="cannot reach"):  # and then it is gone
            list(engine.chat(ASK))
    finally:
        own.stop()
