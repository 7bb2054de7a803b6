"""Fixtures for the chat server: a real Jupyter Server (pytest-jupyter) with the extension on.

``pytest_plugins`` may only be set in the top-level conftest (pytest refuses it here when the
whole suite runs), so the plugin's fixtures and hooks are imported into this conftest: they
apply to this folder only. Helpers live in ``chat_helpers.py`` (a conftest is not importable
by a unique name).
"""

from __future__ import annotations

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"qcoder_ds.server": True}}}


@pytest.fixture
def chat(jp_serverapp):
    """The server's ChatService, checks off unless a test turns them on (speed)."""
    service = jp_serverapp.web_app.settings["qcoder_chat"]
    service.settings_store.save({"model": None, "repairs": 0, "check": False})
    return service
