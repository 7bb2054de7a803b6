"""The expert store's format, and the errors a bad store or budget gives."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_moe import build_tiny_moe  # noqa: E402

from qcoder_ds.errors import ModelError, QcoderError  # noqa: E402
from qcoder_ds.models.checkpoint import HFCheckpoint  # noqa: E402
from qcoder_ds.runtime.expert_cache import (  # noqa: E402
    ExpertBudgetError,
    parse_budget,
    resident_cost,
)
from qcoder_ds.runtime.expert_store import (  # noqa: E402
    BLOB_ALIGN,
    STORE_BIN,
    STORE_INDEX,
    ExpertStore,
    ExpertStoreError,
    ExpertStoreWriter,
)
from qcoder_ds.runtime.ort_backend import export_onnx, load_onnx  # noqa: E402

PROMPT = [5, 17, 301, 42, 7, 88, 150, 3]


def _arrays(rng, layer: int, expert: int) -> dict[str, np.ndarray]:
    return {"a.packed": rng.integers(0, 255, (6, 2, 16), dtype=np.uint8),
            "a.scales": rng.standard_normal(12).astype(np.float32),
            "b.weight_t": np.full((3, 5), layer * 100 + expert, np.float32)}


def test_round_trip_alignment_and_index(tmp_path):
    rng = np.random.default_rng(0)
    w = ExpertStoreWriter(tmp_path, 2, 3, "e" * 64, {"weights": "int4"})
    written = {}
    for key in [(1, 2), (0, 0), (0, 1), (1, 0), (0, 2), (1, 1)]:  # any order
        written[key] = _arrays(rng, *key)
        w.add(*key, written[key])
    w.close()
    s = ExpertStore(tmp_path, export_id="e" * 64)
    assert (s.layers, s.experts, s.quantization) == (2, 3, {"weights": "int4"})
    assert s.total_bytes == 6 * s.blob_bytes
    index = json.loads((tmp_path / STORE_INDEX).read_text())
    assert all(off % BLOB_ALIGN == 0 for row in index["offsets"] for off in row)
    assert all(a["offset"] % 64 == 0 for a in index["layout"])
    for key, arrays in written.items():
        got = s.read(*key)
        assert list(got) == list(arrays)
        for name in arrays:
            assert got[name].dtype == arrays[name].dtype
            np.testing.assert_array_equal(got[name], arrays[name])
    with pytest.raises(ExpertStoreError, match="no expert"):
        s.read(2, 0)


def test_writer_refuses_mixed_layouts_duplicates_and_gaps(tmp_path):
    rng = np.random.default_rng(0)
    w = ExpertStoreWriter(tmp_path / "a", 1, 2, "a" * 64, {})
    w.add(0, 0, _arrays(rng, 0, 0))
    with pytest.raises(ExpertStoreError, match="already written"):
        w.add(0, 0, _arrays(rng, 0, 0))
    with pytest.raises(ExpertStoreError, match="another layout"):
        w.add(0, 1, {"a.packed": np.zeros((7, 2, 16), np.uint8)})
    with pytest.raises(ExpertStoreError, match="misses 1 of 2"):
        w.close()
    assert not (tmp_path / "a" / STORE_INDEX).exists()  # never looks complete


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """The same tiny model exported twice (two export ids), and its HF directory."""
    hf = build_tiny_moe(tmp_path_factory.mktemp("hf"), layers=2, experts=8, top_k=2)
    outs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(name) / "export"
        export_onnx(HFCheckpoint(hf), out, weights="fp32", progress=False)
        outs.append(out)
    return hf, outs[0], outs[1]


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(src, dst)
    return dst


def test_truncated_store_is_refused(two_exports, tmp_path):
    _, a, _ = two_exports
    out = _copy(a, tmp_path)
    size = (out / STORE_BIN).stat().st_size
    with open(out / STORE_BIN, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(ExpertStoreError, match="truncated"):
        load_onnx(out)


def test_store_from_another_export_is_refused(two_exports, tmp_path):
    _, a, b = two_exports
    out = _copy(a, tmp_path)
    for name in (STORE_BIN, STORE_INDEX):  # the whole store of the other export
        shutil.copy(b / name, out / name)
    with pytest.raises(ExpertStoreError, match="another export"):
        load_onnx(out)
    out2 = _copy(a, tmp_path / "2")
    shutil.copy(b / STORE_BIN, out2 / STORE_BIN)  # only its blobs, under this index
    with pytest.raises(ExpertStoreError, match="another export"):
        load_onnx(out2)
    load_onnx(a).forward(np.array(PROMPT))  # the original is fine


def test_damaged_blob_is_an_error_not_other_numbers(two_exports, tmp_path):
    _, a, _ = two_exports
    out = _copy(a, tmp_path)
    index = json.loads((out / STORE_INDEX).read_text())
    with open(out / STORE_BIN, "r+b") as f:  # flip a byte inside every blob
        for row in index["offsets"]:
            for off in row:
                f.seek(off + 10)
                b = f.read(1)
                f.seek(off + 10)
                f.write(bytes([b[0] ^ 0xFF]))
    s = load_onnx(out)
    with pytest.raises(ExpertStoreError, match="damaged"):
        s.forward(np.array(PROMPT))


def test_missing_store_and_bad_index(two_exports, tmp_path):
    _, a, _ = two_exports
    out = _copy(a, tmp_path)
    (out / STORE_INDEX).write_text("{not json")
    with pytest.raises(ExpertStoreError, match="not a readable expert store index"):
        load_onnx(out)
    (out / STORE_INDEX).unlink()
    with pytest.raises(ExpertStoreError, match="no expert store"):
        load_onnx(out)


def test_budget_below_one_layers_top_k_names_the_minimum(two_exports):
    _, a, _ = two_exports
    store = ExpertStore(a)
    minimum = 2 * resident_cost(store.blob_bytes, "onnx", "fp32")
    with pytest.raises(ExpertBudgetError, match=f"below the minimum of .*{minimum} bytes"):
        load_onnx(a, expert_ram=str(minimum - 1))
    with pytest.raises(ExpertBudgetError, match="top-2 experts"):
        load_onnx(a, expert_ram="1%")
    full = load_onnx(a).forward(np.array(PROMPT))
    tight = load_onnx(a, expert_ram=str(minimum))  # exactly the minimum works
    assert tight.cache.capacity == 2
    np.testing.assert_array_equal(tight.forward(np.array(PROMPT)), full)


def test_moe_options_on_a_dense_export_are_refused(tiny_dir, tmp_path):
    export_onnx(HFCheckpoint(tiny_dir("qwen3")), tmp_path / "d", weights="fp32", progress=False)
    with pytest.raises(QcoderError, match="expert_ram: only for a mixture-of-experts"):
        load_onnx(tmp_path / "d", expert_ram="50%")


@pytest.mark.parametrize("text,expect", [
    ("6GB", 6 * 10**9), ("6GiB", 6 * 2**30), ("800MB", 800 * 10**6), ("1.5g", int(1.5 * 2**30)),
    ("50%", 500), ("100%", 1000), ("all", 1000), (None, 1000), ("12345", 12345), ("2 kB", 2000),
])
def test_parse_budget(text, expect):
    assert parse_budget(text, 1000) == expect


@pytest.mark.parametrize("text", ["lots", "6XB", "-5GB", "0%", "150%"])
def test_parse_budget_refuses_nonsense(text):
    with pytest.raises(ExpertBudgetError):
        parse_budget(text, 1000)


def test_unsupported_moe_layout_is_refused_before_writing(tmp_path):
    hf = build_tiny_moe(tmp_path / "hf", layers=2, experts=4, top_k=2)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["decoder_sparse_step"] = 2
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="decoder_sparse_step"):
        export_onnx(HFCheckpoint(hf), tmp_path / "out", weights="int4", progress=False)
    assert not (tmp_path / "out").exists()
