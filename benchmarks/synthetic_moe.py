"""Synthetic Qwen3-Coder-30B-A3B checkpoints for the MoE benchmarks: the real layer shapes with
random weights, any number of layers, written layer by layer (never the whole model in memory)
as a Hugging Face directory (config.json ``qwen3_moe`` + safetensors shards) and/or as a
``qwen3moe`` GGUF (Q4_0 for llama.cpp, F16/F32), from one seed.

The real weights (61 GB bf16) are not obtainable here; what an expert cache sees of a model is
its shapes (bytes per expert) and its routing, so those are what this reproduces:

- shapes: hidden 2048, 128 experts of FFN 768, 8 routed per token (norm_topk_prob), 32 q / 4 kv
  heads of dim 128, untied embeddings. One layer's experts are 128 x 3 x 2048 x 768 = 604 M
  parameters: 1.21 GB at fp16, 0.34 GB at Q4_0 (so 12 layers are 14.5 GB at fp16, 4.1 GB at
  Q4_0). The vocabulary is cut to ``vocab`` (default 32768, not 151936): embeddings and lm_head
  are dense weights read every token whatever the cache does; at full size, with a handful of
  layers, the lm_head would dwarf the experts. benchmarks/moe.py's projection adds the full
  vocabulary back. A cut vocabulary has no tokenizer (the GGUF says ``no_vocab`` with
  ``vocab_size`` dummy tokens, which llama.cpp accepts); the benchmarks feed token ids.
  ``--vocab 151936 --tokenizer qwen2.5-coder-0.5b-instruct`` copies the embedded Qwen2.5
  tokenizer (same vocabulary as Qwen3-Coder) into the HF directory instead.

- routing: uniform random routing would make every cache look equally bad (no expert is more
  useful to keep than another). Real MoE routing on one domain is skewed (a few experts per layer
  take a large share of code tokens) and temporally local (consecutive tokens of one construct
  route alike). Three components reproduce that, each a knob:

  1. popularity (``zipf``): a per-expert logit bias ``zipf * log(1 / rank)``, ranks a random
     permutation per layer (Zipf's law over experts). The router has no bias term, so the bias
     rides on a massive-activation dimension (real LLMs have such dimensions): every embedding
     row carries the same large value in dimension 0, the router's column 0 holds bias / x0.
  2. topic (``topic``): embeddings carry a low-rank (``rank`` = 8) component from one of
     ``clusters`` = 16 topic centroids (token v is in cluster v mod 16, with a per-token jitter);
     each layer's router has its own random read-out of that subspace. Similar tokens, similar
     experts, per layer differently.
  3. noise (``noise``): an isotropic part of router and embeddings, fresh for every token.

  ``token_stream`` draws the prompt the benchmarks feed: a Markov chain over topic clusters that
  stays in its cluster with probability ``stickiness`` (0.9: runs of ~10 tokens, like a line of
  code), a token uniform within the cluster. Temporal locality comes from the stream's topic runs
  through component 2. Weights other than router and embeddings are N(0, 0.02) (the residual
  stream stays dominated by the embedding, so the routing of deeper layers follows the same
  structure; RMSNorm weights are 1).

  Defaults (zipf 0.6, topic 1.5, noise 1.0, stickiness 0.9) give, routed with numpy on the
  embeddings (8 layers, 600 tokens): 45% of one layer's routes to its top 10% of experts
  (uniform: ~10%) and 25% of a layer's experts reused from the previous token (uniform: 6%) --
  our assumption of a code-domain decode (skewed, but with every expert in use), stated here so
  that a result is read with it. ``--zipf 0 --topic 0`` gives uniform routing (measured 13% and
  6%), the cache's worst case; zipf 0.8 gives 57% and 34%.

    python benchmarks/synthetic_moe.py out/ --layers 4 --hf --gguf Q4_0
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import struct
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_EMBED_CHUNK = 4096  # embedding rows per rng chunk, so a few rows can be regenerated cheaply
_TOPIC_RANK = 8
_CLUSTERS = 16
_STD = 0.02


@dataclass(frozen=True)
class SyntheticSpec:
    """A synthetic Qwen3-MoE: Qwen3-Coder-30B-A3B's shapes by default, ``layers`` of them."""

    layers: int = 4
    hidden: int = 2048
    experts: int = 128
    top_k: int = 8
    moe_ff: int = 768
    heads: int = 32
    kv_heads: int = 4
    head_dim: int = 128
    vocab: int = 32768
    seed: int = 0
    zipf: float = 0.6
    topic: float = 1.5
    noise: float = 1.0
    dense_ff: int = 6144  # intermediate_size in Qwen3-Coder's config (unused by MoE layers)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000_000.0
    max_positions: int = 262_144

    def expert_params(self) -> int:
        """Parameters of one expert (gate, up, down)."""
        return 3 * self.hidden * self.moe_ff


