"""A model on a server: the Engine interface over the OpenAI-compatible chat-completions API.

One lab machine serves the model (llama.cpp's ``llama-server``, ``llama-cpp-python[server]``,
vLLM, OpenVINO Model Server, Ollama) and every notebook of the class talks to it::

    %%qcoder --model openai:qwen2.5-coder-1.5b-instruct@http://lab-pc:8000/v1
    QCODER_MODEL=openai:qwen@http://lab-pc:8000/v1 jupyter lab      # every request, every tool

The copilot, the magic, the chat and the lessons call it exactly as they call the local
``Engine`` (``chat(messages, params, cancel)`` streaming text, ``count_tokens``,
``max_context``): ``Engine.load`` hands a model name that starts with ``openai:`` here.

- **The API key** is read from ``QCODER_API_KEY`` only, never from a cell or a model name (a
  notebook is shared and saved; a key typed in one leaks with it). ``OPENAI_API_KEY`` is
  deliberately not read: it usually holds a paid OpenAI key, which must not be sent to a
  classroom server that someone else runs.
- **Only the server named is contacted**: no proxy or ``.netrc`` from the environment
  (``trust_env=False``), no retries beyond the busy (429) ones below.
- **Sampling** maps onto the API: ``max_new_tokens`` → ``max_tokens``, temperature (0 is
  greedy on llama.cpp and vLLM), ``top_p``, ``seed``, ``stop``; ``top_k``,
  ``repetition_penalty`` (also sent as llama.cpp's ``repeat_penalty``) and ``stop_token_ids``
  only when set, since they are extensions. Stop strings are applied here too, in case a
  server ignores or limits them (OpenAI's API takes at most four).
- **Cancellation** closes the HTTP stream, which llama.cpp's servers and vLLM take as the end
  of the request: the caller gets ``GenerationCancelled`` within a fraction of a second even
  while the server is still reading a long prompt (the stream is read on a helper thread).
- **Token counts** come from the server's tokenizer (``/extras/tokenize`` of llama-cpp-python,
  ``/tokenize`` of llama.cpp and vLLM). When the server's tokens for a probe text are the same
  as the local Qwen2.5 tokenizer's, counting is done locally from then on (the same numbers,
  with no round trip and no wait behind other students' generations, since llama-cpp-python
  tokenizes under its model lock). A server with no tokenizer endpoint (Ollama, OpenVINO Model
  Server) is counted with the local Qwen2.5 tokenizer: exact for Qwen2.5 and Qwen2.5-Coder
  models, an estimate for other families (``token_source`` says which).
- **Failures** (no answer in time, connection refused, 401/403, 429, 404, a prompt over the
  context, a server that dies mid-stream) raise one ``RemoteEngineError`` subclass each, whose
  one-line message says what to do; a broken stream keeps what had arrived in ``.partial``.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from qcoder_ds.errors import ContextLengthError, GenerationCancelled, QcoderError
from qcoder_ds.runtime.sampler import SamplingParams

#: the model-name prefix that selects this engine: ``openai:<model>@<base url>``
PREFIX = "openai:"
#: the only place the API key is read from
KEY_ENV = "QCODER_API_KEY"
#: the base URL when the model name gives none (``openai:<model>``)
URL_ENV = "QCODER_REMOTE_URL"
#: seconds to wait for the server to send anything (connect, first byte, each next byte)
TIMEOUT_ENV = "QCODER_REMOTE_TIMEOUT"
#: the context window, where the server does not say it (llama-cpp-python, Ollama)
CONTEXT_ENV = "QCODER_REMOTE_CONTEXT"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CONTEXT = 4096
#: how often a busy (429) server is asked again before the error, and the longest wait
BUSY_RETRIES = 2
MAX_BUSY_WAIT_S = 10.0
#: how often a waiting stream looks at the cancel flag
_POLL_S = 0.05
#: the family of tokenizers shipped here (every Qwen2.5 and Qwen2.5-Coder size shares it)
LOCAL_TOKENIZER_MODEL = "qwen2.5-coder-0.5b-instruct"
_PROBE = ("df.groupby('region')['revenue'].sum()  # 合计\nSELECT name FROM t WHERE x > 1;\n"
          "<|im_start|>user\n  a tab\there, a number 12345.678<|im_end|>")


class RemoteEngineError(QcoderError):
    """The model server could not serve a request; the message says what to do."""


class ServerUnreachable(RemoteEngineError):
    """Nothing answers at the address (refused, unknown host, no route)."""


class ServerTimeout(RemoteEngineError):
    """The server accepted the request but sent nothing for too long."""


class ServerAuthError(RemoteEngineError):
    """The server refused the API key (401) or the request (403)."""


class ServerBusy(RemoteEngineError):
    """The server said 429 Too Many Requests, also after waiting and asking again."""


class ServerModelError(RemoteEngineError):
    """The server has no such model, or the base URL does not lead to the API (404)."""


class StreamBroken(RemoteEngineError):
    """The answer stopped half-way (the server died or closed the connection)."""

    def __init__(self, message: str, partial: str = ""):
        super().__init__(message)
        self.partial = partial  # what had arrived, so nothing shown is lost


@dataclass(frozen=True)
class RemoteSpec:
    """Where the model is: the server's model name and its OpenAI-compatible base URL."""

    model: str
    base_url: str

    @property
    def root(self) -> str:
        """The server's root (``/tokenize``, ``/props`` live there, not under ``/v1``)."""
        url = self.base_url.rstrip("/")
        return url[:-3] if url.endswith("/v1") else url


