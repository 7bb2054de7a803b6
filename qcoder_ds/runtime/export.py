"""The export cache: a model exported once per (source, backend, weights, exporter version).

An export is built in a temporary folder beside the cache and renamed into place only when
complete, with a manifest written last; a crash or Ctrl-C leaves a ``.tmp-*`` folder that is
never loaded (and is cleaned up by the next export of the same key). A second start finds the
folder and only loads it.

Backends are entries in :data:`BACKENDS` (name -> module + functions), so adding a runtime is
one :func:`register_backend` call, not another branch through the code. Another package can
add one without touching this one (as simonw/llm's plugins do): it declares an entry point in
the ``qcoder_ds.backends`` group whose object is a :class:`Backend`, e.g. in its
pyproject.toml ``[project.entry-points."qcoder_ds.backends"] mine = "my_pkg.qcoder:BACKEND"``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcoder_ds import paths
from qcoder_ds.errors import QcoderError
from qcoder_ds.runtime.backend import DecoderSession

log = logging.getLogger(__name__)

#: bump when a change in how exports are built makes old exports wrong or slower
EXPORTER_VERSION = "1"
WEIGHTS = ("int4", "int8", "fp32")
MANIFEST = "export.json"


class ExportError(QcoderError):
    """An export could not be built, found or loaded."""


@dataclass(frozen=True)
class Backend:
    """How to export to and load from one runtime. Functions are found lazily by name, so an
    optional runtime (OpenVINO) is imported only when it is chosen."""

    name: str
    module: str  # e.g. "qcoder_ds.runtime.ort_backend"
    export_fn: str  # (ckpt, out_dir, weights=..., progress=...) -> None; "mod:fn" for elsewhere
    load_fn: str  # (out_dir, threads=...) -> DecoderSession
    extra: str = ""  # the pip extra that installs the runtime, for the error message

    def _module(self):
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            hint = f" (pip install 'qcoder-ds[{self.extra}]')" if self.extra else ""
            raise ExportError(
                f"the {self.name} backend is not available: {e.name} is not installed{hint}"
            ) from None

    def version(self) -> str:
        """The backend's own exporter version, if it declares one (part of the cache key)."""
        return str(getattr(self._module(), "EXPORTER_VERSION", ""))

    def _fn(self, name: str):
        module = self._module()
        if ":" in name:
            mod_name, name = name.split(":", 1)
            module = importlib.import_module(mod_name)
        return getattr(module, name)

    def export(self, ckpt, out_dir: Path, weights: str, progress: bool) -> None:
        self._fn(self.export_fn)(ckpt, out_dir, weights=weights, progress=progress)

    def load(self, out_dir: Path, threads: int | None, **options) -> DecoderSession:
        """``options``: backend-specific load settings (ONNX Runtime: ``spinning``), passed
        only when given, so a plugin's ``(out_dir, threads=...)`` keeps working."""
        return self._fn(self.load_fn)(out_dir, threads=threads, **options)


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Make a runtime available to ``load_session``, ``qcoder export`` and the Engine."""
    BACKENDS[backend.name] = backend


register_backend(Backend("onnx", "qcoder_ds.runtime.ort_backend", "export_onnx", "load_onnx"))
register_backend(Backend("openvino", "qcoder_ds.runtime.openvino_backend",
                         "export_openvino", "load_openvino", extra="openvino"))


def load_plugins() -> list[str]:
    """Register the backends other installed packages declare (entry point group
    ``qcoder_ds.backends``); a built-in name is not replaced. Returns the names added; a
    plugin that fails to load is skipped with a warning, never fatal."""
    from importlib.metadata import entry_points

    added = []
    for ep in entry_points(group="qcoder_ds.backends"):
        if ep.name in BACKENDS:
            continue
        try:
            backend = ep.load()
        except Exception as e:  # noqa: BLE001 - someone else's package: report, carry on
            log.warning("qcoder: the backend plugin %s (%s) did not load: %s", ep.name,
                        ep.value, e)
            continue
        if isinstance(backend, Backend) and backend.name == ep.name:
            register_backend(backend)
            added.append(ep.name)
        else:
            log.warning("qcoder: the backend plugin %s is not a Backend named %r", ep.value,
                        ep.name)
    return added


load_plugins()


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ExportError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def _check_weights(weights: str) -> None:
    if weights not in WEIGHTS:
        raise ExportError(f"unknown weights format {weights!r}; choose one of {', '.join(WEIGHTS)}")


def cache_key(identity: str, backend: str, weights: str, backend_version: str = "") -> str:
    """sha256 over everything that changes the exported files."""
    blob = json.dumps({"source": identity, "backend": backend, "weights": weights,
                       "exporter": EXPORTER_VERSION, "backend_exporter": backend_version},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _resolve(source):
    if isinstance(source, (str, os.PathLike)):
        from qcoder_ds.models.sources import resolve

        return resolve(str(source))
    return source


def export_dir(source, backend: str = "onnx", weights: str = "int4") -> Path:
    """Where the export for these options lives (whether or not it exists yet)."""
    source = _resolve(source)
    _check_weights(weights)
    b = get_backend(backend)
    key = cache_key(source.identity, b.name, weights, b.version())
    # named by the key alone (not the source's name), so the same weights reached by catalogue
    # name or by file path share one export; export.json says which model it is
    return paths.exports_dir() / f"{b.name}-{weights}-{key[:16]}"


def is_complete(out_dir: Path) -> bool:
    """True when ``out_dir`` is a finished export (its manifest is written last, then renamed)."""
    return (Path(out_dir) / MANIFEST).is_file()


def ensure_export(source, backend: str = "onnx", weights: str = "int4", progress: bool = True,
                  log: Callable[[str], Any] | None = None) -> Path:
    """The export folder for these options, building it first if it is not in the cache."""
    source = _resolve(source)
    final = export_dir(source, backend, weights)
    if is_complete(final):
        return final
    b = get_backend(backend)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    _clean_stale(final)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"exporting {getattr(source, 'name', source)} to {b.name} ({weights}); "
        f"this happens once, later starts load the cached export")
    t0 = time.perf_counter()
    try:
        b.export(source.checkpoint(), tmp, weights, progress)
        manifest = {
            "source": getattr(source, "name", None), "identity": source.identity,
            "backend": b.name, "weights": weights, "exporter_version": EXPORTER_VERSION,
            "backend_exporter_version": b.version(), "seconds": round(time.perf_counter() - t0, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        paths.atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
        _fsync_dir(tmp)
        if final.exists() and not is_complete(final):  # damaged by hand: replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):  # not another process finishing first: a real failure
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if tmp.exists() and is_complete(final):  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"export done in {time.perf_counter() - t0:.0f} s: {final}")
    _remove_superseded(final)
    return final


def _remove_superseded(final: Path) -> None:
    """Delete exports of the same source/backend/weights made by an older exporter version:
    they can never be loaded again and each takes hundreds of MB."""
    try:
        mine = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        return
    same = ("identity", "backend", "weights")
    for d in final.parent.iterdir():
        if d == final or d.name.startswith(".") or not is_complete(d):
            continue
        try:
            other = json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if all(other.get(k) == mine.get(k) for k in same):
            shutil.rmtree(d, ignore_errors=True)


def load_session(source, backend: str = "onnx", weights: str = "int4",
                 threads: int | None = None, progress: bool = True, **options) -> DecoderSession:
    """A ready DecoderSession for ``source`` (a Source or a name/path), exporting it if needed;
    ``options`` go to the backend's load function."""
    out = ensure_export(source, backend, weights, progress)
    try:
        return get_backend(backend).load(out, threads, **options)
    except QcoderError:
        raise
    except Exception as e:  # a damaged cache entry: say where it is and how to rebuild it
        raise ExportError(
            f"could not load the cached {backend} export at {out}: {type(e).__name__}: {e}. "
            f"Delete that folder to rebuild it."
        ) from e


