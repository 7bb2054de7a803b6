"""A backend can come from another installed package, through the ``qcoder_ds.backends``
entry point group (the way simonw/llm finds its plugins)."""

import sys

import pytest

from qcoder_ds.runtime import export


def _install_plugin(root, name, value, module_source):
    """A real (if small) installed distribution: a dist-info folder with entry_points.txt."""
    (root / f"{name}_plugin.py").write_text(module_source)
    info = root / f"qcoder_{name}_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: qcoder-{name}-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(f"[qcoder_ds.backends]\n{name} = {value}\n")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(export, "BACKENDS", dict(export.BACKENDS))
    yield tmp_path
    for mod in [m for m in sys.modules if m.endswith("_plugin")]:
        del sys.modules[mod]


def test_a_plugin_backend_is_found_and_used(plugins):
    _install_plugin(plugins, "toy", "toy_plugin:BACKEND",
                    "from qcoder_ds.runtime.export import Backend\n"
                    "def load(out_dir, threads=None):\n    return ('loaded', out_dir)\n"
                    "BACKEND = Backend('toy', 'toy_plugin', 'load', 'load')\n")
    assert export.load_plugins() == ["toy"]
    backend = export.get_backend("toy")
    assert backend.load(plugins, threads=1) == ("loaded", plugins)
    assert export.load_plugins() == []  # once registered, not again


def test_a_plugin_cannot_replace_a_built_in_or_break_the_others(plugins, caplog):
    _install_plugin(plugins, "onnx", "onnx_plugin:BACKEND", "BACKEND = None\n")
    _install_plugin(plugins, "broken", "broken_plugin:BACKEND", "raise ImportError('nope')\n")
    _install_plugin(plugins, "odd", "odd_plugin:BACKEND", "BACKEND = 'not a backend'\n")
    assert export.load_plugins() == []
    assert export.get_backend("onnx").module == "qcoder_ds.runtime.ort_backend"
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "broken" in said and "nope" in said and "odd_plugin:BACKEND is not a Backend" in said
    with pytest.raises(export.ExportError, match="unknown backend 'broken'"):
        export.get_backend("broken")