def is_remote(name: str | None) -> bool:
    return bool(name) and str(name).startswith(PREFIX)


def parse_spec(name: str) -> RemoteSpec:
    """``openai:<model>@http://host:port/v1`` (or ``openai:<model>`` with ``QCODER_REMOTE_URL``).

    The URL is split at the last ``@http`` so model names with ``@`` in them still work; a
    key in the URL (``http://key@host``) is refused, since model names end up in notebooks.
    """
    if not is_remote(name):
        raise RemoteEngineError(f"{name!r} is not a server model; write "
                                f"{PREFIX}<model>@http://host:port/v1")
    rest = name[len(PREFIX):]
    at = max(rest.rfind("@http://"), rest.rfind("@https://"))
    if at >= 0:
        model, url = rest[:at], rest[at + 1:]
    else:
        model, url = rest, os.environ.get(URL_ENV, "").strip()
    if not url:
        raise RemoteEngineError(f"{name!r} names no server: write {PREFIX}<model>@http://host:"
                                f"port/v1, or set {URL_ENV}=http://host:port/v1")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteEngineError(f"{url!r} is not an http(s) URL of a model server "
                                "(e.g. http://lab-pc:8000/v1)")
    if parts.username or parts.password:
        raise RemoteEngineError(f"the server URL carries a user or key; put the key in "
                                f"{KEY_ENV} instead (a model name is saved with the notebook)")
    return RemoteSpec(model.strip(), url.rstrip("/"))


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RemoteEngineError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise RemoteEngineError(f"{name} must be > 0, got {raw}")
    return value


