"""How to execute experts from the expert cache: build cost and per-call time, at
Qwen3-Coder-30B-A3B's expert shape (hidden 2048, expert FFN 768, int4 block 64 as its export
takes, or --block 32).

Measured, interleaved in one run:

- The expert kernel the runtime uses (``qcoder_ds.runtime.expert_kernel``): an expert run
  from its blob; a build is the store's read. Build ms, µs per one-row call and per 32-row
  call.
- The peer it replaced: ONNX Runtime, one InferenceSession per expert (weights as constant
  initializers, prepacked): build ms per expert from its blob, and µs per one-row call; the
  same on a tiny expert (64 x 32) gives the fixed per-call overhead, and without prepacking
  what feeding ONNX Runtime the weights as they lie costs.
- ONNX Runtime's fused ``QMoE`` contrib op holding every expert of a layer (what the fully
  resident graph runs): µs per one-token layer (top-8) against 8 kernel calls, and the same
  for a 32-row prefill chunk.
- OpenVINO, one compiled model per expert: compile ms per expert, µs per one-row call.

    python benchmarks/moe_experts.py [--experts 32] [--rounds 50]
      -> benchmarks/results/moe-experts.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qcoder_ds.models.config import ArchConfig  # noqa: E402
from qcoder_ds.runtime.expert_kernel import BlobExpertBuilder, kernel_simd  # noqa: E402
from qcoder_ds.runtime.expert_store import ExpertStore, ExpertStoreWriter  # noqa: E402
from qcoder_ds.runtime.moe_onnx import expert_arrays, expert_model  # noqa: E402

OUT = Path(__file__).parent / "results" / "moe-experts.json"


def config(hidden: int, inter: int, experts: int, k: int) -> ArchConfig:
    return ArchConfig("qwen3_moe", 1000, hidden, 0, 1, 32, 4, 128, 1e-6, 1e6, 4096, False,
                      False, True, experts, k, inter, True)


def weights(rng, hidden: int, inter: int):
    return (rng.normal(0, .02, (inter, hidden)).astype(np.float32),
            rng.normal(0, .02, (inter, hidden)).astype(np.float32),
            rng.normal(0, .02, (hidden, inter)).astype(np.float32))


def ort_store(d: Path, mats, block: int = 64, accuracy_level: int = 4) -> ExpertStore:
    quant = {"backend": "onnx", "weights": "int4", "block_size": block, "symmetric": False,
             "accuracy_level": accuracy_level}
    w = ExpertStoreWriter(d, 1, len(mats), "b" * 64, quant)
    for e, (g, u, dn) in enumerate(mats):
        w.add(0, e, expert_arrays(g, u, dn, "int4", block))
    w.close()
    return ExpertStore(d, "b" * 64)


def session_options(threads: int = 1):
    """What the runtime gave each expert session: one thread, no arena, no spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class SessionExpertBuilder:
    """The peer: (layer, expert) -> an ONNX Runtime session with the expert's weights as
    constant initializers (prepacked when it is built), as the runtime built them before the
    expert kernel."""

    def __init__(self, store: ExpertStore, cfg: ArchConfig):
        self.store, self.cfg = store, cfg

    def __call__(self, layer: int, expert: int):
        import onnxruntime as ort

        arrays = self.store.read(layer, expert)
        s = ort.InferenceSession(expert_model(arrays, self.cfg.hidden_size,
                                              self.cfg.moe_intermediate_size,
                                              self.store.quantization), session_options(),
                                 providers=["CPUExecutionProvider"])

        class Expert:
            def run(self, x):
                return s.run(["y"], {"x": x})[0]
        return Expert(), self.store.blob_bytes