@dataclass
class Written:
    """Paths written by ``write_synthetic``."""

    hf_dir: Path | None = None
    gguf: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- weights


def _rng(spec: SyntheticSpec, name: str) -> np.random.Generator:
    """One generator per tensor (or chunk), so any tensor is reproducible on its own."""
    return np.random.default_rng([spec.seed, zlib.crc32(name.encode())])


@functools.lru_cache(maxsize=4)
def _topic_basis(spec: SyntheticSpec) -> np.ndarray:
    """[hidden, rank] orthonormal, avoiding dimension 0 (the massive one)."""
    g = _rng(spec, "topic_basis").standard_normal((spec.hidden, _TOPIC_RANK))
    g[0] = 0.0
    q, _ = np.linalg.qr(g)
    return q.astype(np.float32)


def _centroids(spec: SyntheticSpec) -> np.ndarray:
    return _rng(spec, "centroids").standard_normal((_CLUSTERS, _TOPIC_RANK)).astype(np.float32)


def _massive(spec: SyntheticSpec) -> float:
    """The embedding's constant value in dimension 0: as much energy as the noise part."""
    return math.sqrt(spec.hidden)


def _embed_chunk(spec: SyntheticSpec, c0: int) -> np.ndarray:
    """Embedding rows [c0, c0 + _EMBED_CHUNK): per-token noise, the cluster's topic, dim 0."""
    c1 = min(c0 + _EMBED_CHUNK, spec.vocab)
    rng = _rng(spec, f"embed.{c0}")
    noise = rng.standard_normal((c1 - c0, spec.hidden), dtype=np.float32)
    jitter = rng.standard_normal((c1 - c0, _TOPIC_RANK), dtype=np.float32)
    ids = np.arange(c0, c1)
    scale = math.sqrt(spec.hidden / _TOPIC_RANK)  # topic part's energy ~ the noise part's
    topic = (_centroids(spec)[ids % _CLUSTERS] + 0.5 * jitter) * scale
    chunk = noise + topic @ _topic_basis(spec).T
    chunk[:, 0] = _massive(spec)
    return chunk  # rms ~ 1.7: a third each from noise, topic, dimension 0


