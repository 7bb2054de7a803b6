"""The decode kernel (one-token steps of a resident int4 MoE in C) against a numpy reference of
its arithmetic and against the one-graph resident mode it stands in for."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_moe import build_tiny_moe  # noqa: E402

from qcoder_ds.models.checkpoint import HFCheckpoint  # noqa: E402
from qcoder_ds.runtime import decode_kernel  # noqa: E402
from qcoder_ds.runtime.quantize import BlockQuantized, dequantize_blockwise  # noqa: E402

pytestmark = pytest.mark.skipif(not decode_kernel.available(),
                                reason="the decode kernel needs AVX-512 VNNI")

IDS = [5, 17, 301, 42, 7, 88, 150, 3, 499, 260, 61, 12, 9, 400, 33, 128, 77, 200, 1, 64]
#: shapes the kernel takes (hidden, q and expert FFN sizes multiples of 128, head_dim 32) and
#: export options: the MoE default's blocks of 64 with zero points, blocks of 32, symmetric
SHAPES = {
    "e8-top2-norm": (dict(experts=8, top_k=2, norm_topk_prob=True), {}),
    "e16-top4-raw": (dict(experts=16, top_k=4, norm_topk_prob=False), {}),
    "e8-top2-norm-b32": (dict(experts=8, top_k=2, norm_topk_prob=True), {"block_size": 32}),
    "e16-top4-raw-b32-sym": (dict(experts=16, top_k=4, norm_topk_prob=False),
                             {"block_size": 32, "symmetric": True}),
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from qcoder_ds.runtime.ort_backend import export_onnx

    made = {}
    for name, (shape, options) in SHAPES.items():
        root = tmp_path_factory.mktemp(name)
        hf = build_tiny_moe(root / "hf", layers=2, hidden_size=128, num_attention_heads=4,
                            num_key_value_heads=2, moe_intermediate_size=128, **shape)
        export_onnx(HFCheckpoint(hf), root / "int4", weights="int4", progress=False, **options)
        made[name] = root / "int4"
    return made


def _load(out: Path, **options):
    from qcoder_ds.runtime.ort_backend import load_onnx

    options.setdefault("expert_ram", "all")
    return load_onnx(out, threads=2, max_context=64, **options)


def _matrix(w, prefix: str, n: int, k: int, block: int) -> np.ndarray:
    """A MatMulNBits matrix [n, k] as floats."""
    q = np.asarray(w.get(prefix + ".qweight")).reshape(n, k // block, block // 2)
    s = np.asarray(w.get(prefix + ".scales")).reshape(n, k // block)
    z = w.get(prefix + ".qzeros")
    z = None if z is None else np.asarray(z).reshape(n, -1)
    return dequantize_blockwise(BlockQuantized(q, s, z, n, k, 4, block))


def _q8(x: np.ndarray, block: int) -> np.ndarray:
    """x as MatMulNBits' int8 path sees it: per block, int8 levels of max|x| / 127."""
    xb = x.reshape(-1, block).astype(np.float32)
    s = (np.abs(xb).max(1) / np.float32(127)).astype(np.float32)
    inv = np.where(s > 0, np.float32(1) / np.where(s > 0, s, 1), 0).astype(np.float32)
    q = np.clip(np.rint(xb * inv[:, None]), -127, 127)
    return (q * s[:, None]).reshape(-1).astype(np.float64)


def _rms(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x) + eps) * w


def _rope(t, cos, sin):
    """GroupQueryAttention's rotary, not interleaved: each head's halves rotate."""
    half = t.shape[1] // 2
    a, b = t[:, :half], t[:, half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], 1)


