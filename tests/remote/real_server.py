"""Starting a real llama-cpp-python OpenAI-compatible server on a free localhost port with
the embedded 0.5B GGUF (a module of its own: ``conftest`` is a shared name across tests/)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

KEY = "class-key-7f3a"
MODEL = "qwen2.5-coder-0.5b-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gguf_path() -> Path:
    """The embedded 0.5B, assembled into the models cache from its PyPI parts on first use."""
    from qcoder_ds.models.sources import resolve

    return Path(resolve(MODEL).path)


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        return f"openai:{MODEL}@{self.url}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _need_llama_server() -> None:
    if importlib.util.find_spec("llama_cpp") is None or \
            importlib.util.find_spec("uvicorn") is None:
        why = ("llama-cpp-python[server] is not installed (pip install -e '.[test]' builds "
               "it; CMAKE_ARGS=-DGGML_NATIVE=ON for this CPU)")
        if os.environ.get("CI"):
            pytest.fail(why)  # CI must test against the real server, not skip it
        pytest.skip(why)


def start_server(tmp: Path, api_key: str | None = KEY, threads: int = 2) -> Server:
    """``python -m llama_cpp.server`` on a free port; returns once it answers /v1/models."""
    _need_llama_server()
    port = free_port()
    log = tmp / f"llama-server-{port}.log"
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
            "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "4096", "--n_threads", str(threads), "--n_threads_batch", str(threads)]
    if api_key:
        argv += ["--api_key", api_key]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(proc, port, log)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited ({proc.returncode}):\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            if httpx.get(server.url + "/models", headers=headers, timeout=2,
                         trust_env=False).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError("llama_cpp.server did not answer within 180 s:\n"
                       + log.read_text(errors="replace")[-2000:])
