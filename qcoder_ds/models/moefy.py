"""MoEfication: a dense Qwen2/Qwen3 checkpoint presented as a Qwen3-MoE checkpoint.

The real Qwen3-Coder-30B-A3B weights are not obtainable here; the embedded dense models are. A
dense FFN ``down @ (silu(gate @ x) * (up @ x))`` is a sum over its intermediate dimension I, so
cutting that dimension into E contiguous blocks of I/E gives E experts whose outputs add up to
the FFN (Zhang et al. 2022, "MoEfication"): expert e keeps rows [e*I/E, (e+1)*I/E) of gate_proj
and up_proj and the same columns of down_proj. The result is read by the MoE exporter like any
Hugging Face Qwen3-MoE checkpoint (``model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj``,
``mlp.gate`` the router), lazily: a tensor is sliced from the dense one when asked for, holding
at most one layer's three FFN matrices.

Combination weights. Qwen3-MoE multiplies each routed expert's output by its softmax router
probability. Here ``norm_topk_prob`` is false and every expert's down_proj is multiplied by E:

- exact mode (``router="zero"``, all E experts routed): zero logits give softmax weights exactly
  1/E (exp(0) = 1, E a power of two), and (1/E) * (E * down_e) @ a_e equals down_e @ a_e bit for
  bit: scaling by a power of two is exact in binary floating point (no overflow at these
  magnitudes), in the weights and in every product and partial sum. The MoE output is then the
  dense FFN with its intermediate sum grouped by expert -- equal to the dense model up to that
  summation order, which any runtime that runs experts separately imposes.
- routed mode (``router="gate-mass"``, top-k < E): the router is derived from the weights, no
  calibration data. Block e's contribution is large when its neurons' gate pre-activations are
  large (silu passes positives, cuts negatives), weighted by how much each neuron can move the
  output, so its logit is a weighted sum of its gate rows: r_e = sum_j c_j gate_j, c_j =
  |down[:, j]| * |up_j|. The router is scaled so that logits stay within about 2^-8 of each
  other: softmax weights are 1/E to within ~1%, so the output is (to ~1%) the exact partial sum
  of the k chosen blocks -- dropping the blocks the router ranks lowest -- while the ranking,
  which is all top-k uses, is kept. With all E experts it is within ~1% of the dense FFN.
  It is a linear proxy of a non-linear quantity; a router fitted on calibration activations
  (least squares on the blocks' output norms) would rank better and is the next step.

E must be a power of two dividing I; for int4 block-32 export I/E should be a multiple of 32
(0.5B: I = 4864, E <= 8; 1.5B: I = 8960, E <= 8).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace

import numpy as np

from qcoder_ds.errors import ModelError
from qcoder_ds.models.checkpoint import Checkpoint
from qcoder_ds.models.config import ArchConfig

ROUTERS = ("zero", "gate-mass")
_DENSE_ARCHS = ("qwen2", "qwen3")
_LOGIT_SPREAD = 2.0**-8  # the router's largest logit magnitude for an RMS-normed input
_FFN = re.compile(r"model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight")
_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)"
                     r"\.weight")
_ROUTER = re.compile(r"model\.layers\.(\d+)\.mlp\.gate\.weight")


class MoefiedCheckpoint(Checkpoint):
    """A dense checkpoint's FFNs cut into ``experts`` experts (see the module docstring).

    ``top_k`` defaults to all experts with the zero router (the exact mode) and to E/4 with the
    gate-mass router."""

    def __init__(self, dense: Checkpoint, experts: int = 8, top_k: int | None = None,
                 router: str = "gate-mass"):
        c = dense.config
        if c.arch not in _DENSE_ARCHS or c.num_experts:
            raise ModelError(
                f"MoEfication takes a dense {' or '.join(_DENSE_ARCHS)} checkpoint, "
                f"not {c.arch!r}{' with experts' if c.num_experts else ''}"
            )
        if router not in ROUTERS:
            raise ModelError(f"unknown MoEfication router {router!r}; choose {', '.join(ROUTERS)}")
        if experts < 2 or experts & (experts - 1):
            raise ModelError(
                f"MoEfication needs a power-of-two expert count (exact 1/E weights), got {experts}"
            )
        if c.intermediate_size % experts:
            raise ModelError(
                f"intermediate size {c.intermediate_size} does not split into {experts} experts; "
                f"choose a power of two dividing it"
            )
        if top_k is None:
            top_k = experts if router == "zero" else max(1, experts // 4)
        if not 0 < top_k <= experts:
            raise ModelError(f"top_k must be between 1 and {experts}, got {top_k}")
        self.dense = dense
        self.experts, self.top_k, self.router = experts, top_k, router
        self.block = c.intermediate_size // experts
        self.config: ArchConfig = replace(
            c, arch="qwen3_moe", num_experts=experts, num_experts_per_tok=top_k,
            moe_intermediate_size=self.block, norm_topk_prob=False,
        )
        base = dict(getattr(dense, "hf_config", None) or {})
        self.hf_config = {
            **base,
            "model_type": "qwen3_moe",
            "architectures": ["Qwen3MoeForCausalLM"],
            "num_experts": experts,
            "num_experts_per_tok": top_k,
            "moe_intermediate_size": self.block,
            "norm_topk_prob": False,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "qcoder_moefied": {
                "source_arch": c.arch,
                "experts": experts,
                "router": router,
                "down_proj_scale": experts,
                "exact_with_all_experts": router == "zero" and top_k == experts,
            },
        }
        self._names = self._build_names()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _build_names(self) -> list[str]:
        out = []
        seen_layers = set()
        for name in self.dense.names():
            m = _FFN.fullmatch(name)
            if not m:
                out.append(name)
                continue
            layer = int(m.group(1))
            if layer in seen_layers:
                continue
            seen_layers.add(layer)
            p = f"model.layers.{layer}.mlp."
            out.append(p + "gate.weight")
            out += [f"{p}experts.{e}.{proj}.weight" for e in range(self.experts)
                    for proj in ("gate_proj", "up_proj", "down_proj")]
        return out

    def names(self) -> list[str]:
        return list(self._names)

    def _dense(self, name: str) -> np.ndarray:
        """A dense FFN matrix, kept while its layer is being read (3 matrices at most)."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        w = np.asarray(self.dense.tensor(name), dtype=np.float32)
        self._cache[name] = w
        while len(self._cache) > 3:
            self._cache.popitem(last=False)
        return w

    def tensor(self, name: str) -> np.ndarray:
        m = _EXPERT.fullmatch(name)
        if m:
            layer, e, proj = int(m.group(1)), int(m.group(2)), m.group(3)
            if e >= self.experts:
                raise ModelError(f"{name}: expert {e} of {self.experts}")
            w = self._dense(f"model.layers.{layer}.mlp.{proj}.weight")
            cols = slice(e * self.block, (e + 1) * self.block)
            if proj == "down_proj":
                return np.ascontiguousarray(w[:, cols]) * np.float32(self.experts)
            return np.ascontiguousarray(w[cols])
        m = _ROUTER.fullmatch(name)
        if m:
            return self._router(int(m.group(1)))
        if _FFN.fullmatch(name):
            raise ModelError(f"{name} is split into experts in a MoEfied checkpoint")
        return self.dense.tensor(name)

    def _router(self, layer: int) -> np.ndarray:
        h = self.config.hidden_size
        if self.router == "zero":
            return np.zeros((self.experts, h), dtype=np.float32)
        p = f"model.layers.{layer}.mlp."
        gate = self._dense(p + "gate_proj.weight").astype(np.float64)
        up = self._dense(p + "up_proj.weight")
        down = self._dense(p + "down_proj.weight")
        c = np.linalg.norm(down, axis=0).astype(np.float64) * np.linalg.norm(up, axis=1)
        r = (c[:, None] * gate).reshape(self.experts, self.block, h).sum(axis=1)
        # an RMS-normed input has norm sqrt(h): keep every logit within _LOGIT_SPREAD
        scale = _LOGIT_SPREAD / (np.linalg.norm(r, axis=1).max() * np.sqrt(h) + 1e-30)
        return (r * scale).astype(np.float32)


def moe_ffn(x: np.ndarray, router: np.ndarray, experts: list[tuple[np.ndarray, ...]],
            top_k: int, norm_topk_prob: bool) -> np.ndarray:
    """Qwen3-MoE's sparse block in numpy, as transformers computes it: softmax over the router
    logits in float32, top-k, optional renormalization, each expert's SwiGLU weighted and summed
    in expert order. ``experts[e]`` = (gate, up, down) in HF layout. For tests and benchmarks."""
    logits = x @ router.T
    z = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(z, dtype=np.float32)
    probs /= probs.sum(axis=-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(probs, top, axis=-1)
    if norm_topk_prob:
        w = w / w.sum(axis=-1, keepdims=True)
    out = np.zeros_like(x)
    for e, (gate, up, down) in enumerate(experts):
        rows, slot = np.nonzero(top == e)
        if rows.size == 0:
            continue
        xe = x[rows]
        g = xe @ gate.T
        a = (g / (1 + np.exp(-g))) * (xe @ up.T)
        out[rows] += (a @ down.T) * w[rows, slot][:, None]
    return out