class RemoteEngine:
    """A model behind an OpenAI-compatible server. Build it with :meth:`connect`."""

    backend = "openai"
    weights = "server"
    session: Any = None  # no local decoder session (callers that look for one find None)

    def __init__(self, spec: RemoteSpec, api_key: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_context: int | None = None,
                 local_tokenizer: Any = None, busy_retries: int = BUSY_RETRIES):
        try:
            import httpx
        except ImportError as e:
            raise RemoteEngineError("a model server needs httpx: pip install "
                                    "'qcoder-ds[remote]'") from e

        self.spec = spec
        self.name = f"{PREFIX}{spec.model}@{spec.base_url}"
        self.timeout_s = timeout_s
        self.busy_retries = busy_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # trust_env=False: no proxy, .netrc or certificate settings from the environment, so
        # the request (and the key) goes to the server named and nowhere else
        self._http = httpx.Client(headers=headers, trust_env=False,
                                  timeout=httpx.Timeout(timeout_s))
        self._context = max_context
        self._local_tokenizer = local_tokenizer
        self._counter: Any = None  # decided on first use: see count_tokens
        self.token_source = "not decided yet"
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, name: str, timeout_s: float | None = None) -> RemoteEngine:
        """The engine for ``openai:<model>@<url>``, with the key from ``QCODER_API_KEY``.

        Nothing is sent until the first request (a notebook that names the server while it is
        still starting works once it is up); an empty model name means the server's only one.
        """
        spec = parse_spec(name)
        key = os.environ.get(KEY_ENV, "").strip() or None
        timeout = timeout_s if timeout_s is not None else _env_float(TIMEOUT_ENV,
                                                                      DEFAULT_TIMEOUT_S)
        raw_ctx = os.environ.get(CONTEXT_ENV, "").strip()
        ctx = None
        if raw_ctx:
            if not raw_ctx.isdigit() or int(raw_ctx) < 256:
                raise RemoteEngineError(f"{CONTEXT_ENV}={raw_ctx!r}: give the server's context "
                                        "window in tokens (e.g. 4096)")
            ctx = int(raw_ctx)
        return cls(spec, key, timeout, ctx)

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ HTTP, errors mapped

    def _where(self) -> str:
        return f"the model server at {self.spec.base_url}"

    def _error(self, exc: BaseException) -> RemoteEngineError:
        """The one-line error for a transport failure (``httpx`` exceptions)."""
        import httpx

        if isinstance(exc, httpx.ConnectTimeout):
            return ServerTimeout(f"{self._where()} did not accept a connection within "
                                 f"{self.timeout_s:g} s: check the address and that the machine "
                                 f"is on (more time: {TIMEOUT_ENV})")
        if isinstance(exc, httpx.TimeoutException):
            return ServerTimeout(f"{self._where()} sent nothing for {self.timeout_s:g} s: it may "
                                 f"be overloaded or stuck; run the cell again, or allow more "
                                 f"time with {TIMEOUT_ENV}")
        if isinstance(exc, httpx.ConnectError):
            return ServerUnreachable(f"cannot reach {self._where()} ({_reason(exc)}): is the "
                                     "server running, and are the host and port right?")
        if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
            # e.g. a server being killed: its port still takes the connection, then resets it
            return ServerUnreachable(f"{self._where()} closed the connection without answering "
                                     f"({_reason(exc)}): it may have crashed or be restarting; "
                                     "run the cell again once it is up")
        return RemoteEngineError(f"{self._where()} failed: {type(exc).__name__}: "
                                 f"{_reason(exc)}")

    def _status_error(self, status: int, body: str, retry_after: str | None = None
                      ) -> RemoteEngineError:
        detail = _error_detail(body)
        if status == 401:
            why = (f"{KEY_ENV} is not set" if "Authorization" not in self._http.headers
                   else f"the key in {KEY_ENV} is not the server's")
            return ServerAuthError(f"{self._where()} refused the request (401 Unauthorized): "
                                   f"{why}; set {KEY_ENV} to the key the server was started "
                                   "with, in the environment that starts Jupyter")
        if status == 403:
            return ServerAuthError(f"{self._where()} refused the request (403 Forbidden"
                                   f"{': ' + detail if detail else ''}); ask whoever runs it")
        if status == 429:
            wait = f" (it asked to wait {retry_after} s)" if retry_after else ""
            return ServerBusy(f"{self._where()} is busy (429 Too Many Requests){wait}, also "
                              f"after {self.busy_retries} more tries; run the cell again in a "
                              "moment")
        if status == 404:
            return ServerModelError(f"{self._where()} has no {self.spec.model!r} or no API there "
                                    f"(404{': ' + detail if detail else ''}); the base URL "
                                    "usually ends in /v1, and the model is the server's name "
                                    "for it (see its /v1/models)")
        if status in (400, 413, 422) and _about_context(detail):
            return ContextLengthError(f"the prompt does not fit {self._where()}'s context "
                                      f"window ({detail}); ask with less data in view, or "
                                      f"start the server with a larger context")
        return RemoteEngineError(f"{self._where()} answered {status}"
                                 f"{': ' + detail if detail else ''}")

    def _get_json(self, path: str, root: bool = False) -> Any:
        """GET a small JSON document; None where the server has no such endpoint."""
        url = (self.spec.root if root else self.spec.base_url) + path
        return self._json(lambda: self._http.get(url))

    def _post_json(self, url: str, body: dict) -> Any:
        return self._json(lambda: self._http.post(url, json=body))

    def _json(self, send: Callable[[], Any]) -> Any:
        """The JSON of a small request's reply; None where the server has no such endpoint
        (or answers with something that is not JSON)."""
        import httpx

        try:
            r = send()
        except httpx.HTTPError as e:
            raise self._error(e) from e
        if r.status_code in (404, 405, 501):
            return None
        if r.status_code >= 400:
            raise self._status_error(r.status_code, r.text)
        try:
            return r.json()
        except ValueError:
            return None

    # ------------------------------------------------------------------ what the server says

    def model_name(self) -> str:
        """The server's name for the model: the one given, else the server's only model."""
        if self.spec.model:
            return self.spec.model
        with self._lock:
            if not self.spec.model:
                listing = self._get_json("/models") or {}
                ids = [m.get("id") for m in listing.get("data", []) if m.get("id")]
                if len(ids) != 1:
                    raise ServerModelError(f"{self._where()} serves {ids or 'no models'}; name "
                                           f"one: {PREFIX}<model>@{self.spec.base_url}")
                self.spec = RemoteSpec(ids[0], self.spec.base_url)
        return self.spec.model

    @property
    def max_context(self) -> int:
        """The server's context window: ``QCODER_REMOTE_CONTEXT``, else what the server says
        (vLLM's ``max_model_len``, llama.cpp's ``/props``), else 4096."""
        if self._context is None:
            self._context = self._ask_context() or DEFAULT_CONTEXT
        return self._context

    def _ask_context(self) -> int | None:
        listing = self._get_json("/models") or {}
        for m in listing.get("data", []) if isinstance(listing, dict) else []:
            if m.get("id") in (self.spec.model, None) or not self.spec.model:
                for key in ("max_model_len", "context_length", "max_context_length"):
                    if isinstance(m.get(key), int):
                        return int(m[key])
        props = self._get_json("/props", root=True)
        if isinstance(props, dict):
            n = (props.get("default_generation_settings") or {}).get("n_ctx")
            if isinstance(n, int) and n > 0:
                return n
        return None

    # ------------------------------------------------------------------ tokens

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes on the server (see the module note)."""
        if self._counter is None:
            with self._lock:
                if self._counter is None:
                    self._counter = self._choose_counter()
        return self._counter(text)

    def server_tokens(self, text: str) -> list[int] | None:
        """The server's own token ids for ``text``; None where it has no tokenizer endpoint."""
        model = self.spec.model or None
        for path, body in (("/extras/tokenize", {"input": text, "model": model}),
                           ("/tokenize", {"content": text, "prompt": text, "model": model,
                                          "add_special": False, "add_special_tokens": False})):
            got = self._post_json(self.spec.root + path, body)
            if isinstance(got, dict) and isinstance(got.get("tokens"), list):
                return [int(t) if not isinstance(t, dict) else int(t["id"])
                        for t in got["tokens"]]
        return None

    def _local(self) -> Any:
        if self._local_tokenizer is None:
            from qcoder_ds.models.sources import resolve

            self._local_tokenizer = resolve(LOCAL_TOKENIZER_MODEL).tokenizer()
        return self._local_tokenizer

    def _choose_counter(self) -> Any:
        probe = self.server_tokens(_PROBE)
        if probe is None:
            self.token_source = (f"local {LOCAL_TOKENIZER_MODEL} tokenizer: the server has no "
                                 "tokenizer endpoint (exact for Qwen2.5 models, an estimate "
                                 "for others)")
            local = self._local()
            return lambda text: len(local.encode(text))
        local = self._local()
        if local.encode(_PROBE) == probe:
            self.token_source = (f"local {LOCAL_TOKENIZER_MODEL} tokenizer, checked equal to "
                                 "the server's")
            return lambda text: len(local.encode(text))
        self.token_source = "the server's tokenizer endpoint (its tokens differ from Qwen2.5's)"

        def remote(text: str) -> int:
            ids = self.server_tokens(text)
            return len(ids) if ids is not None else len(local.encode(text))
        return remote

    # ------------------------------------------------------------------ generation

    def request_body(self, messages: Sequence[dict], params: SamplingParams) -> dict:
        """The chat-completions request for ``messages`` under ``params``."""
        body: dict[str, Any] = {
            "model": self.model_name(),
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "stream": True,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.top_k:
            body["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty  # vLLM
            body["repeat_penalty"] = params.repetition_penalty  # llama.cpp
        if params.stop_token_ids:
            body["stop_token_ids"] = list(params.stop_token_ids)
        return body

    def chat(self, messages: Sequence[dict], params: SamplingParams | None = None,
             cancel: threading.Event | None = None, reply_prefix: str = "") -> RemoteStream:
        """Stream the assistant's reply to ``messages``; ``finish_reason`` after it ends.

        ``reply_prefix`` (an opening code fence, and imports) is what the local engine puts in
        the model's mouth; the chat API cannot, so the model opens its own block and the
        stream starts after that fence, without the prefix's lines it repeats (see
        ``_AfterPrefix``). Stop strings are then applied here only, after the fence (the
        server would stop at the model's opening one). The request is sent when iteration
        starts, so a stream that is never read costs the server nothing.
        """
        params = params or SamplingParams()
        body = self.request_body(messages, params)
        if reply_prefix:
            body.pop("stop", None)
        return RemoteStream(self, body, tuple(params.stop), cancel,
                            _AfterPrefix(reply_prefix) if reply_prefix else None)

    def generate(self, messages: Sequence[dict], params: SamplingParams | None = None,
                 cancel: threading.Event | None = None) -> str:
        """The whole reply at once (for callers that do not stream)."""
        return "".join(self.chat(messages, params, cancel))


_END = object()


class RemoteStream:
    """The text pieces of one server reply, with ``finish_reason`` and ``text`` as the local
    engine's stream has them ("stop", "eos", "length", "cancelled")."""

    def __init__(self, engine: RemoteEngine, body: dict, stops: tuple[str, ...],
                 cancel: threading.Event | None, gate: _AfterPrefix | None = None):
        self.engine = engine
        self.gate = gate
        self.body = body
        self.stops = stops
        self.cancel = cancel
        self.text = ""
        self.finish_reason: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self._it = self._run()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._it)

    def close(self) -> None:
        """Stop reading and close the connection (the server ends the generation)."""
        self._closed.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception:  # closing from another thread may race the reader: harmless
                pass
        self._it.close()

    # the reader thread: HTTP in, (kind, value) out ------------------------------------------

    def _read(self) -> None:
        import httpx

        eng = self.engine
        url = eng.spec.base_url + "/chat/completions"
        try:
            for attempt in range(eng.busy_retries + 1):
                with eng._http.stream("POST", url, json=self.body) as r:
                    self._response = r
                    if r.status_code == 429 and attempt < eng.busy_retries:
                        wait = _retry_after(r.headers.get("retry-after"), attempt)
                        r.close()
                        if self._closed.wait(wait):
                            return
                        continue
                    if r.status_code >= 400:
                        r.read()
                        self._queue.put(("error", eng._status_error(
                            r.status_code, r.text, r.headers.get("retry-after"))))
                        return
                    self._queue.put(("open", None))
                    for line in r.iter_lines():
                        if self._closed.is_set():
                            return
                        self._queue.put(("line", line))
                    self._queue.put(("eof", None))
                    return
        except httpx.HTTPError as e:
            if not self._closed.is_set():
                self._queue.put(("transport", e))
        except Exception as e:  # anything else is still this request's failure, not a hang
            if not self._closed.is_set():
                self._queue.put(("transport", e))

    def _next_event(self) -> tuple[str, Any]:
        """The reader's next event, looking at ``cancel`` while waiting."""
        while True:
            if self.cancel is not None and self.cancel.is_set():
                self.finish_reason = "cancelled"
                raise GenerationCancelled("generation cancelled")
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def _run(self) -> Iterator[str]:
        self._thread = threading.Thread(target=self._read, name="qcoder-remote-stream",
                                        daemon=True)
        self._thread.start()
        pending = ""
        opened = False
        try:
            while True:
                kind, value = self._next_event()
                if kind == "open":
                    opened = True
                    continue
                if kind == "error":
                    raise value
                if kind == "transport":
                    raise self._broken(value, opened)
                if kind == "eof":
                    if self.finish_reason is None:
                        raise StreamBroken(
                            f"{self.engine._where()} ended the answer before it was complete "
                            "(no finish reason): it may have restarted; what arrived is kept "
                            "and the cell can be run again", partial=self.text + pending)
                    break
                piece, done = self._parse(value)
                if piece and self.gate is not None:
                    piece = self.gate.feed(piece)
                if piece:
                    pending += piece
                    ready, pending, stopped = _apply_stops(pending, self.stops)
                    if ready:
                        self.text += ready
                        yield ready
                    if stopped:
                        self.finish_reason = "stop"
                        return
                if done:
                    break
            if self.gate is not None:
                ready, held, stopped = _apply_stops(pending + self.gate.finish(), self.stops)
                pending = ready if stopped else ready + held
                if stopped:
                    self.finish_reason = "stop"
            if pending:
                self.text += pending
                yield pending
        finally:
            self._closed.set()
            response = self._response
            if response is not None:
                try:
                    response.close()
                except Exception:
                    pass

    def _parse(self, line: str) -> tuple[str, bool]:
        """One server-sent-events line: (text, finished). Comments, pings and empty lines
        carry nothing; ``data: [DONE]`` ends; an ``error`` object is the server's failure."""
        if not line.startswith("data:"):
            return "", False
        data = line[5:].strip()
        if data == "[DONE]":
            if self.finish_reason is None:
                self.finish_reason = "eos"
            return "", True
        try:
            chunk = json.loads(data)
        except ValueError:
            raise StreamBroken(f"{self.engine._where()} sent something that is not JSON "
                               f"({data[:80]!r})", partial=self.text) from None
        if isinstance(chunk, dict) and chunk.get("error"):
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else str(err)
            if _about_context(str(msg)):
                raise ContextLengthError(f"the prompt does not fit {self.engine._where()}'s "
                                         f"context window ({msg})")
            raise StreamBroken(f"{self.engine._where()} failed during the answer: {msg}",
                               partial=self.text)
        text = ""
        for choice in chunk.get("choices", []) if isinstance(chunk, dict) else []:
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            reason = choice.get("finish_reason")
            if reason:  # OpenAI's "stop" is the model's end or a stop string: ours tell them
                self.finish_reason = ("stop" if self.stops else "eos") if reason == "stop" \
                    else reason
        return text, False

    def _broken(self, exc: BaseException, opened: bool) -> RemoteEngineError:
        import httpx

        if not opened or isinstance(exc, httpx.ConnectError):
            return self.engine._error(exc)
        if isinstance(exc, httpx.TimeoutException):
            err = self.engine._error(exc)
            return StreamBroken(str(err), partial=self.text)
        return StreamBroken(f"{self.engine._where()} stopped in the middle of the answer "
                            f"({_reason(exc)}): it may have crashed or restarted; what arrived "
                            "is kept and the cell can be run again once it is back",
                            partial=self.text)


class _AfterPrefix:
    """A reply prefix the chat API cannot prefill, emulated on the way out: the model's text
    up to and including its own opening fence is dropped, then the first lines that repeat the
    prefix's (``import pandas as pd``), so the stream continues the prefix as the local
    engine's does. A reply with no fence at all is passed on whole when it ends."""

    def __init__(self, prefix: str):
        self.repeats = {line.strip() for line in prefix.split("\n")[1:] if line.strip()}
        self.buf = ""
        self.state = "fence"  # then "repeats", then "pass"

    def feed(self, text: str) -> str:
        if self.state == "pass":
            return text
        self.buf += text
        if self.state == "fence":
            at = self.buf.find("```")
            end = self.buf.find("\n", at) if at >= 0 else -1
            if end < 0:
                return ""  # no fence yet, or its line is not complete
            self.buf, self.state = self.buf[end + 1:], "repeats"
        while True:
            end = self.buf.find("\n")
            line = (self.buf if end < 0 else self.buf[:end]).strip()
            if end < 0:
                if not line or any(r.startswith(line) for r in self.repeats):
                    return ""  # could still be a repeated line: wait for its end
                break
            if line in self.repeats:
                self.buf = self.buf[end + 1:]
                continue
            break
        out, self.buf, self.state = self.buf, "", "pass"
        return out

    def finish(self) -> str:
        out, self.buf, self.state = self.buf, "", "pass"
        return out


def _apply_stops(pending: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """(text ready to show, text held back, stopped): text up to the first stop string, and
    the tail that could still be the start of one held back until the next piece."""
    if not stops:
        return pending, "", False
    hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
    if hits:
        return pending[:min(hits)], "", True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(pending)), 0, -1):
            if pending.endswith(s[:k]):
                hold = max(hold, k)
                break
    return pending[:len(pending) - hold], pending[len(pending) - hold:], False


