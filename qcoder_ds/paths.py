"""Where qcoder-ds keeps assembled models and exports: the user cache dir, or $QCODER_HOME."""

from __future__ import annotations

import os
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
