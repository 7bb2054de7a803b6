"""The export cache: reuse, crash safety, keys.

Most tests register a small file-writing backend (export = write files, load = read them back)
so that the cache logic runs in milliseconds; the last ones run the real ONNX Runtime backend on
a tiny transformers model once it exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from qcoder_ds.errors import QcoderError
from qcoder_ds.runtime import export as ex
from qcoder_ds.runtime.backend import DecoderSession


class FakeSource:
    def __init__(self, identity: str = "a" * 64, name: str = "tiny-test"):
        self.identity = identity
        self.name = name
        self.checkpoints = 0

    def checkpoint(self):
        self.checkpoints += 1
        return {"weights": "w"}


class FileSession(DecoderSession):
    def __init__(self, out_dir: Path, threads):
        self.payload = (out_dir / "model.bin").read_text()
        self.threads = threads
        self.max_context = 32
        self.vocab_size = 4

    def _reset(self):
        self.position = 0

    def _forward(self, ids):
        return np.zeros(4, np.float32)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QCODER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_backend(monkeypatch):
    calls = {"export": 0, "load": 0, "fail_after_write": False}
    mod = types.ModuleType("qcoder_fake_backend")

    def export_fake(ckpt, out_dir, weights="int4", progress=True):
        calls["export"] += 1
        (out_dir / "model.bin").write_text(f"{weights}:{ckpt['weights']}")
        if calls["fail_after_write"]:
            raise RuntimeError("disk full (simulated)")

    def load_fake(out_dir, threads=None):
        calls["load"] += 1
        return FileSession(Path(out_dir), threads)

    mod.export_fake, mod.load_fake, mod.EXPORTER_VERSION = export_fake, load_fake, "7"
    monkeypatch.setitem(sys.modules, "qcoder_fake_backend", mod)
    monkeypatch.setitem(ex.BACKENDS, "fake",
                        ex.Backend("fake", "qcoder_fake_backend", "export_fake", "load_fake"))
    return calls, mod


def test_second_load_reuses_the_export(home, fake_backend):
    calls, _ = fake_backend
    src = FakeSource()
    s1 = ex.load_session(src, backend="fake", weights="int8", threads=2, progress=False)
    s2 = ex.load_session(src, backend="fake", weights="int8", threads=3, progress=False)
    assert calls == {"export": 1, "load": 2, "fail_after_write": False}
    assert src.checkpoints == 1  # the weights are not even read the second time
    assert s1.payload == s2.payload == "int8:w" and s2.threads == 3
    (d,) = [p for p in (home / "exports").iterdir()]
    manifest = json.loads((d / ex.MANIFEST).read_text())
    assert manifest["identity"] == src.identity and manifest["weights"] == "int8"
    assert manifest["backend_exporter_version"] == "7"


def test_key_changes_with_every_option(home, fake_backend, monkeypatch):
    _, mod = fake_backend
    base = ex.export_dir(FakeSource(), "fake", "int4")
    others = {
        ex.export_dir(FakeSource(), "fake", "int8"),
        ex.export_dir(FakeSource(), "fake", "fp32"),
        ex.export_dir(FakeSource(identity="b" * 64), "fake", "int4"),
        ex.export_dir(FakeSource(), "onnx", "int4") if _has("ort_backend") else None,
    }
    monkeypatch.setattr(ex, "EXPORTER_VERSION", "999")
    others.add(ex.export_dir(FakeSource(), "fake", "int4"))
    monkeypatch.setattr(ex, "EXPORTER_VERSION", "1")
    mod.EXPORTER_VERSION = "8"  # the backend's own exporter changed
    others.add(ex.export_dir(FakeSource(), "fake", "int4"))
    others.discard(None)
    assert base not in others and len(others) >= 5
    mod.EXPORTER_VERSION = "7"
    assert ex.export_dir(FakeSource(), "fake", "int4") == base  # stable otherwise
    assert ex.cache_key("x", "onnx", "int4") == ex.cache_key("x", "onnx", "int4")


def test_failed_export_leaves_nothing_loadable_and_nothing_behind(home, fake_backend):
    calls, _ = fake_backend
    calls["fail_after_write"] = True
    with pytest.raises(RuntimeError, match="disk full"):
        ex.load_session(FakeSource(), backend="fake", progress=False)
    assert list((home / "exports").iterdir()) == []
    calls["fail_after_write"] = False
    ex.load_session(FakeSource(), backend="fake", progress=False)
    assert calls["export"] == 2


def test_killed_export_is_never_loaded_and_is_cleaned_up(home, tmp_path):
    """A process killed mid-export (SIGKILL: no cleanup code runs) leaves a .tmp folder only."""
    script = tmp_path / "crash.py"
    script.write_text("""