def _retry_after(header: str | None, attempt: int) -> float:
    """Seconds to wait before asking a busy server again: its Retry-After, capped."""
    try:
        wait = float(header) if header is not None else 0.5 * 2 ** attempt
    except ValueError:
        wait = 0.5 * 2 ** attempt
    return max(0.0, min(wait, MAX_BUSY_WAIT_S))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _error_detail(body: str) -> str:
    """The message in an error body (OpenAI's ``{"error": {"message"}}``, FastAPI's
    ``{"detail"}``), else the start of the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:200]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:200]
        if isinstance(err, str):
            return err[:200]
        if data.get("detail"):
            return str(data["detail"])[:200]
        if data.get("message"):
            return str(data["message"])[:200]
    return body.strip()[:200]


def _about_context(detail: str) -> bool:
    d = detail.lower()
    return "context" in d and any(w in d for w in ("exceed", "length", "window", "too long",
                                                   "maximum"))


def wait_until_ready(engine: RemoteEngine, timeout_s: float = 60.0) -> None:
    """Block until the server lists its models (a server just started loads the model first)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if engine._get_json("/models") is not None:
                return
        except RemoteEngineError as e:
            last = e
            if isinstance(e, ServerAuthError):
                raise
        time.sleep(0.25)
    raise ServerUnreachable(f"{engine._where()} was not ready within {timeout_s:g} s"
                            + (f" ({last})" if last else ""))