def embedding_rows(spec: SyntheticSpec, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the token embedding (float32), generated chunk by chunk."""
    out = np.empty((stop - start, spec.hidden), dtype=np.float32)
    row = start
    while row < stop:
        c0 = row // _EMBED_CHUNK * _EMBED_CHUNK
        chunk = _embed_chunk(spec, c0)
        b = min(stop, c0 + len(chunk))
        out[row - start : b - start] = chunk[row - c0 : b - c0]
        row = b
    return out


def embeddings_of(spec: SyntheticSpec, tokens) -> np.ndarray:
    """Embedding rows of ``tokens`` [n, hidden], each chunk generated once."""
    ids = np.asarray(tokens, dtype=np.int64)
    out = np.empty((len(ids), spec.hidden), dtype=np.float32)
    for c0 in np.unique(ids // _EMBED_CHUNK * _EMBED_CHUNK):
        sel = (ids >= c0) & (ids < c0 + _EMBED_CHUNK)
        out[sel] = _embed_chunk(spec, int(c0))[ids[sel] - c0]
    return out


def router(spec: SyntheticSpec, layer: int) -> np.ndarray:
    """[experts, hidden] router of one layer: Zipf bias on dim 0 + topic read-out + noise.

    Sized for the RMS-normed input x (rms 1): x[0] ~ sqrt(H/3), |U^T x| ~ sqrt(H/3)."""
    rng = _rng(spec, f"router.{layer}")
    h, e = spec.hidden, spec.experts
    x0 = math.sqrt(h / 3)
    basis = _topic_basis(spec)
    w = rng.standard_normal((e, h)).astype(np.float32)
    w -= (w @ basis) @ basis.T  # noise reads only the per-token noise part: fresh per token
    w *= spec.noise / x0
    ranks = rng.permutation(e) + 1
    w[:, 0] = spec.zipf * np.log(1.0 / ranks) / x0
    readout = rng.standard_normal((e, _TOPIC_RANK)).astype(np.float32) / math.sqrt(_TOPIC_RANK)
    w += (spec.topic / x0) * readout @ basis.T
    return w.astype(np.float32)


def _plain(spec: SyntheticSpec, name: str, shape: tuple[int, ...]) -> np.ndarray:
    return _rng(spec, name).standard_normal(shape, dtype=np.float32) * np.float32(_STD)


def _tensor_plan(spec: SyntheticSpec) -> list[tuple[str, tuple[int, ...], str]]:
    """(HF name, shape, GGUF name) in write order; experts expert by expert, per projection."""
    h, hd = spec.hidden, spec.head_dim
    q, kv = spec.heads * hd, spec.kv_heads * hd
    plan = [("model.embed_tokens.weight", (spec.vocab, h), "token_embd.weight")]
    for layer in range(spec.layers):
        p, b = f"model.layers.{layer}.", f"blk.{layer}."
        plan += [
            (p + "input_layernorm.weight", (h,), b + "attn_norm.weight"),
            (p + "self_attn.q_proj.weight", (q, h), b + "attn_q.weight"),
            (p + "self_attn.k_proj.weight", (kv, h), b + "attn_k.weight"),
            (p + "self_attn.v_proj.weight", (kv, h), b + "attn_v.weight"),
            (p + "self_attn.o_proj.weight", (h, q), b + "attn_output.weight"),
            (p + "self_attn.q_norm.weight", (hd,), b + "attn_q_norm.weight"),
            (p + "self_attn.k_norm.weight", (hd,), b + "attn_k_norm.weight"),
            (p + "post_attention_layernorm.weight", (h,), b + "ffn_norm.weight"),
            (p + "mlp.gate.weight", (spec.experts, h), b + "ffn_gate_inp.weight"),
        ]
        for proj, gname, shape in (("gate_proj", "ffn_gate_exps", (spec.moe_ff, h)),
                                   ("up_proj", "ffn_up_exps", (spec.moe_ff, h)),
                                   ("down_proj", "ffn_down_exps", (h, spec.moe_ff))):
            for e in range(spec.experts):
                plan.append((f"{p}mlp.experts.{e}.{proj}.weight", shape, f"{b}{gname}.weight#{e}"))
    plan += [("model.norm.weight", (h,), "output_norm.weight"),
             ("lm_head.weight", (spec.vocab, h), "output.weight")]
    return plan


def tensor(spec: SyntheticSpec, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 values of one HF-named tensor."""
    if name == "model.embed_tokens.weight":
        return embedding_rows(spec, 0, spec.vocab)
    if name.endswith(("layernorm.weight", "norm.weight")):
        return np.ones(shape, dtype=np.float32)
    if name.endswith("mlp.gate.weight"):
        return router(spec, int(name.split(".")[2]))
    return _plain(spec, name, shape)


def hf_config(spec: SyntheticSpec) -> dict:
    """config.json as Qwen3-Coder-30B-A3B-Instruct's, with our layer count and vocabulary."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.dense_ff,
        "moe_intermediate_size": spec.moe_ff,
        "num_experts": spec.experts,
        "num_experts_per_tok": spec.top_k,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "vocab_size": spec.vocab,
        "max_position_embeddings": spec.max_positions,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "bos_token_id": None,
        "eos_token_id": None,
        "qcoder_synthetic": asdict(spec),
    }


# --------------------------------------------------------------------------- writers


class _SafetensorsStream:
    """A safetensors file whose header is known up front and whose tensors are appended one by
    one (the format is 8 bytes of header length, a JSON header, then the raw data)."""

    def __init__(self, path: Path, entries: list[tuple[str, tuple[int, ...]]], dtype: str):
        self.itemsize = {"F16": 2, "F32": 4}[dtype]
        header, offset = {}, 0
        for name, shape in entries:
            n = int(np.prod(shape)) * self.itemsize
            header[name] = {"dtype": dtype, "shape": list(shape),
                            "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.f.write(struct.pack("<Q", len(raw)) + raw)
        self.order = [n for n, _ in entries]
        self.pos = 0

    def write(self, name: str, values: np.ndarray) -> None:
        assert self.order[self.pos] == name, (self.order[self.pos], name)
        self.pos += 1
        self.f.write(values.astype(np.float16 if self.itemsize == 2 else np.float32).tobytes())

    def close(self) -> None:
        self.f.close()


class _GGUFStream:
    """A qwen3moe GGUF written tensor by tensor (merged expert tensors expert by expert), with
    gguf.GGUFWriter for the header and tensor directory."""

    def __init__(self, path: Path, spec: SyntheticSpec, qtype: str):
        import gguf

        self.gguf = gguf
        self.qt = getattr(gguf.GGMLQuantizationType, qtype)
        w = gguf.GGUFWriter(str(path), "qwen3moe")
        w.add_name(f"synthetic qwen3moe {spec.layers} layers seed {spec.seed}")
        w.add_block_count(spec.layers)
        w.add_context_length(spec.max_positions)
        w.add_embedding_length(spec.hidden)
        w.add_feed_forward_length(spec.dense_ff)
        w.add_head_count(spec.heads)
        w.add_head_count_kv(spec.kv_heads)
        w.add_key_length(spec.head_dim)
        w.add_value_length(spec.head_dim)
        w.add_rope_freq_base(spec.rope_theta)
        w.add_layer_norm_rms_eps(spec.rms_norm_eps)
        w.add_expert_count(spec.experts)
        w.add_expert_used_count(spec.top_k)
        w.add_expert_feed_forward_length(spec.moe_ff)
        w.add_vocab_size(spec.vocab)
        w.add_tokenizer_model("no_vocab")
        self.order: list[str] = []
        self.sizes: dict[str, int] = {}
        merged: dict[str, tuple[int, ...]] = {}
        for _, shape, gname in _tensor_plan(spec):
            if "#" in gname:
                base = gname.split("#")[0]
                if base not in merged:
                    merged[base] = (spec.experts, *shape)
                    self.order.append(base)
                continue
            self.order.append(gname)
            merged[gname] = shape
        for gname in self.order:
            shape = merged[gname]
            qt = self._type(shape, gname)
            block, size = gguf.GGML_QUANT_SIZES[qt]
            nbytes = int(np.prod(shape)) // block * size
            self.sizes[gname] = nbytes
            w.add_tensor_info(gname, shape, np.dtype(np.float32), nbytes, raw_dtype=qt)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        self.w, self.f = w, w.fout[0]
        self.current: str | None = None
        self.written = 0

    def _type(self, shape: tuple[int, ...], gname: str):
        # as llama.cpp's own quantizer (llama-quantize) leaves them: norms and the routers
        # (ffn_gate_inp, "do not quantize expert gating tensors") in F32
        if len(shape) < 2 or "ffn_gate_inp" in gname:
            return self.gguf.GGMLQuantizationType.F32
        return self.qt

    def write(self, gname: str, values: np.ndarray) -> None:
        base = gname.split("#")[0]
        if base != self.current:
            self._finish()
            self.current, self.written = base, 0
            self.w.write_padding(self.f, self.f.tell())
        qt = self._type(values.shape if "#" not in gname else (1, *values.shape), base)
        if qt == self.gguf.GGMLQuantizationType.F32:
            data = values.astype(np.float32)
        elif qt == self.gguf.GGMLQuantizationType.F16:
            data = values.astype(np.float16)
        else:
            data = self.gguf.quants.quantize(values.astype(np.float32), qt)
        self.f.write(data.tobytes())
        self.written += data.nbytes

    def _finish(self) -> None:
        if self.current is not None:
            assert self.written == self.sizes[self.current], (self.current, self.written)
            self.w.write_padding(self.f, self.written)

    def close(self) -> None:
        self._finish()
        self.w.close()


def write_synthetic(spec: SyntheticSpec, out: Path, *, hf: bool = True,
                    gguf_types: tuple[str, ...] = ("Q4_0",), hf_dtype: str = "F16",
                    tokenizer: str | None = None, progress: bool = False) -> Written:
    """Write the model under ``out``: ``out/hf`` (one safetensors shard per layer) and
    ``out/model-<TYPE>.gguf`` per type; one pass, each tensor generated once."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = _tensor_plan(spec)
    written = Written()
    ggufs = {t: _GGUFStream(out / f"model-{t}.gguf", spec, t) for t in gguf_types}
    written.gguf = {t: out / f"model-{t}.gguf" for t in gguf_types}
    shards: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    if hf:
        hf_dir = out / "hf"
        hf_dir.mkdir(exist_ok=True)
        written.hf_dir = hf_dir
        n = spec.layers + 2
        for name, shape, _ in plan:
            if name.startswith("model.layers."):
                idx = int(name.split(".")[2]) + 2
            else:
                idx = 1 if name == "model.embed_tokens.weight" else n
            shards.setdefault(f"model-{idx:05d}-of-{n:05d}.safetensors", []).append((name, shape))
        index = {"metadata": {"synthetic": True},
                 "weight_map": {nm: f for f, entries in shards.items() for nm, _ in entries}}
        (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
        (hf_dir / "config.json").write_text(json.dumps(hf_config(spec), indent=2))
        if tokenizer:
            _copy_tokenizer(tokenizer, hf_dir, spec.vocab)
    open_shard: tuple[str, _SafetensorsStream] | None = None
    where = {nm: f for f, entries in shards.items() for nm, _ in entries}
    for i, (name, shape, gname) in enumerate(plan):
        values = tensor(spec, name, shape)
        if hf:
            fname = where[name]
            if open_shard is None or open_shard[0] != fname:
                if open_shard is not None:
                    open_shard[1].close()
                open_shard = (fname, _SafetensorsStream(hf_dir / fname, shards[fname], hf_dtype))
            open_shard[1].write(name, values)
        for g in ggufs.values():
            g.write(gname, values)
        if progress and name.endswith("experts.0.gate_proj.weight"):
            print(f"layer {name.split('.')[2]} ({i}/{len(plan)} tensors)", file=sys.stderr)
    if open_shard is not None:
        open_shard[1].close()
    for g in ggufs.values():
        g.close()
    return written


def _copy_tokenizer(source: str, hf_dir: Path, vocab: int) -> None:
    """The tokenizer of a qcoder model (name or path), e.g. the embedded Qwen2.5-Coder, whose
    vocabulary Qwen3-Coder shares; refused when the cut vocabulary cannot hold its ids."""
    from qcoder_ds.errors import QcoderError
    from qcoder_ds.models.sources import resolve

    tok = resolve(source).tokenizer()
    size = tok.backend.get_vocab_size(with_added_tokens=True)
    if size > vocab:
        raise QcoderError(
            f"the tokenizer of {source} has {size} tokens, more than the synthetic vocabulary "
            f"{vocab}; use --vocab 151936 or no tokenizer"
        )
    tok.save(hf_dir)


# --------------------------------------------------------------------------- routing


def token_stream(spec: SyntheticSpec, n: int, *, stickiness: float = 0.9,
                 seed: int | None = None) -> list[int]:
    """``n`` token ids: a Markov chain over topic clusters (stay with ``stickiness``), a token
    uniform within the cluster. The prompt the benchmarks feed the synthetic model."""
    rng = np.random.default_rng([spec.seed if seed is None else seed, 7])
    per = spec.vocab // _CLUSTERS
    cluster = int(rng.integers(_CLUSTERS))
    out = []
    for _ in range(n):
        if rng.random() > stickiness:
            cluster = int(rng.integers(_CLUSTERS))
        out.append(cluster + _CLUSTERS * int(rng.integers(per)))
    return out


def route(spec: SyntheticSpec, hidden: np.ndarray, layer: int) -> np.ndarray:
    """Top-k expert ids [tokens, top_k] of ``layer`` for residual states ``hidden`` [tokens, H]:
    RMSNorm (weight 1), the router, top-k by logit (softmax keeps the order)."""
    x = hidden / np.sqrt(np.mean(hidden.astype(np.float64) ** 2, axis=-1, keepdims=True)
                         + spec.rms_norm_eps)
    logits = x.astype(np.float32) @ router(spec, layer).T
    top = np.argpartition(-logits, spec.top_k - 1, axis=-1)[:, : spec.top_k]
    order = np.take_along_axis(logits, top, axis=-1).argsort(axis=-1)[:, ::-1]
    return np.take_along_axis(top, order, axis=-1)


def numpy_trace(spec: SyntheticSpec, tokens: list[int]) -> list[list[list[int]]]:
    """Routes of every layer for ``tokens`` with the embeddings as the residual stream (the
    synthetic model's other weights are small, so this is its first layer exactly and its deeper
    layers approximately): a trace for the cache simulator without running the model."""
    hidden = embeddings_of(spec, tokens)
    per_layer = [route(spec, hidden, layer) for layer in range(spec.layers)]
    return [[per_layer[layer][t].tolist() for layer in range(spec.layers)]
            for t in range(len(tokens))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zipf", type=float, default=0.6)
    ap.add_argument("--topic", type=float, default=1.5)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--hf", action="store_true", help="write the HF directory (out/hf)")
    ap.add_argument("--hf-dtype", default="F16", choices=["F16", "F32"])
    ap.add_argument("--gguf", nargs="*", default=[], help="GGUF types, e.g. Q4_0 F16")
    ap.add_argument("--tokenizer", default=None, help="copy this qcoder model's tokenizer")
    a = ap.parse_args(argv)
    spec = SyntheticSpec(layers=a.layers, vocab=a.vocab, seed=a.seed, zipf=a.zipf,
                         topic=a.topic, noise=a.noise)
    w = write_synthetic(spec, a.out, hf=a.hf, gguf_types=tuple(a.gguf), hf_dtype=a.hf_dtype,
                        tokenizer=a.tokenizer, progress=True)
    print(json.dumps({"hf": str(w.hf_dir) if w.hf_dir else None,
                      "gguf": {k: str(v) for k, v in w.gguf.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
