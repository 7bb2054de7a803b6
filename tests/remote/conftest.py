"""Fixtures for the remote engine's tests: one real server per module, the key in the
environment."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from real_server import KEY, Server, start_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("llama"))
    yield s
    s.stop()


@pytest.fixture
def keyed(monkeypatch):
    """The class key in the environment, where the engine reads it."""
    monkeypatch.setenv("QCODER_API_KEY", KEY)
    monkeypatch.delenv("QCODER_REMOTE_CONTEXT", raising=False)
    monkeypatch.delenv("QCODER_REMOTE_TIMEOUT", raising=False)
