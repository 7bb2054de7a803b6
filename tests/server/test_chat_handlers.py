"""The chat's endpoints on a real Jupyter Server: auth, XSRF, streaming, stop, the queue,
settings, models and history (the model is scripted; see test_chat_kernel.py for kernels and
the real model)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from chat_helpers import MODEL, PacedEngine, ask, receive, until, use
from tornado.httpclient import HTTPClientError

from qcoder_ds.server.handlers import SETTINGS_KEY

MAKE = "```python\nimport pandas as pd\nnumbers = pd.DataFrame({'n': [1, 2, 3]})\nnumbers\n```"


# ---------------------------------------------------------------- models and settings


async def test_models_lists_the_catalogue_and_the_default(jp_fetch, chat):
    r = await jp_fetch("qcoder", "models")
    body = json.loads(r.body)
    by_name = {m["name"]: m for m in body["models"]}
    assert body["current"] == MODEL == "qwen2.5-coder-0.5b-instruct"
    assert by_name[MODEL]["default"] is True and "QCODER_MODEL" in by_name[MODEL]["why"]
    assert by_name[MODEL]["installed"] is True  # its parts are installed in this venv
    assert by_name["qwen2.5-coder-1.5b-instruct"]["default"] is False
    assert [m for m in body["models"] if m["default"]] == [by_name[MODEL]]


async def test_settings_get_put_persist_and_refuse_unknown_model(jp_fetch, chat):
    r = await jp_fetch("qcoder", "settings")
    assert json.loads(r.body) == {"model": MODEL, "repairs": 0, "check": False}
    r = await jp_fetch("qcoder", "settings", method="PUT",
                       body=json.dumps({"repairs": 3, "check": True}))
    assert json.loads(r.body) == {"model": MODEL, "repairs": 3, "check": True}
    assert json.loads(chat.settings_store.file.read_text())["repairs"] == 3  # on disk
    r = await jp_fetch("qcoder", "settings")
    assert json.loads(r.body)["repairs"] == 3

    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("qcoder", "settings", method="PUT",
                       body=json.dumps({"model": "qwen2.5-coder-0.5b-instrct"}))
    assert e.value.code == 400
    message = json.loads(e.value.response.body)["message"]
    assert message.startswith("unknown model 'qwen2.5-coder-0.5b-instrct' (did you mean "
                              "'qwen2.5-coder-0.5b-instruct'")
    assert "; known: qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct" in message

    for bad, said in (({"repairs": -1}, "repairs must be"), ({"check": "yes"}, "check must"),
                      ({"colour": 1}, "unknown setting(s) 'colour'")):
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch("qcoder", "settings", method="PUT", body=json.dumps(bad))
        assert e.value.code == 400 and said in json.loads(e.value.response.body)["message"]
    r = await jp_fetch("qcoder", "settings")  # a refused change changed nothing
    assert json.loads(r.body) == {"model": MODEL, "repairs": 3, "check": True}


# ---------------------------------------------------------------- authentication and XSRF


@pytest.mark.parametrize("method,parts,body", [
    ("GET", ("qcoder", "models"), None), ("GET", ("qcoder", "settings"), None),
    ("PUT", ("qcoder", "settings"), "{}"), ("GET", ("qcoder", "history"), None),
    ("DELETE", ("qcoder", "history"), None), ("POST", ("qcoder", "chat", "x", "stop"), "")])
async def test_http_endpoints_refuse_a_request_without_a_valid_token(jp_fetch, chat, method,
                                                                     parts, body):
    for auth in ("", "token not-the-token"):
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch(*parts, method=method, body=body, params={"path": "a.ipynb"},
                           headers={"Authorization": auth}, allow_nonstandard_methods=True)
        assert e.value.code in (401, 403)


async def test_websocket_refuses_a_connection_without_a_valid_token(jp_ws_fetch, chat,
                                                                    jp_serverapp):
    for auth in ("", "token not-the-token"):
        with pytest.raises(HTTPClientError) as e:
            await jp_ws_fetch("qcoder", "chat", headers={"Authorization": auth})
        assert e.value.code in (401, 403)
    # the token in the query string, as a browser passes it, is accepted
    token = jp_serverapp.identity_provider.token
    ws = await jp_ws_fetch("qcoder", "chat", headers={"Authorization": ""},
                           params={"token": token})
    ws.write_message("{}")
    assert (await receive(ws))["type"] == "error"
    ws.close()


async def test_cookie_authenticated_post_needs_the_xsrf_token(jp_fetch, chat, jp_serverapp):
    """A browser's request carries the login cookie: without the XSRF cookie and header a
    page on another site could send it, so it is refused; with them it goes through."""
    token = jp_serverapp.identity_provider.token
    r = await jp_fetch("qcoder", "settings", params={"token": token},
                       headers={"Authorization": ""})
    cookies = [c.split(";", 1)[0] for c in r.headers.get_list("Set-Cookie")]
    login = [c for c in cookies if c.startswith("username-")]
    assert login, cookies
    headers = {"Authorization": "", "Cookie": "; ".join(login)}
    r = await jp_fetch("qcoder", "settings", headers=headers)  # the cookie authenticates
    assert json.loads(r.body)["model"] == MODEL
    for method, parts, body in (("POST", ("qcoder", "chat", "nope", "stop"), ""),
                                ("PUT", ("qcoder", "settings"), '{"repairs": 5}')):
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch(*parts, method=method, body=body, headers=dict(headers))
        assert e.value.code == 403, parts
    assert chat.settings()["repairs"] == 0  # the refused PUT changed nothing
    xsrf = "2|abcdef01|0123456789abcdef0123456789abcdef|1700000000"
    ok = {"Authorization": "", "Cookie": "; ".join(login + [f"_xsrf={xsrf}"]),
          "X-XSRFToken": xsrf}
    r = await jp_fetch("qcoder", "settings", method="PUT", body='{"repairs": 5}', headers=ok)
    assert json.loads(r.body)["repairs"] == 5
    with pytest.raises(HTTPClientError) as e:  # past the XSRF check: no such request
        await jp_fetch("qcoder", "chat", "nope", "stop", method="POST", body="", headers=ok)
    assert e.value.code == 404


# ---------------------------------------------------------------- the socket


async def test_tokens_stream_before_done_and_done_carries_provenance(jp_ws_fetch, chat):
    engine = use(chat, PacedEngine([MAKE], delay=0.01))
    ws = await jp_ws_fetch("qcoder", "chat")
    ws.write_message(json.dumps(ask("create a dataframe with the numbers 1 to 3", id="a1")))
    events = await until(ws, "a1", "done", "error")
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["queued", "started"] and events[0]["position"] == 0
    assert kinds[-1] == "done", events[-1]
    assert kinds.count("token") >= 5 and kinds.index("token") < kinds.index("done")
    streamed = "".join(e["text"] for e in events if e["type"] == "token")
    assert "numbers = pd.DataFrame({'n': [1, 2, 3]})" in streamed
    answer = events[-1]["answer"]
    assert answer["task"] == "pandas" and answer["ok"] is True, answer
    assert answer["cell"].startswith(f"# qcoder ({MODEL}, pandas, ")
    assert "numbers = pd.DataFrame({'n': [1, 2, 3]})" in answer["cell"]
    meta = answer["metadata"]  # what the magic stores under metadata["qcoder"]
    assert answer["metadata_key"] == "qcoder"
    assert meta["model"] == MODEL and meta["task"] == "pandas" and meta["ok"] is True
    assert meta["checks"] == answer["checks"] and meta["checks"]["parse"] == "passed"
    assert answer["first_token_s"] is not None and answer["total_s"] >= answer["first_token_s"]
    assert len(engine.calls) == 1
    ws.close()


async def test_bad_json_and_unknown_messages_get_an_error_and_the_socket_stays_open(
        jp_ws_fetch, chat):
    use(chat, PacedEngine([MAKE]))
    ws = await jp_ws_fetch("qcoder", "chat")
    ws.write_message("{not json")
    event = await receive(ws)
    assert event["type"] == "error" and event["message"].startswith("the message is not JSON")
    ws.write_message(json.dumps({"type": "dance", "id": "d"}))
    event = await receive(ws)
    assert event == {"type": "error", "id": "d",
                     "message": "unknown message type 'dance'; types: ask, stop"}
    ws.write_message(json.dumps(ask("", id="e")))
    assert (await receive(ws))["message"].startswith("the request is empty")
    ws.write_message(json.dumps(ask("make a dataframe of 1 2 3", id="ok")))
    assert (await until(ws, "ok", "done", "error"))[-1]["type"] == "done"
    ws.close()


async def test_unknown_model_is_an_error_event(jp_ws_fetch, chat):
    engine = use(chat, PacedEngine([]))
    ws = await jp_ws_fetch("qcoder", "chat")
    ws.write_message(json.dumps(ask("make a dataframe", id="m", model="qwen2.5-coder-7b")))
    event = await receive(ws)
    assert event["type"] == "error" and event["id"] == "m"
    assert event["message"].startswith("unknown model 'qwen2.5-coder-7b'")
    assert "known: qwen2.5-coder-0.5b-instruct" in event["message"]
    assert engine.calls == [] and chat.jobs == {}
    ws.close()


async def test_stop_cancels_generation_within_a_second(jp_ws_fetch, chat):
    long = "```python\n" + "x = 1\n" * 400 + "```"  # 2,400 characters: ~7 s at this pace
    engine = use(chat, PacedEngine([long, MAKE], delay=0.02))
    ws = await jp_ws_fetch("qcoder", "chat")
    ws.write_message(json.dumps(ask("make a long dataframe", id="s")))
    await until(ws, "s", "token")
    sent = time.monotonic()
    ws.write_message(json.dumps({"type": "stop", "id": "s"}))
    events = await until(ws, "s", "stopped", "done", "error")
    assert events[-1]["type"] == "stopped"
    assert time.monotonic() - sent < 1.0
    # the generation itself ends: no more pieces are drawn from the engine
    await asyncio.sleep(0.3)
    at_stop = engine.pieces
    await asyncio.sleep(0.5)
    assert engine.pieces == at_stop < len(long) // 7 // 2
    # the worker is free again: the next request is answered
    ws.write_message(json.dumps(ask("make a dataframe of 1 2 3", id="next")))
    assert (await until(ws, "next", "done", "error"))[-1]["type"] == "done"
    ws.close()


async def test_two_notebooks_queue_with_positions_and_the_server_stays_responsive(
        jp_ws_fetch, jp_fetch, chat):
    use(chat, PacedEngine([MAKE, MAKE], delay=0.1))  # ~1.5 s each
    first, second = await jp_ws_fetch("qcoder", "chat"), await jp_ws_fetch("qcoder", "chat")
    first.write_message(json.dumps(ask("make a dataframe of 1 2 3", id="one",
                                       notebook_path="a.ipynb")))
    await until(first, "one", "started")
    second.write_message(json.dumps(ask("make a dataframe of 1 2 3", id="two",
                                        notebook_path="b.ipynb")))
    queued = await receive(second)
    assert queued == {"type": "queued", "position": 1, "id": "two"}
    positions = [queued["position"]]
    # while the first answer is generated, the server answers other requests
    r = await jp_fetch("qcoder", "settings")
    assert json.loads(r.body)["model"] == MODEL
    r = await jp_fetch("api", "status")
    assert r.code == 200
    assert chat.running is not None and chat.running.id == "one"  # still generating
    one = await until(first, "one", "done", "error")
    two = await until(second, "two", "done", "error")
    assert one[-1]["type"] == two[-1]["type"] == "done"
    positions += [e["position"] for e in two if e["type"] == "queued"]
    assert positions == [1, 0]  # told again when the first one finished
    first.close()
    second.close()


async def test_stop_over_http_removes_a_queued_request(jp_ws_fetch, jp_fetch, chat):
    use(chat, PacedEngine([MAKE], delay=0.1))
    ws = await jp_ws_fetch("qcoder", "chat")
    ws.write_message(json.dumps(ask("make a dataframe of 1 2 3", id="run")))
    await until(ws, "run", "started")
    ws.write_message(json.dumps(ask("make a dataframe of 4 5 6", id="wait")))
    assert (await until(ws, "wait", "queued"))[-1]["position"] == 1
    r = await jp_fetch("qcoder", "chat", "wait", "stop", method="POST", body="")
    assert r.code == 204
    assert (await until(ws, "wait", "stopped"))[-1] == {"type": "stopped", "id": "wait"}
    assert (await until(ws, "run", "done", "error"))[-1]["type"] == "done"
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("qcoder", "chat", "never-sent", "stop", method="POST", body="")
    assert e.value.code == 404
    ws.close()


# ---------------------------------------------------------------- explain, fix, selection


async def test_fix_sends_the_cell_and_its_error_and_returns_a_checked_fix(jp_ws_fetch, chat):
    chat.settings_store.save({"model": None, "repairs": 0, "check": True})
    engine = use(chat, PacedEngine(["```python\nvalues = [1, 2, 3]\nprint(values[-1])\n```"]))
    ws = await jp_ws_fetch("qcoder", "chat")
    cell = {"source": "values = [1, 2, 3]\nprint(values[3])", "cell_type": "code",
            "index": 4, "error": "IndexError: list index out of range"}
    ws.write_message(json.dumps(ask("", id="f", action="fix", cell=cell)))
    answer = (await until(ws, "f", "done", "error"))[-1]["answer"]
    prompt = engine.calls[0][-1]["content"]
    assert "IndexError: list index out of range" in prompt and "print(values[3])" in prompt
    assert answer["task"] == "fix" and answer["ok"] is True
    assert answer["checks"]["ran on sample"] == "passed"
    assert "print(values[-1])" in answer["cell"] and answer["metadata"]["task"] == "fix"
    ws.write_message(json.dumps(ask("", id="f2", action="fix", cell={**cell, "error": None})))
    event = await receive(ws)
    assert event["type"] == "error" and event["message"].startswith("fix needs the cell's error")
    ws.close()


async def test_explain_gives_the_line_by_line_explanation_the_magic_gives(jp_ws_fetch, chat):
    engine = use(chat, PacedEngine(["It adds the numbers up."]))
    ws = await jp_ws_fetch("qcoder", "chat")
    cell = {"source": "total = sum([1, 2, 3])", "cell_type": "code", "index": 0, "error": None}
    ws.write_message(json.dumps(ask("", id="x", action="explain", cell=cell)))
    events = await until(ws, "x", "done", "error")
    answer = events[-1]["answer"]
    from qcoder_ds.lessons.explain import explain
    assert answer["text"] == explain("total = sum([1, 2, 3])", namespace={}, fmt="markdown")
    assert answer["task"] == "explain" and answer["cell"] == "" and engine.calls == []
    assert [e["text"] for e in events if e["type"] == "token"] == [answer["text"]]
    # with a question of its own, the model explains, shown the code
    ws.write_message(json.dumps(ask("why sum?", id="y", action="explain", cell=cell)))
    answer = (await until(ws, "y", "done", "error"))[-1]["answer"]
    assert answer["text"] == "It adds the numbers up." and answer["task"] == "explain"
    assert "total = sum([1, 2, 3])" in engine.calls[0][-1]["content"]
    ws.close()


async def test_engines_load_lazily_once_per_model_and_the_setting_picks_one(
        jp_ws_fetch, jp_fetch, chat):
    other = "qwen2.5-coder-1.5b-instruct"
    loaded: list[str] = []

    def load(name: str) -> PacedEngine:
        loaded.append(name)
        return PacedEngine(default=MAKE)

    chat.load_engine = load
    await jp_fetch("qcoder", "models")
    assert loaded == [] and chat.engines == {}  # nothing loads before a request
    ws = await jp_ws_fetch("qcoder", "chat")
    for i, model in enumerate([None, None, other, None]):
        ws.write_message(json.dumps(ask("make a dataframe of 1 2 3", id=f"l{i}", model=model)))
        done = (await until(ws, f"l{i}", "done", "error"))[-1]
        assert done["answer"]["metadata"]["model"] == (model or MODEL)
    assert loaded == [MODEL, other]
    await jp_fetch("qcoder", "settings", method="PUT", body=json.dumps({"model": other}))
    ws.write_message(json.dumps(ask("make a dataframe of 1 2 3", id="l9")))
    done = (await until(ws, "l9", "done", "error"))[-1]
    assert done["answer"]["metadata"]["model"] == other and loaded == [MODEL, other]
    ws.close()


async def test_a_selection_is_sent_with_the_request(jp_ws_fetch, chat):
    engine = use(chat, PacedEngine([MAKE]))
    ws = await jp_ws_fetch("qcoder", "chat")
    ws.write_message(json.dumps(ask("make a dataframe like this", id="sel",
                                    selection="pd.Series([1, 2, 3]).to_frame('n')")))
    answer = (await until(ws, "sel", "done", "error"))[-1]["answer"]
    prompt = engine.calls[0][-1]["content"]
    assert "Selected code:\n```python\npd.Series([1, 2, 3]).to_frame('n')\n```" in prompt
    assert answer["task"] == "pandas"
    ws.close()


# ---------------------------------------------------------------- history


async def test_history_is_kept_per_notebook_and_survives_a_new_server(
        jp_ws_fetch, jp_fetch, chat, jp_configurable_serverapp, jp_serverapp):
    use(chat, PacedEngine([MAKE]))
    ws = await jp_ws_fetch("qcoder", "chat")
    ws.write_message(json.dumps(ask("make a dataframe of 1 2 3", id="h",
                                    notebook_path="work/sales.ipynb")))
    done = (await until(ws, "h", "done", "error"))[-1]
    ws.close()
    for _ in range(50):  # written off the event loop
        messages = json.loads((await jp_fetch("qcoder", "history", params={
            "path": "work/sales.ipynb"})).body)["messages"]
        if len(messages) == 2:
            break
        await asyncio.sleep(0.05)
    assert [(m["role"], m["id"]) for m in messages] == [("user", "h"), ("assistant", "h")]
    assert messages[0]["text"] == "make a dataframe of 1 2 3"
    assert messages[1]["answer"] == done["answer"]
    other = json.loads((await jp_fetch("qcoder", "history",
                                       params={"path": "work/other.ipynb"})).body)
    assert other == {"messages": []}

    # a new server app (as after a restart) reads the same file
    from jupyter_server.serverapp import ServerApp

    ServerApp.clear_instance()
    app2 = jp_configurable_serverapp()
    assert app2 is not jp_serverapp
    try:
        again = app2.web_app.settings[SETTINGS_KEY].history.load("work/sales.ipynb")
        assert again == messages
    finally:
        await app2._cleanup()
        ServerApp.clear_instance()
        for klass in ServerApp._walk_mro():  # the fixture's app is the one its cleanup stops
            klass._instance = jp_serverapp

    r = await jp_fetch("qcoder", "history", method="DELETE",
                       params={"path": "work/sales.ipynb"})
    assert r.code == 204
    r = await jp_fetch("qcoder", "history", params={"path": "work/sales.ipynb"})
    assert json.loads(r.body) == {"messages": []}
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("qcoder", "history")
    assert e.value.code == 400 and "?path=" in json.loads(e.value.response.body)["message"]


def test_history_is_capped(tmp_path):
    from qcoder_ds.server.store import MAX_MESSAGES, History

    h = History(tmp_path)
    for i in range(MAX_MESSAGES + 30):
        h.append("a.ipynb", {"role": "user", "text": f"q{i}"})
    kept = h.load("a.ipynb")
    assert len(kept) == MAX_MESSAGES and kept[-1]["text"] == f"q{MAX_MESSAGES + 29}"
    h.append("b.ipynb", {"role": "user", "text": "x" * 600_000},
             {"role": "user", "text": "y" * 600_000})
    assert [m["text"][0] for m in h.load("b.ipynb")] == ["y"]  # under 1 MiB
