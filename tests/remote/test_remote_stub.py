"""What llama.cpp's server cannot be made to do: answer 429, or accept a request and then say
nothing. A tiny local HTTP server stands in for exactly those two; everything else is tested
against the real server (test_remote_server.py). Also the model-name and stop-string rules,
which need no server."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qcoder_ds.remote_engine import (
    BUSY_RETRIES,
    RemoteEngine,
    RemoteEngineError,
    ServerBusy,
    ServerTimeout,
    StreamBroken,
    _apply_stops,
    is_remote,
    parse_spec,
)
from qcoder_ds.runtime.sampler import SamplingParams

ASK = [{"role": "user", "content": "hello"}]


class _Stub(BaseHTTPRequestHandler):
    mode = "busy"
    hits: list[str] = []
    release = threading.Event()

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        type(self).hits.append(self.headers.get("Authorization", ""))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "busy":
            body = b'{"error": {"message": "too many requests", "type": "rate_limit"}}'
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.mode == "stall":  # one piece of an answer, then nothing: a timeout mid-way
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n')
            self.wfile.flush()
            self.release.wait(30)
        else:  # "silent": take the request, then send nothing until the test ends
            self.release.wait(30)


@pytest.fixture
def stub():
    _Stub.hits = []
    _Stub.release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    _Stub.release.set()
    httpd.shutdown()
    httpd.server_close()


def _engine(stub, monkeypatch, **kw) -> RemoteEngine:
    monkeypatch.setenv("QCODER_API_KEY", "k1")
    return RemoteEngine.connect(f"openai:m@http://127.0.0.1:{stub.server_address[1]}/v1", **kw)


def test_429_is_asked_again_then_a_clear_error(stub, monkeypatch):
    _Stub.mode = "busy"
    engine = _engine(stub, monkeypatch)
    with pytest.raises(ServerBusy, match=r"busy \(429 Too Many Requests\).*run the cell again"):
        list(engine.chat(ASK, SamplingParams(max_new_tokens=4)))
    assert _Stub.hits == ["Bearer k1"] * (1 + BUSY_RETRIES)


def test_a_silent_server_times_out_with_a_clear_error(stub, monkeypatch):
    _Stub.mode = "silent"
    engine = _engine(stub, monkeypatch, timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(ServerTimeout, match=r"sent nothing for 1 s.*QCODER_REMOTE_TIMEOUT"):
        list(engine.chat(ASK))
    assert time.monotonic() - t0 < 10


def test_a_server_stalling_mid_answer_times_out_keeping_what_arrived(stub, monkeypatch):
    _Stub.mode = "stall"
    engine = _engine(stub, monkeypatch, timeout_s=1.0)
    got = []
    with pytest.raises(StreamBroken, match="sent nothing for 1 s") as info:
        for piece in engine.chat(ASK):
            got.append(piece)
    assert got == ["Hel"] and info.value.partial == "Hel"


def test_model_names_and_where_the_key_may_come_from(monkeypatch):
    spec = parse_spec("openai:qwen2.5-coder@http://lab-pc:8000/v1")
    assert (spec.model, spec.base_url, spec.root) == ("qwen2.5-coder", "http://lab-pc:8000/v1",
                                                      "http://lab-pc:8000")
    assert parse_spec("openai:org@model@https://h/v1/").model == "org@model"
    assert is_remote("openai:x") and not is_remote("qwen2.5-coder-0.5b-instruct")
    with pytest.raises(RemoteEngineError, match="put the key in QCODER_API_KEY"):
        parse_spec("openai:m@http://sk-secret@lab-pc:8000/v1")
    monkeypatch.delenv("QCODER_REMOTE_URL", raising=False)
    with pytest.raises(RemoteEngineError, match="names no server"):
        parse_spec("openai:m")
    monkeypatch.setenv("QCODER_REMOTE_URL", "http://lab-pc:8000/v1")
    assert parse_spec("openai:m").base_url == "http://lab-pc:8000/v1"
    monkeypatch.delenv("QCODER_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-paid-key")  # never sent to a class server
    engine = RemoteEngine.connect("openai:m@http://lab-pc:8000/v1")
    assert "Authorization" not in engine._http.headers


def test_sampling_parameters_map_onto_the_request():
    engine = RemoteEngine(parse_spec("openai:m@http://h:1/v1"))
    body = engine.request_body(ASK, SamplingParams(max_new_tokens=7, temperature=0.5,
                                                   top_p=0.9, top_k=20, seed=3,
                                                   repetition_penalty=1.1, stop=("```",)))
    assert body["max_tokens"] == 7 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["top_k"] == 20 and body["seed"] == 3 and body["stop"] == ["```"]
    assert body["repeat_penalty"] == body["repetition_penalty"] == 1.1
    assert body["stream"] is True and body["model"] == "m"
    plain = engine.request_body(ASK, SamplingParams())
    assert {"top_k", "seed", "stop", "repeat_penalty", "stop_token_ids"}.isdisjoint(plain)


@pytest.mark.parametrize("pieces,stops,shown,stopped", [
    (["abc", "``", "`d"], ("```",), "abc", True),  # a stop split over two pieces
    (["ab", "`", "x"], ("```",), "ab`x", False),  # a partial match let go
    (["SELECT 1;", "\n", "--"], (";\n", "```"), "SELECT 1", True),
])
def test_stop_strings_split_over_pieces(pieces, stops, shown, stopped):
    out, pending, hit = "", "", False
    for p in pieces:
        ready, pending, hit = _apply_stops(pending + p, stops)
        out += ready
        if hit:
            break
    if not hit:
        out += pending
    assert (out, hit) == (shown, stopped)


@pytest.mark.parametrize("pieces,prefix,shown", [
    # the model opens its own block: the stream continues the prefix after it
    (["Here:\n``", "`python\nimport pandas as pd\n", "df.sum()\n```\nDone."],
     "```python\nimport pandas as pd\n", "df.sum()\n```\nDone."),
    # a repeated prefix line split over pieces, and a line that only starts like one
    (["```sql\n", "SEL", "ECT 1;\n"], "```sql\n", "SELECT 1;\n"),
    (["```python\nimport pan", "das as pd\nimport numpy as np\nx = 1"],
     "```python\nimport pandas as pd\n", "import numpy as np\nx = 1"),
    # no fence at all: passed on whole at the end
    (["x = 1\n", "y = 2"], "```python\n", "x = 1\ny = 2"),
])
def test_a_reply_prefix_is_emulated_after_the_models_own_fence(pieces, prefix, shown):
    from qcoder_ds.remote_engine import _AfterPrefix

    gate = _AfterPrefix(prefix)
    assert "".join(gate.feed(p) for p in pieces) + gate.finish() == shown