def _clean_stale(final: Path) -> None:
    """Remove leftovers of crashed exports of the same key (their process is gone).

    Ours are ``.tmp-<name>-<pid>``; a backend may add its own temp sibling inside that
    name (``..tmp-<name>-<pid>.tmp-xyz``), so both are matched by the pid after the name.
    """
    pattern = re.compile(re.escape(final.name) + r"-(\d+)(?:\.|$)")
    for d in final.parent.iterdir():
        m = pattern.search(d.name)
        if not d.name.startswith(".") or not m:
            continue
        pid = int(m.group(1))
        if paths.other_process_alive(pid):
            continue
        shutil.rmtree(d, ignore_errors=True)


def atomic_write_files(out_dir: Path, names: Sequence[str],
                       write: Callable[[Path], object]) -> None:
    """``paths.atomic_write_text`` for files a library writes itself (OpenVINO's save_model
    writes the .xml and its .bin together): ``write(tmp)`` fills a temp folder inside
    ``out_dir``, then each named file is renamed over its namesake in the order given (the
    one a reader checks for completeness last). A failure leaves the old files, no temp."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir))
    try:
        write(tmp)
        for name in names:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(d: Path) -> None:
    """Flush every file of the export to disk before it is published by the rename."""
    for p in d.rglob("*"):
        if p.is_file():
            try:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass
