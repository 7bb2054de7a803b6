"""Where qcoder-ds keeps assembled models and exports: the user cache dir, or $QCODER_HOME."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import platformdirs


def home() -> Path:
    """The root of everything qcoder-ds writes outside the user's project."""
    env = os.environ.get("QCODER_HOME")
    root = Path(env) if env else Path(platformdirs.user_cache_dir("qcoder-ds"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Assembled / downloaded model files."""
    d = home() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def exports_dir() -> Path:
    """Exported ONNX / OpenVINO models, one folder per cache key."""
    d = home() / "exports"
    d.mkdir(parents=True, exist_ok=True)
    return d


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temp file and rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
