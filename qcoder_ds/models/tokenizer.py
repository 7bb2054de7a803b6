"""The tokenizer of a model, from a GGUF's ``tokenizer.ggml.*`` metadata or an HF directory.

Built on the ``tokenizers`` library (the same Rust BPE transformers uses), so token ids match
transformers exactly. From a GGUF the tokenizer is rebuilt the way transformers' GGUF loader
does it: byte-level BPE over the file's vocabulary and merges, the split regex its
``tokenizer.ggml.pre`` names, control tokens added as special tokens and user-defined ones as
plain added tokens. From an HF directory, ``tokenizer.json`` is loaded as is.

Note: a GGUF carries no normalizer. Like transformers and llama.cpp reading the same file, no
Unicode normalization is applied (the Qwen tokenizer.json applies NFC), so only text with
decomposed combining marks can tokenize differently between the two sources.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _Backend

from qcoder_ds.errors import ModelError
from qcoder_ds.models.gguf_metadata import GGUFMetadata, read_gguf_metadata
from qcoder_ds.paths import atomic_write_text

# Split regexes, by the value of ``tokenizer.ggml.pre`` (as llama.cpp's converter names them).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "default": None,  # GPT-2's own regex (ByteLevel with use_regex)
    "gpt-2": None,
}

# GGUF token types (llama.cpp's llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4
# Tokens that end a turn. llama.cpp stops on these whatever the file's eos id says (its
# "end of generation" set); generation must do the same or the model talks past its turn.
_END_OF_GENERATION = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|end|>",
    "<end_of_turn>", "<EOT>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table that byte-level BPE vocabularies use."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class Tokenizer:
    """A model's tokenizer: text <-> token ids, special tokens, and streaming detokenization."""

    def __init__(
        self,
        backend: _Backend,
        *,
        eos_token_ids: list[int],
        bos_token_id: int | None,
        pad_token_id: int | None,
        special_tokens_map: dict[str, str],
        vocab_size: int,
        chat_template: str | None = None,
    ):
        self.backend = backend
        self.eos_token_ids = list(eos_token_ids)
        self.bos_token_id = bos_token_id
        self.pad_token_id = pad_token_id
        #: named special tokens (bos_token, eos_token, ...) that chat templates may refer to
        self.special_tokens_map = dict(special_tokens_map)
        #: rows of the embedding matrix the ids index (a GGUF's token count; may exceed the
        #: number of tokens the BPE can produce)
        self.vocab_size = vocab_size
        self.chat_template = chat_template
        self.special_ids = frozenset(
            i for i, t in backend.get_added_tokens_decoder().items() if t.special
        )
        self._plain: _Backend | None = None

    @property
    def eos_token_id(self) -> int | None:
        """The primary end-of-sequence id (the first of ``eos_token_ids``)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    def encode(self, text: str, add_special_tokens: bool = False,
               allow_special: bool = True) -> list[int]:
        """Token ids of ``text``.

        ``add_special_tokens`` adds what the tokenizer's post-processor adds (a BOS for
        Llama-style vocabularies; nothing for Qwen). ``allow_special=False`` encodes special
        tokens written in the text (``<|im_end|>``) as plain text, so untrusted data pasted
        into a prompt cannot close a turn or open a new one.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        backend = self.backend if allow_special else self._plain_backend()
        return backend.encode(text, add_special_tokens=add_special_tokens).ids

    def _plain_backend(self) -> _Backend:
        if self._plain is None:  # a private copy: the flag is state on the Rust object
            plain = _Backend.from_str(self.backend.to_str())
            plain.encode_special_tokens = True
            self._plain = plain
        return self._plain

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 (a cut multi-byte character) decodes to U+FFFD."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def detokenizer(self, skip_special_tokens: bool = False) -> IncrementalDetokenizer:
        """A fresh streaming decoder for one generation."""
        return IncrementalDetokenizer(self, skip_special_tokens)

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` + ``tokenizer_config.json`` (HF layout) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "tokenizer.json", self.backend.to_str(pretty=True))
        config: dict[str, Any] = dict(self.special_tokens_map)
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        atomic_write_text(d / "tokenizer_config.json",
                          json.dumps(config, indent=2, ensure_ascii=False))
        return d


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces, never emitting half a character.

    A byte-level token can end inside a multi-byte UTF-8 character (an emoji is often three
    tokens). Each ``push`` decodes only a short window of recent ids and holds text back while
    it ends in an incomplete character; ``finish`` flushes whatever is left. The pieces joined
    equal ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the decoding window
        self._read = 0  # ids before this are already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly complete text (often '', never a partial character)."""
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        new_text = self._decode(self._ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            piece = new_text[len(prefix_text):]
            self._prefix, self._read = self._read, len(self._ids)
            if self._prefix > 64:  # keep the window short
                del self._ids[: self._prefix]
                self._read -= self._prefix
                self._prefix = 0
            return piece
        return ""

    def finish(self) -> str:
        """The text still held back (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        rest = self._decode(self._ids[self._prefix:])[len(prefix_text):]
        self._prefix = self._read = len(self._ids)
        return rest


# --------------------------------------------------------------------------- GGUF


def load_tokenizer_from_gguf(source: str | Path | GGUFMetadata | Any) -> Tokenizer:
    """Build the tokenizer a GGUF file describes.

    ``source`` is a path, a ``GGUFMetadata`` (from ``read_gguf_metadata``) or an open
    ``gguf.GGUFReader`` (so a caller that already opened the file does not parse it twice).
    """
    meta = _gguf_fields(source)
    where = meta.get("__path__", "GGUF")
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or not tokens:
        raise ModelError(f"{where}: the GGUF carries no tokenizer (no tokenizer.ggml.tokens)")
    if model != "gpt2":
        raise ModelError(
            f"{where}: tokenizer model {model!r} is not supported from a GGUF (byte-level BPE "
            "'gpt2' is, as Qwen and Llama 3 use); point qcoder at the model's HF directory instead"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZER_SPLITS:
        raise ModelError(
            f"{where}: unknown pre-tokenizer {pre!r} (tokenizer.ggml.pre); known: "
            f"{', '.join(sorted(PRE_TOKENIZER_SPLITS))}"
        )
    merges = meta.get("tokenizer.ggml.merges")
    if not merges:
        raise ModelError(f"{where}: the GGUF's BPE tokenizer has no tokenizer.ggml.merges")
    types = list(meta.get("tokenizer.ggml.token_type") or [])

    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {}
    for i, tok in enumerate(tokens):
        if not set(tok) <= alphabet:  # stored as raw text: respell in the byte alphabet
            tok = "".join(spelling[b] for b in tok.encode("utf-8"))
        vocab.setdefault(tok, i)
    try:
        pairs = [tuple(m.split(" ")) for m in merges]
        bpe = models.BPE(vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="",
                         end_of_word_suffix="", fuse_unk=False)
    except Exception as e:  # the Rust side raises on a merge naming an unknown token
        raise ModelError(f"{where}: inconsistent BPE vocabulary/merges ({e})") from None
    backend = _Backend(bpe)
    split = PRE_TOKENIZER_SPLITS[pre]
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    backend.decoder = decoders.ByteLevel()

    typed = list(zip(tokens, types, strict=False))  # an old file may lack token types
    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in typed if ty == _CONTROL and set(t) <= alphabet]
    backend.add_special_tokens(control)
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in typed if ty == _USER_DEFINED and t in vocab]
    backend.add_tokens(user)

    def token_id(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    bos, eos, pad, unk = (token_id(k) for k in
                          ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if (add_bos and bos is not None) or (add_eos and eos is not None):
        single = ([f"{tokens[bos]}:0"] if add_bos and bos is not None else []) + ["$A:0"]
        single += [f"{tokens[eos]}:0"] if add_eos and eos is not None else []
        specials = [(tokens[i], i) for i, flag in ((bos, add_bos), (eos, add_eos))
                    if flag and i is not None]
        backend.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=sorted(set(specials), key=lambda x: x[1]))

    named = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    special_map = {k: tokens[v] for k, v in named.items() if v is not None}
    extra = [token_id(k) for k in ("eot_token_id", "eom_token_id")]
    return Tokenizer(
        backend,
        eos_token_ids=_end_ids(backend, [eos, *extra]),
        bos_token_id=bos,
        pad_token_id=pad,
        special_tokens_map=special_map,
        vocab_size=len(tokens),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def _gguf_fields(source) -> dict:
    if isinstance(source, (str, os.PathLike)):
        source = read_gguf_metadata(source, tensors=False)
    if isinstance(source, GGUFMetadata):
        return {**source.fields, "__path__": str(source.path)}
    if hasattr(source, "fields"):  # gguf.GGUFReader
        out = {k: f.contents() for k, f in source.fields.items()
               if k.startswith("tokenizer.")}
        out["__path__"] = str(getattr(getattr(source, "data", None), "filename", None) or "GGUF")
        return out
    raise TypeError(f"not a GGUF path, GGUFMetadata or GGUFReader: {type(source).__name__}")


def _end_ids(backend: _Backend, primary: list[int | None]) -> list[int]:
    """Primary eos first, then every special token that ends a turn (see _END_OF_GENERATION)."""
    ids: list[int] = []
    for i in primary:
        if i is not None and i not in ids:
            ids.append(i)
    added = backend.get_added_tokens_decoder()
    for i in sorted(added):
        if added[i].special and added[i].content in _END_OF_GENERATION and i not in ids:
            ids.append(i)
    return ids


# --------------------------------------------------------------------------- HF directory


def load_tokenizer_from_dir(directory: str | Path) -> Tokenizer:
    """Load ``tokenizer.json`` (+ ``tokenizer_config.json``, chat template) from an HF directory."""
    d = Path(directory)
    tj = d / "tokenizer.json"
    if not tj.is_file():
        extra = " (only the slow sentencepiece files are there)" if any(
            (d / n).is_file() for n in ("tokenizer.model", "vocab.json")) else ""
        raise ModelError(
            f"{d}: no tokenizer.json{extra}; qcoder needs the fast tokenizer file — save it with "
            "transformers' AutoTokenizer.from_pretrained(...).save_pretrained(dir)"
        )
    try:
        backend = _Backend.from_file(str(tj))
    except Exception as e:
        raise ModelError(f"{tj}: not a readable tokenizer.json ({e})") from None
    config = _read_json(d / "tokenizer_config.json")
    special_map: dict[str, str] = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            special_map[name] = value

    def tid(name: str) -> int | None:
        return backend.token_to_id(special_map[name]) if name in special_map else None

    gen = _read_json(d / "generation_config.json")
    gen_eos = gen.get("eos_token_id", _read_json(d / "config.json").get("eos_token_id"))
    gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
    return Tokenizer(
        backend,
        eos_token_ids=_end_ids(backend, [tid("eos_token"), *[g for g in gen_eos
                                                            if isinstance(g, int)]]),
        bos_token_id=tid("bos_token"),
        pad_token_id=tid("pad_token"),
        special_tokens_map=special_map,
        vocab_size=backend.get_vocab_size(with_added_tokens=True),
        chat_template=_dir_chat_template(d, config),
    )


def _dir_chat_template(d: Path, config: dict) -> str | None:
    """tokenizer_config.json's chat_template, else chat_template.jinja / chat_template.json."""
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template:
        return template
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return _read_json(d / "chat_template.json").get("chat_template")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}
