"""Where qcoder-ds keeps assembled models and exports: the user cache dir, or $QCODER_HOME."""

from __future__ import annotations

import os
import uuid
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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temp file in the same folder, then rename it over ``path``.

    A reader never sees half a file and a crash leaves the old one or the whole new one (the
    data is synced before the rename): a grade export, a feedback page or a cache manifest read
    while it is written. The folder is created; the file gets the mode a plain ``open`` gives
    (the umask applies, unlike a private ``mkstemp`` file); a failed write leaves no temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def other_process_alive(pid: int) -> bool:
    """Whether another process ``pid`` still runs (so its temp files are still in use); our
    own pid counts as gone: a leftover of ours is from an earlier run."""
    if pid == os.getpid():
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there; keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