class Reference:
    """The kernel's arithmetic in numpy, one token at a time from position 0."""

    def __init__(self, out: Path, session):
        from qcoder_ds.runtime.decode_kernel import Embedding, _Weights
        from qcoder_ds.runtime.expert_store import ExpertStore
        from qcoder_ds.runtime.moe_onnx import rope_tables

        cfg = self.cfg = session.config
        models = [onnx.load(str(out / f"layer_{i}.onnx"), load_external_data=False)
                  for i in range(cfg.num_layers)]
        models.append(onnx.load(str(out / "head.onnx"), load_external_data=False))
        self.w = _Weights(out, models)
        self.embed = Embedding(self.w, models[0])
        self.store = ExpertStore(out)
        self.block = int(self.store.quantization["block_size"])
        self.cos, self.sin = rope_tables(cfg, session.max_context)
        self.k = [[] for _ in range(cfg.num_layers)]
        self.v = [[] for _ in range(cfg.num_layers)]
        self.routing: list[list[int]] = []

    def expert(self, layer: int, e: int, x: np.ndarray) -> np.ndarray:
        c, b = self.cfg, self.block
        a = self.store.read(layer, e)
        inter, h = c.moe_intermediate_size, c.hidden_size

        def deq(name, n, k):
            z = a.get(name + ".zp")
            return dequantize_blockwise(BlockQuantized(
                a[name + ".packed"].reshape(n, k // b, b // 2),
                a[name + ".scales"].reshape(n, k // b),
                None if z is None else z.reshape(n, -1), n, k, 4, b))
        gu = deq("gate_up", 2 * inter, h) @ _q8(x, b)
        g, u = gu[:inter], gu[inter:]
        return deq("down", h, inter) @ _q8(g / (1 + np.exp(-g)) * u, b)

    def step(self, token: int) -> np.ndarray:
        c, w, b = self.cfg, self.w, self.block
        hd, nh, nkv = c.head_dim, c.num_heads, c.num_kv_heads
        pos = len(self.k[0])
        x = self.embed(token).astype(np.float64)
        self.routing.append([])
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            xn = _rms(x, w.get(p + "ln1"), c.rms_norm_eps)
            qkv = _matrix(w, p + "self_attn.qkv_proj", (nh + 2 * nkv) * hd, c.hidden_size,
                          b) @ _q8(xn, b)
            q = qkv[:nh * hd].reshape(nh, hd)
            k = qkv[nh * hd:(nh + nkv) * hd].reshape(nkv, hd)
            v = qkv[(nh + nkv) * hd:].reshape(nkv, hd)
            cs, sn = self.cos[pos], self.sin[pos]
            q = _rope(np.stack([_rms(r, w.get(p + "self_attn.q_norm"), c.rms_norm_eps)
                                for r in q]), cs, sn)
            k = _rope(np.stack([_rms(r, w.get(p + "self_attn.k_norm"), c.rms_norm_eps)
                                for r in k]), cs, sn)
            self.k[i].append(k)
            self.v[i].append(v)
            keys, values = np.stack(self.k[i], 1), np.stack(self.v[i], 1)  # [kv, t, hd]
            att = []
            for h in range(nh):
                g = h // (nh // nkv)
                sc = keys[g] @ q[h] / np.sqrt(hd)
                pr = np.exp(sc - sc.max())
                att.append(pr @ values[g] / pr.sum())
            o = _matrix(w, p + "self_attn.o_proj", c.hidden_size, nh * hd, b) @ _q8(
                np.concatenate(att), b)
            x = x + o
            xn = _rms(x, w.get(p + "ln2"), c.rms_norm_eps)
            logits = xn @ w.get(p + "mlp.gate.weight_t")
            top = sorted(range(c.num_experts), key=lambda e: (-logits[e], e))
            top = top[:c.num_experts_per_tok]
            ex = np.exp(logits - logits.max())
            weights = ex[top] / (ex[top].sum() if c.norm_topk_prob else ex.sum())
            self.routing[-1].append(top)
            x = x + sum(wt * self.expert(i, e, xn) for wt, e in zip(weights, top, strict=True))
        xn = _rms(x, w.get("model.norm.weight"), c.rms_norm_eps)
        return _matrix(w, "lm_head", c.vocab_size, c.hidden_size, b) @ _q8(xn, b)


@pytest.mark.parametrize("name", list(SHAPES))
def test_kernel_computes_the_int8_arithmetic(exports, name):
    """Every step from position 0 in the kernel equals the numpy reference of the same
    arithmetic (to float rounding), with the same experts, in the same order."""
    s = _load(exports[name], record_routing=True)
    assert s.decode_kernel
    ref = Reference(exports[name], s)
    for t in IDS:
        got = s.forward(np.array([t]))
        want = ref.step(t)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), t
        assert [r[0].tolist() for r in s.last_routing] == ref.routing[-1]
    # a forgotten cache starts again at position 0
    s.reset()
    first = Reference(exports[name], s).step(IDS[0])
    assert np.abs(s.forward(np.array([IDS[0]])) - first).max() <= 1e-4 * np.abs(first).max()


@pytest.mark.parametrize("name", list(SHAPES))
def test_kernel_decodes_after_the_graphs_prefill_as_the_graph_does(exports, name, tmp_path):
    """The graph prefills and the kernel decodes on the same KV cache: the graph's own
    decode's logits (to float rounding: both quantize activations to int8 the same way), the
    same experts, the same greedy tokens; a trace from the kernel's routing."""
    from qcoder_ds.runtime.moe_trace import read_trace

    kern = _load(exports[name], record_routing=True, trace=tmp_path / "k.trace")
    graph = _load(exports[name], record_routing=True, decode_kernel=False,
                  trace=tmp_path / "g.trace")
    assert kern.decode_kernel and not graph.decode_kernel
    for s in (kern, graph):
        s.forward(np.array(IDS[:8]))
    for t in IDS[8:]:
        a, b = kern.forward(np.array([t])), graph.forward(np.array([t]))
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
        assert [r.tolist() for r in kern.last_routing] == [r.tolist() for r in graph.last_routing]

    def greedy(s, n=24):
        s.reset()
        logits, out = s.forward(np.array(IDS[:6])), []
        for _ in range(n):
            out.append(int(logits.argmax()))
            logits = s.forward(np.array([out[-1]]))
        return out
    assert greedy(kern) == greedy(graph)
    kern.close()
    graph.close()
    assert read_trace(tmp_path / "k.trace").tokens == read_trace(tmp_path / "g.trace").tokens


def test_kernel_refuses_what_it_cannot_run(exports, tmp_path):
    from qcoder_ds.runtime import _decode_kernel

    s = _load(exports["e8-top2-norm"])
    # speculative scoring of one position goes through the graph, the same logits
    s.forward(np.array(IDS[:4]))
    one = s.forward(np.array([IDS[4]]), all_logits=True)[0]
    s.cut(4)
    assert np.abs(s.forward(np.array([IDS[4]])) - one).max() <= 1e-4 * np.abs(one).max()
    plan = s._plan
    with pytest.raises(ValueError, match="wrong size"):
        plan._plan.step(np.zeros(3, np.float32), 0, s._kv, s._logits_view, plan.routing)
    with pytest.raises(ValueError, match="outside the context"):
        plan._plan.step(np.zeros(128, np.float32), 64, s._kv, s._logits_view, plan.routing)
    with pytest.raises(ValueError, match="arrays, want"):
        _decode_kernel.Plan((2, 128, 4, 2, 32, 8, 2, 128, 512, 64, 64, 1, 1), [], 1e-6, 2)
    with pytest.raises(ValueError, match="does not take"):
        _decode_kernel.Plan((2, 96, 4, 2, 24, 8, 2, 128, 512, 64, 64, 1, 1), [], 1e-6, 2)
    # an export in blocks of 32 with fp32 activations (accuracy level 0): the graph alone
    from qcoder_ds.errors import QcoderError
    from qcoder_ds.runtime.ort_backend import export_onnx

    hf = build_tiny_moe(tmp_path / "hf", layers=2, hidden_size=128, num_attention_heads=4,
                        num_key_value_heads=2, moe_intermediate_size=128)
    export_onnx(HFCheckpoint(hf), tmp_path / "acc0", weights="int4", progress=False,
                accuracy_level=0)
    assert not _load(tmp_path / "acc0").decode_kernel
    with pytest.raises(QcoderError, match="decode kernel needs"):
        _load(tmp_path / "acc0", decode_kernel=True)


@pytest.mark.parametrize("name", list(SHAPES))
def test_under_a_budget_the_kernel_takes_its_experts_from_the_cache(exports, name):
    """At 25% of the expert bytes the kernel runs layer by layer, each layer's experts from
    the cache (misses read then): the numbers are those of the fully resident kernel, bit for
    bit, and after the graphs' prefill those of the graphs' own decode."""
    full = _load(exports[name], record_routing=True)
    part = _load(exports[name], record_routing=True, expert_ram="25%")
    assert full.cache_stats()["fused"]
    graph = _load(exports[name], expert_ram="25%", decode_kernel=False)
    assert full.decode_kernel and part.decode_kernel and not graph.decode_kernel
    assert not part.cache_stats()["fused"] and part.cache_stats()["decode_kernel"]
    for t in IDS:
        a, b = full.forward(np.array([t])), part.forward(np.array([t]))
        assert np.array_equal(a, b)
        assert [r.tolist() for r in full.last_routing] == [r.tolist() for r in part.last_routing]
    assert part.cache_stats()["misses"] > full.config.num_layers * full.config.num_experts / 4
    for s in (part, graph):
        s.reset()
        s.forward(np.array(IDS[:8]))
    for t in IDS[8:]:
        a, b = part.forward(np.array([t])), graph.forward(np.array([t]))
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    part.close()
    graph.close()


def test_the_one_graph_mode_only_where_the_budget_holds_its_copies(exports):
    """Fully resident, the one graph holds the experts twice (its stacks and ONNX Runtime's
    prepacked copy): a budget that covers the experts once runs the per-layer graphs instead,
    with every expert in the cache; ``all`` and a budget of the graph's size run the graph."""
    from qcoder_ds.runtime.expert_store import ExpertStore
    from qcoder_ds.runtime.moe_ort import FUSED_FACTOR

    out = exports["e8-top2-norm"]
    store = ExpertStore(out)
    blobs = store.blob_bytes * 2 * 8
    graph = math.ceil(FUSED_FACTOR * blobs)
    once, twice = _load(out, expert_ram="100%"), _load(out, expert_ram=str(graph))
    assert once.cache.fully_resident and not once.cache_stats()["fused"]
    assert twice.cache_stats()["fused"] and _load(out, expert_ram="all").cache_stats()["fused"]
    assert not _load(out, expert_ram=str(graph - 1)).cache_stats()["fused"]
    assert once.decode_kernel and twice.decode_kernel
    for t in IDS[:6]:
        assert np.array_equal(once.forward(np.array([t])), twice.forward(np.array([t])))


@pytest.mark.parametrize("expert_ram", ["all", "25%"])
def test_a_damaged_dense_data_file_is_the_exports_error(exports, tmp_path, expert_ram):
    """The kernel reads the dense weights from the export's data file too: one cut short is
    not taken by it, and loading says what is wrong with the export (ONNX Runtime's error),
    not a numpy shape error; the file is left as it was."""
    import shutil

    from qcoder_ds.errors import ModelError

    out = tmp_path / "cut"
    shutil.copytree(exports["e8-top2-norm"], out)
    data = out / "dense.onnx.data"
    cut = data.stat().st_size // 2
    with open(data, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(ModelError, match="cannot load"):
        _load(out, expert_ram=expert_ram)
    assert data.stat().st_size == cut