def per_call(fn, rounds: int) -> float:
    """Median seconds per call (the machine is shared: medians, not means)."""
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, called in turn each round, so that a load
    change on the shared machine hits all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def qmoe_session(store: ExpertStore, cfg: ArchConfig):
    """Every expert of the layer in one QMoE node, the op the fully resident graph runs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from qcoder_ds.runtime.moe_onnx import qmoe_weights

    e_n, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
    w = qmoe_weights([store.read(0, e) for e in range(e_n)], h, i)
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    node = helper.make_node(
        "QMoE", ["x", "r", "fc1_w", "fc1_s", "", "fc2_w", "fc2_s", "", "", "", "", "fc1_z",
                 "fc2_z"], ["y"],
        domain="com.microsoft", k=cfg.num_experts_per_tok, activation_type="swiglu",
        swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0, normalize_routing_weights=1,
        expert_weight_bits=4, block_size=int(store.quantization["block_size"]),
        accuracy_level=4)
    f32 = TensorProto.FLOAT
    g = helper.make_graph([node], "qmoe", [helper.make_tensor_value_info("x", f32, ["n", h]),
                                           helper.make_tensor_value_info("r", f32, ["n", e_n])],
                          [helper.make_tensor_value_info("y", f32, ["n", h])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 9
    t = time.perf_counter()
    s = ort.InferenceSession(m.SerializeToString(), session_options(),
                             providers=["CPUExecutionProvider"])
    return s, time.perf_counter() - t


def _live_rss() -> int:
    """RSS after returning freed heap to the system (glibc keeps freed blocks otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def resident_memory(d: Path, mats, hidden: int, inter: int, block: int, openvino: bool
                    ) -> dict:
    """Live memory per resident expert / its blob bytes, per backend and weight format
    (what ``expert_cache.RESIDENT_FACTOR`` holds), and the ONNX Runtime session peer's."""
    out = {}
    cfg = config(hidden, inter, len(mats), 8)
    x = np.ones((1, hidden), np.float32)
    kinds = [("onnx", "int4"), ("onnx", "int8"), ("onnx", "fp32"), ("ort-session", "int4")]
    if openvino:
        kinds += [("openvino", "int4"), ("openvino", "int8"), ("openvino", "fp32")]
    for backend, mode in kinds:
        sub = d / f"{backend}-{mode}"
        if backend in ("onnx", "ort-session"):
            quant = {"backend": "onnx", "weights": mode, "block_size": block,
                     "symmetric": False, "accuracy_level": 4}
            w = ExpertStoreWriter(sub, 1, len(mats), "e" * 64, quant)
            for e, m in enumerate(mats):
                w.add(0, e, expert_arrays(*m, mode, block))
            w.close()
            store = ExpertStore(sub)
            build = (BlobExpertBuilder if backend == "onnx" else SessionExpertBuilder)(store,
                                                                                        cfg)
        else:
            from qcoder_ds.runtime.moe_openvino import OvExpertBuilder
            from qcoder_ds.runtime.moe_openvino import expert_arrays as ov_arrays

            quant = {"backend": "openvino", "weights": mode, "group_size": 32,
                     "symmetric": True}
            w = ExpertStoreWriter(sub, 1, len(mats), "e" * 64, quant)
            for e, m in enumerate(mats):
                w.add(0, e, ov_arrays(*m, mode, 32, True))
            w.close()
            store = ExpertStore(sub)
            build = OvExpertBuilder(store, cfg, {"weights": mode})
        build(0, 0)[0].run(x)  # first-build costs (kernels, plugin) outside the figure
        before = _live_rss()
        held = [build(0, e)[0] for e in range(len(mats))]
        for ex in held:
            ex.run(x)
        after = _live_rss()
        out[f"{backend}-{mode}"] = {
            "blob_bytes": store.blob_bytes,
            "live_bytes_per_expert": (after - before) / len(mats),
            "factor": round((after - before) / len(mats) / store.blob_bytes, 2)}
        del held
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", type=int, default=32, help="experts in the QMoE layer")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--block", type=int, default=64, choices=[32, 64])
    ap.add_argument("--no-openvino", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    hidden, inter, k = 2048, 768, 8
    res: dict = {"command": "python benchmarks/moe_experts.py " + " ".join(sys.argv[1:]),
                 "machine": {"cpus": len(os.sched_getaffinity(0)),
                             "platform": platform.platform(),
                             "load_avg_start": os.getloadavg(), "kernel_simd": kernel_simd()},
                 "shape": {"hidden": hidden, "expert_ffn": inter, "top_k": k,
                           "weights": f"int4 block {args.block}, zero points, "
                                      f"accuracy_level 4"}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mats = [weights(rng, hidden, inter) for _ in range(args.experts)]
        store = ort_store(tmp / "ort", mats, args.block)
        cfg = config(hidden, inter, args.experts, k)
        x1 = rng.standard_normal((1, hidden)).astype(np.float32)
        x32 = rng.standard_normal((32, hidden)).astype(np.float32)
        top = list(range(k))
        built = {}
        for name, builder in (("kernel", BlobExpertBuilder), ("session", SessionExpertBuilder)):
            build = builder(store, cfg)
            times, experts = [], []
            for e in range(args.experts):
                t = time.perf_counter()
                experts.append(build(0, e)[0])
                times.append(time.perf_counter() - t)
            built[name] = (experts, times)
        # calls interleaved: a load change on the shared machine hits both alike
        one = interleaved({n: (lambda ex=ex: [ex[e].run(x1) for e in top])
                           for n, (ex, _) in built.items()}, args.rounds)
        many = interleaved({n: (lambda ex=ex: ex[0].run(x32)) for n, (ex, _) in built.items()},
                           max(3, args.rounds // 5))
        for name, key in (("kernel", "expert_kernel"), ("session", "ort_per_expert_session")):
            times = built[name][1]
            res[key] = {"build_ms_median": statistics.median(times) * 1e3,
                        "build_ms_min": min(times) * 1e3, "blob_bytes": store.blob_bytes,
                        "call_us_one_row": one[name] / k * 1e6,
                        "layer_us_one_token_top8": one[name] * 1e6,
                        "call_us_32_rows": many[name] * 1e6}
        res["kernel_over_session"] = {
            "build": res["expert_kernel"]["build_ms_median"]
            / res["ort_per_expert_session"]["build_ms_median"],
            "call_one_row": one["kernel"] / one["session"],
            "call_32_rows": many["kernel"] / many["session"]}
        # the same expert without prepacking: what feeding weights as they lie costs
        import onnxruntime as ort

        so = session_options()
        so.add_session_config_entry("session.disable_prepacking", "1")
        raw = ort.InferenceSession(expert_model(store.read(0, 0), hidden, inter,
                                                store.quantization), so,
                                   providers=["CPUExecutionProvider"])
        res["ort_per_expert_session"]["call_us_one_row_without_prepacking"] = \
            per_call(lambda: raw.run(None, {"x": x1}), 5) * 1e6
        tiny_store = ort_store(tmp / "tiny", [weights(rng, 64, 32)], 32)
        xt = rng.standard_normal((1, 64)).astype(np.float32)
        for name, builder in (("expert_kernel", BlobExpertBuilder),
                              ("ort_per_expert_session", SessionExpertBuilder)):
            tiny = builder(tiny_store, config(64, 32, 1, 1))(0, 0)[0]
            res[name]["overhead_us_tiny_expert"] = \
                per_call(lambda tiny=tiny: tiny.run(xt), args.rounds * 20) * 1e6
        # fused QMoE over all experts of the layer (the fully resident graph's op) vs the 8
        # chosen experts run by the kernel
        experts = built["kernel"][0]
        q, q_build = qmoe_session(store, cfg)
        logits1 = np.full((1, args.experts), -10, np.float32)
        logits1[0, top] = np.linspace(1, 2, k)
        r32 = rng.standard_normal((32, args.experts)).astype(np.float32)
        tops32 = np.argsort(-r32, axis=-1)[:, :k]

        def per_expert_prefill():
            for e in np.unique(tops32):
                rows = np.nonzero((tops32 == e).any(-1))[0]
                experts[e].run(np.ascontiguousarray(x32[rows]))

        one = interleaved({"qmoe": lambda: q.run(None, {"x": x1, "r": logits1}),
                           "per_expert_kernel": lambda: [experts[e].run(x1) for e in top]},
                          args.rounds)
        many = interleaved({"qmoe": lambda: q.run(None, {"x": x32, "r": r32}),
                            "per_expert_kernel": per_expert_prefill},
                           max(3, args.rounds // 5))
        res["fused_qmoe_vs_per_expert"] = {
            "experts_in_layer": args.experts, "qmoe_build_s": q_build,
            "decode_1_token_us": {n: v * 1e6 for n, v in one.items()},
            "decode_ratio_qmoe_over_per_expert": one["qmoe"] / one["per_expert_kernel"],
            "prefill_32_rows_us": {n: v * 1e6 for n, v in many.items()},
            "prefill_ratio_qmoe_over_per_expert": many["qmoe"] / many["per_expert_kernel"],
        }
        if not args.no_openvino:
            try:
                from qcoder_ds.runtime.moe_openvino import OvExpertBuilder
                from qcoder_ds.runtime.moe_openvino import expert_arrays as ov_arrays
            except ImportError:
                ov_arrays = None
            if ov_arrays is not None:
                quant = {"backend": "openvino", "weights": "int4", "group_size": 32,
                         "symmetric": True}
                w = ExpertStoreWriter(tmp / "ov", 1, k, "c" * 64, quant)
                for e in range(k):
                    w.add(0, e, ov_arrays(*mats[e], "int4", 32, True))
                w.close()
                ov_store = ExpertStore(tmp / "ov", "c" * 64)
                ob = OvExpertBuilder(ov_store, config(hidden, inter, k, k), {"weights": "int4"})
                ot, ov_experts = [], []
                for e in range(k):
                    t = time.perf_counter()
                    ov_experts.append(ob(0, e)[0])
                    ot.append(time.perf_counter() - t)
                oc = per_call(lambda: [ex.run(x1) for ex in ov_experts], args.rounds) / k
                res["openvino_per_expert_model"] = {
                    "compile_ms_median": statistics.median(ot) * 1e3,
                    "call_us_one_row": oc * 1e6, "blob_bytes": ov_store.blob_bytes}
        res["resident"] = resident_memory(tmp / "rss", mats[:12], hidden, inter, args.block,
                                          not args.no_openvino)
    res["machine"]["load_avg_end"] = os.getloadavg()
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
