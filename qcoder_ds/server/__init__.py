"""The server side of the JupyterLab sidebar chat: a Jupyter Server extension (docs/chat.md).

Loaded by Jupyter Server as ``qcoder_ds.server`` (``jupyter-config/.../qcoder_ds.json`` enables
it). This module stays light on purpose: the kernel imports ``qcoder_ds.server.kernel_snapshot``
to describe its namespace, and that must not import Jupyter Server into the user's kernel.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from qcoder_ds.server.app import ChatExtension

    return [{"module": "qcoder_ds.server", "app": ChatExtension}]
