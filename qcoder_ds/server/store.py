"""What the chat keeps between server starts: per-notebook history and the chat's settings.

Both live under the Jupyter data dir (``jupyter_data_dir()/qcoder/``), written atomically
(``paths.atomic_write_text``), so a reload of the page or a restart of the server finds them and
a crash mid-write leaves the old file. History is capped: the newest ``MAX_MESSAGES`` messages
and ``MAX_BYTES`` of JSON per notebook.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from qcoder_ds.paths import atomic_write_text

MAX_MESSAGES = 200
MAX_BYTES = 1 << 20


def root() -> Path:
    """``<jupyter data dir>/qcoder`` (read when called, so tests' environments apply)."""
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "qcoder"


class History:
    """One JSON file per notebook, named by the SHA-256 of its path (paths can be anything)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or root() / "history"
        self._lock = threading.Lock()

    def file(self, path: str) -> Path:
        return self.folder / (hashlib.sha256(path.encode("utf-8")).hexdigest() + ".json")

    def load(self, path: str) -> list[dict[str, Any]]:
        """The notebook's messages, oldest first; a missing or damaged file is no history."""
        try:
            data = json.loads(self.file(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        messages = data.get("messages") if isinstance(data, dict) else None
        return messages if isinstance(messages, list) else []

    def append(self, path: str, *messages: dict[str, Any]) -> None:
        with self._lock:
            kept = (self.load(path) + list(messages))[-MAX_MESSAGES:]
            text = json.dumps({"path": path, "messages": kept})
            while len(text.encode("utf-8")) > MAX_BYTES and len(kept) > 1:
                kept = kept[max(1, len(kept) // 4):]
                text = json.dumps({"path": path, "messages": kept})
            atomic_write_text(self.file(path), text)

    def clear(self, path: str) -> None:
        with self._lock:
            self.file(path).unlink(missing_ok=True)


class Settings:
    """``{"model", "repairs", "check"}`` in ``settings.json``; ``model`` None means the default
    that ``models.choice`` picks."""

    DEFAULTS: dict[str, Any] = {"model": None, "repairs": 2, "check": True}

    def __init__(self, file: Path | None = None):
        self.file = file or root() / "settings.json"
        self._lock = threading.Lock()

    def load(self) -> dict[str, Any]:
        values = dict(self.DEFAULTS)
        try:
            saved = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        if isinstance(saved, dict):
            values.update({k: v for k, v in saved.items() if k in self.DEFAULTS})
        return values

    def save(self, values: dict[str, Any]) -> None:
        with self._lock:
            atomic_write_text(self.file, json.dumps(
                {k: values[k] for k in self.DEFAULTS if k in values}, indent=1))
