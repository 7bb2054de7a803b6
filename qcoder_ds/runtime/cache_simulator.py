"""Replay a routing trace through an expert cache of a given size, under every eviction policy
and Belady's optimum, offline: hit rates and bytes read, without running the model.

The model's access order: token by token, layer by layer; one layer's routed experts (top-k) are
one batch, all needed before the layer can finish, so while a batch loads its experts are
protected (a policy never evicts an expert of the layer it is computing; the real cache cannot
either). A hit is an access to a resident expert; a miss loads it (one expert's bytes from disk),
evicting the policy's victim when the cache is full.

Belady's MIN (evict the resident expert whose next use is farthest in the future) needs the
future, so it is computed here from the trace, not offered as a runtime policy: it is the
physical limit of any cache of that size on that trace, and the gap between it and a policy is
what a better policy could still win. Batches do not change the argument: the protected experts
are needed now, and among the rest the farthest next use is still the right victim.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from qcoder_ds.errors import QcoderError
from qcoder_ds.runtime.expert_policy import POLICIES, Key, make_policy
from qcoder_ds.runtime.moe_trace import Trace

BELADY = "belady"


@dataclass
class SimResult:
    """One policy at one capacity: counted after the first ``warmup`` tokens."""

    policy: str
    capacity: int  # experts
    hits: int
    misses: int
    bytes_read: int  # misses x expert bytes (0 when expert bytes were not given)

    @property
    def accesses(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else math.nan

    def to_dict(self) -> dict:
        return {**asdict(self), "accesses": self.accesses, "hit_rate": self.hit_rate}


def _batches(trace: Trace) -> list[tuple[int, list[Key]]]:
    """(token index, the distinct keys of one layer) in access order."""
    out = []
    for t, tok in enumerate(trace.tokens):
        for layer, ids in enumerate(tok):
            keys = list(dict.fromkeys((layer, int(e)) for e in ids))
            if keys:
                out.append((t, keys))
    return out


def capacity_for(trace: Trace, fraction: float | None = None, *, budget_bytes: int | None = None,
                 expert_bytes: int | None = None) -> int:
    """Capacity in experts: a fraction of all ``layers x experts``, or a byte budget over one
    expert's bytes (experts are equal-sized within one model)."""
    if (fraction is None) == (budget_bytes is None):
        raise QcoderError("give the cache capacity either as a fraction or as a byte budget")
    if budget_bytes is not None:
        if not expert_bytes or expert_bytes <= 0:
            raise QcoderError("a byte budget needs the size of one expert in bytes")
        return int(budget_bytes // expert_bytes)
    if not 0 < fraction <= 1:
        raise QcoderError(f"capacity fraction must be in (0, 1], got {fraction}")
    return max(1, round(fraction * trace.layers * trace.experts))


def _check_capacity(trace: Trace, capacity: int) -> None:
    if capacity < trace.top_k:
        raise QcoderError(
            f"a cache of {capacity} experts cannot hold one layer's {trace.top_k} routed experts; "
            f"give at least {trace.top_k}"
        )


def simulate(trace: Trace, policy: str, capacity: int, *, warmup: int = 0,
             expert_bytes: int = 0) -> SimResult:
    """Replay ``trace`` through a cache of ``capacity`` experts under ``policy`` (a name in
    POLICIES, or "belady"); accesses of the first ``warmup`` tokens are replayed, not counted."""
    _check_capacity(trace, capacity)
    if policy == BELADY:
        return _belady(trace, capacity, warmup, expert_bytes)
    p = make_policy(policy)
    resident: set[Key] = set()
    hits = misses = 0
    for t, keys in _batches(trace):
        protected = set(keys)
        for key in keys:
            if key in resident:
                hits += t >= warmup
                p.use(key)
                continue
            misses += t >= warmup
            if len(resident) >= capacity:
                victim = p.victim(protected)
                resident.remove(victim)
                p.evict(victim)
            resident.add(key)
            p.admit(key)
            p.use(key)
    return SimResult(policy, capacity, hits, misses, misses * expert_bytes)


def _belady(trace: Trace, capacity: int, warmup: int, expert_bytes: int) -> SimResult:
    batches = _batches(trace)
    # next_use[i][j]: the batch index where batches[i]'s j-th key is next used (inf: never)
    next_use: list[list[float]] = [[]] * len(batches)
    seen: dict[Key, float] = {}
    for i in range(len(batches) - 1, -1, -1):
        keys = batches[i][1]
        next_use[i] = [seen.get(k, math.inf) for k in keys]
        for k in keys:
            seen[k] = i
    resident: dict[Key, float] = {}  # key -> its next use
    heap: list[tuple[float, Key]] = []  # (-next use, key), lazily invalidated
    hits = misses = 0
    for i, (t, keys) in enumerate(batches):
        protected = set(keys)
        for key, nxt in zip(keys, next_use[i], strict=True):
            if key in resident:
                hits += t >= warmup
            else:
                misses += t >= warmup
                if len(resident) >= capacity:
                    held = []
                    while True:
                        neg, victim = heapq.heappop(heap)
                        if resident.get(victim) != -neg:
                            continue
                        if victim in protected:
                            held.append((neg, victim))
                            continue
                        break
                    for entry in held:
                        heapq.heappush(heap, entry)
                    del resident[victim]
            resident[key] = nxt
            heapq.heappush(heap, (-nxt, key))
        if len(heap) > 4 * len(resident) + 64:
            heap = [(-n, k) for k, n in resident.items()]
            heapq.heapify(heap)
    return SimResult(BELADY, capacity, hits, misses, misses * expert_bytes)


def compare(trace: Trace, capacity: int, policies: Iterable[str] | None = None, *,
            warmup: int = 0, expert_bytes: int = 0) -> dict[str, SimResult]:
    """Every policy (default: all in POLICIES) and Belady on the same trace and capacity."""
    names = list(policies) if policies is not None else list(POLICIES)
    if BELADY not in names:
        names.append(BELADY)
    return {n: simulate(trace, n, capacity, warmup=warmup, expert_bytes=expert_bytes)
            for n in names}


def sweep(trace: Trace, fractions: Sequence[float], policies: Iterable[str] | None = None, *,
          warmup: int = 0, expert_bytes: int = 0) -> list[dict]:
    """``compare`` at each capacity fraction of all experts, as JSON-ready rows."""
    rows = []
    for f in fractions:
        cap = max(capacity_for(trace, f), trace.top_k)
        res = compare(trace, cap, policies, warmup=warmup, expert_bytes=expert_bytes)
        rows.append({"fraction": f, "capacity": cap,
                     "results": {n: r.to_dict() for n, r in res.items()}})
    return rows


def routing_stats(trace: Trace) -> dict:
    """How skewed the routes are: share of routes taken by the top 10% of experts (per layer,
    averaged), and how often a layer reuses an expert of the previous token (temporal locality)."""
    import numpy as np

    counts = np.zeros((trace.layers, trace.experts), dtype=np.int64)
    reuse = total = 0
    prev: list[set[int]] | None = None
    for tok in trace.tokens:
        sets = [set(ids) for ids in tok]
        for layer, ids in enumerate(sets):
            counts[layer, list(ids)] += 1
            if prev is not None:
                reuse += len(ids & prev[layer])
                total += len(ids)
        prev = sets
    top = max(1, trace.experts // 10)
    per_layer = np.sort(counts, axis=1)[:, ::-1]
    share = per_layer[:, :top].sum(axis=1) / np.maximum(per_layer.sum(axis=1), 1)
    return {
        "tokens": len(trace.tokens),
        "top10pct_share": float(share.mean()),
        "uniform_top10pct_share": top / trace.experts,
        "prev_token_reuse": reuse / total if total else math.nan,
        "uniform_prev_token_reuse": trace.top_k / trace.experts,
        "experts_used": int((counts > 0).sum()),
    }