import os, signal, sys, types
from qcoder_ds.runtime import export as ex
mod = types.ModuleType("m")
def export_m(ckpt, out_dir, weights="int4", progress=True):
    (out_dir / "model.bin").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
mod.export_m = export_m
sys.modules["m"] = mod
ex.register_backend(ex.Backend("fake", "m", "export_m", "load_m"))
class S:
    identity = "a" * 64
    name = "tiny-test"
    def checkpoint(self): return {"weights": "w"}
ex.ensure_export(S(), "fake", "int4", progress=False)
""")
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "QCODER_HOME": str(home),
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=120,
                       check=False)
    assert r.returncode == -9
    left = list((home / "exports").iterdir())
    assert len(left) == 1 and left[0].name.startswith(".tmp-")
    assert not ex.is_complete(left[0])


def test_next_export_after_a_crash_rebuilds_and_cleans(home, fake_backend, tmp_path):
    calls, _ = fake_backend
    final = ex.export_dir(FakeSource(), "fake", "int4")
    stale = final.with_name(f".tmp-{final.name}-999999999")  # no such process
    stale.mkdir(parents=True)
    (stale / "model.bin").write_text("half")
    inner = final.with_name(f"..tmp-{final.name}-999999999.tmp-abc123")  # a backend's own temp
    inner.mkdir()
    live = final.with_name(f".tmp-{final.name}-{os.getppid()}")  # a live process: left alone
    live.mkdir()
    s = ex.load_session(FakeSource(), backend="fake", progress=False)
    assert s.payload == "int4:w" and calls["export"] == 1
    assert not stale.exists() and not inner.exists()
    assert live.exists()


def test_folder_without_manifest_is_rebuilt(home, fake_backend):
    calls, _ = fake_backend
    final = ex.export_dir(FakeSource(), "fake", "int4")
    final.mkdir(parents=True)
    (final / "model.bin").write_text("damaged")
    s = ex.load_session(FakeSource(), backend="fake", progress=False)
    assert s.payload == "int4:w" and calls["export"] == 1


def test_unknown_backend_and_weights_are_clear_errors(home, fake_backend):
    with pytest.raises(QcoderError, match="unknown backend 'tensorrt'.*onnx.*openvino"):
        ex.load_session(FakeSource(), backend="tensorrt")
    with pytest.raises(QcoderError, match="unknown weights format 'int3'.*int4, int8, fp32"):
        ex.load_session(FakeSource(), backend="fake", weights="int3")


def test_missing_runtime_names_the_extra(home, monkeypatch):
    monkeypatch.setitem(ex.BACKENDS, "nope", ex.Backend("nope", "qcoder_no_such_runtime_mod",
                                                        "e", "l", extra="nope"))
    with pytest.raises(QcoderError, match=r"qcoder-ds\[nope\]"):
        ex.load_session(FakeSource(), backend="nope")


def _has(name: str) -> bool:
    try:
        __import__(f"qcoder_ds.runtime.{name}")
        return True
    except ImportError:
        return False


class DirSource:
    """A tiny HF directory as a source (what qcoder_ds.models.sources gives for a folder)."""

    def __init__(self, d: Path):
        from qcoder_ds.models.checkpoint import HFCheckpoint

        self.d, self.name, self.identity = d, "tiny-qwen2", "c" * 64
        self._ckpt = HFCheckpoint(d)

    def checkpoint(self):
        return self._ckpt


@pytest.mark.skipif(not _has("ort_backend"), reason="the ORT backend has not landed yet")
def test_real_onnx_export_is_cached_and_reloads_identically(home, tiny_dir, monkeypatch):
    from qcoder_ds.runtime import ort_backend

    src = DirSource(tiny_dir("qwen2"))
    exported = []
    real = ort_backend.export_onnx
    monkeypatch.setattr(ort_backend, "export_onnx",
                        lambda *a, **k: (exported.append(1), real(*a, **k)))
    s1 = ex.load_session(src, "onnx", "fp32", threads=1, progress=False)
    ids = np.array([3, 1, 4, 1, 5], np.int64)
    s1.reset()
    a = s1.forward(ids)
    s2 = ex.load_session(src, "onnx", "fp32", threads=1, progress=False)
    s2.reset()
    np.testing.assert_array_equal(a, s2.forward(ids))
    assert exported == [1]


# ------------------------------------------------------------------ `qcoder export` and recipes


def test_shipped_recipes_parse():
    from qcoder_ds.commands.export import read_recipe

    root = Path(__file__).resolve().parents[1] / "export"
    src, sha, exports = read_recipe(root / "qwen2.5-coder-0.5b-instruct.toml")
    assert src == "qwen2.5-coder-0.5b-instruct" and sha.startswith("1d9614")
    assert {(e["backend"], e["weights"]) for e in exports} >= {("onnx", "int4"),
                                                               ("openvino", "int4")}
    src, _, exports = read_recipe(root / "qwen3-coder-30b-a3b.toml")
    assert src == "qwen3-coder-30b-a3b-instruct" and exports


@pytest.mark.parametrize("text,msg", [
    ("[model\n", "not valid TOML"),
    ("[[export]]\nbackend='onnx'\nweights='int4'\n", "needs a source"),
    ("[model]\nsource='x'\n", "no \\[\\[export\\]\\] entries"),
    ("[model]\nsource='x'\n[[export]]\nbackend='cuda'\nweights='int4'\n", "backend must be"),
    ("[model]\nsource='x'\n[[export]]\nbackend='onnx'\nweights='int2'\n", "weights must be"),
])
def test_bad_recipes_are_clear_errors(tmp_path, text, msg):
    from qcoder_ds.commands.export import RecipeError, read_recipe

    f = tmp_path / "r.toml"
    f.write_text(text)
    with pytest.raises(RecipeError, match=msg):
        read_recipe(f)


@pytest.mark.skipif(not _has("ort_backend"), reason="the ORT backend has not landed yet")
def test_qcoder_export_command_builds_checks_and_reuses(home, tiny_dir, capsys):
    from qcoder_ds import cli

    d = str(tiny_dir("qwen2"))
    assert cli.main(["export", d, "--backend", "onnx", "--weights", "fp32", "--check"]) == 0
    first = capsys.readouterr()
    out = Path(first.out.strip())
    assert ex.is_complete(out) and (out / "model.onnx").is_file()
    assert "check ok" in first.err
    assert cli.main(["export", d, "--backend", "onnx", "--weights", "fp32"]) == 0
    again = capsys.readouterr()
    assert Path(again.out.strip()) == out and "already exported (cached)" in again.err
    assert cli.main(["export"]) == 1
    assert "say what to export" in capsys.readouterr().err


def test_a_new_exporter_version_replaces_the_old_export(home, fake_backend):
    calls, mod = fake_backend
    old = ex.ensure_export(FakeSource(), "fake", "int4", progress=False)
    other = ex.ensure_export(FakeSource(), "fake", "int8", progress=False)
    mod.EXPORTER_VERSION = "8"
    new = ex.ensure_export(FakeSource(), "fake", "int4", progress=False)
    assert new != old and ex.is_complete(new)
    assert not old.exists()  # superseded: never loadable again
    assert other.exists()  # other options are kept
    assert calls["export"] == 3


def test_registered_backends_resolve_to_real_functions():
    """Every registry entry names an export and a load function that exist (OpenVINO's export
    lives beside its graph builder)."""
    import importlib.util

    for b in ex.BACKENDS.values():
        if b.extra and importlib.util.find_spec(b.extra) is None:
            continue
        if b.name == "fake":
            continue
        assert callable(b._fn(b.export_fn)) and callable(b._fn(b.load_fn)), b.name
