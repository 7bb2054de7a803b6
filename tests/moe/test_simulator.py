"""The cache simulator on hand traces whose hit counts were worked out by hand (in the comments),
Belady above every policy on random traces, and the traces where LRU and LFU each lose."""

from __future__ import annotations

import json
import random

import pytest

from qcoder_ds.errors import QcoderError
from qcoder_ds.runtime.cache_simulator import (
    BELADY,
    capacity_for,
    compare,
    routing_stats,
    simulate,
    sweep,
)
from qcoder_ds.runtime.expert_policy import POLICIES
from qcoder_ds.runtime.moe_trace import Trace, TraceWriter, read_trace


def one_layer(seq: list[int], experts: int = 8) -> Trace:
    """One layer, top-1: one access per token."""
    return Trace(layers=1, experts=experts, top_k=1, model="hand", tokens=[[[e]] for e in seq])


def hits(trace: Trace, policy: str, capacity: int) -> int:
    return simulate(trace, policy, capacity).hits


def test_cyclic_three_keys_in_two_slots():
    # 0 1 2 0 1 2, capacity 2.
    # LRU: every access misses (each evicts the key needed next).
    # Belady: t2 evicts 1 (next use t4, 0's is t3); t3 hit; t4 evicts 0 (never again, 2 at t5);
    # t5 hit -> 2 hits.
    # LFU (counts survive eviction, ties to the least recent): t2 evicts 0; t3 (0 back, count 2)
    # evicts 1 (1 vs 2, both count 1, 1 older); t4 evicts 2 (count 1 < 0's 2); t5 evicts 0
    # (counts 2 and 2, 0 older) -> 0 hits.
    t = one_layer([0, 1, 2, 0, 1, 2])
    assert hits(t, "lru", 2) == 0
    assert hits(t, "lfu", 2) == 0
    assert hits(t, BELADY, 2) == 2
    r = simulate(t, BELADY, 2, expert_bytes=100)
    assert (r.misses, r.bytes_read, r.hit_rate) == (4, 400, pytest.approx(2 / 6))


def test_batch_protects_the_layers_experts():
    # top-2, capacity 2: tokens [0, 1] then [2, 0]. Loading 2 must not evict 0 (LRU's oldest),
    # which the same layer needs: it evicts 1, and 0 hits -> 1 hit, 3 misses.
    t = Trace(layers=1, experts=4, top_k=2, model="hand", tokens=[[[0, 1]], [[2, 0]]])
    for policy in [*POLICIES, BELADY]:
        r = simulate(t, policy, 2)
        assert (r.hits, r.misses) == (1, 3), policy


def test_lru_thrashes_where_lfu_wins():
    # cycle 0 1 0 1 2 3 4 (two hot keys, a scan of three) x3, capacity 3.
    # LRU: cycle 1 hits 0,1 (t2, t3) then 2 fills, 3 evicts 0, 4 evicts 1; every later cycle
    # misses 0 and 1, hits them once, misses the scan -> 2 hits a cycle, 6 in all.
    # LFU: 0 and 1 gain two counts a cycle, scan keys one, so the scan only evicts scan keys:
    # cycle 1 hits 2, later cycles 4 (0 1 0 1) -> 2 + 4 + 4 = 10.
    t = one_layer([0, 1, 0, 1, 2, 3, 4] * 3)
    assert hits(t, "lru", 3) == 6
    assert hits(t, "lfu", 3) == 10
    assert hits(t, BELADY, 3) >= 10


def test_lfu_loses_where_lru_wins():
    # phase 1: (0 1) x5; phase 2: (2 3) x5; capacity 2.
    # LRU: 2 misses then 8 hits per phase -> 16.
    # LFU: phase 1 the same (8 hits); in phase 2, 0 and 1 hold count 5, so 2 and 3 keep evicting
    # each other (2 evicts 0 on the tie, then each newcomer evicts the other, count < 5) until the
    # 10th access, where 3's count reaches 5 -> 8 hits in all. LFU-decay forgets phase 1.
    t = one_layer([0, 1] * 5 + [2, 3] * 5)
    assert hits(t, "lru", 2) == 16
    assert hits(t, "lfu", 2) == 8
    assert hits(t, BELADY, 2) == 16


def test_layer_cycle_nextuse_matches_belady():
    # 3 layers, one expert each, capacity 2, 6 tokens = 18 accesses: LRU misses every one (a
    # cycle one longer than the cache). Belady keeps the key needed next: after the first 3
    # misses, every other access hits: t = 3, 5, ..., 17 -> 8 hits. nextuse evicts the
    # just-used layer (it is visited last), which is Belady's choice here.
    t = Trace(layers=3, experts=1, top_k=1, model="hand", tokens=[[[0], [0], [0]]] * 6)
    assert hits(t, "lru", 2) == 0
    assert hits(t, BELADY, 2) == 8
    assert hits(t, "nextuse", 2) == 8


def test_warmup_tokens_are_replayed_not_counted():
    t = one_layer([0, 1, 0, 1, 0, 1])
    r = simulate(t, "lru", 2, warmup=2)
    assert (r.hits, r.misses) == (4, 0)


def _random_trace(rng: random.Random) -> Trace:
    layers, experts = rng.randint(1, 4), rng.randint(2, 12)
    top_k = rng.randint(1, min(3, experts))
    weights = [1 / (i + 1) ** rng.uniform(0, 1.5) for i in range(experts)]
    tokens = []
    for _ in range(rng.randint(1, 60)):
        tok = []
        for _ in range(layers):
            chosen: set[int] = set()
            while len(chosen) < top_k:
                chosen.add(rng.choices(range(experts), weights)[0])
            tok.append(sorted(chosen, key=lambda _: rng.random()))
        tokens.append(tok)
    return Trace(layers, experts, top_k, "random", tokens)


@pytest.mark.parametrize("seed", range(40))
def test_belady_is_never_beaten(seed):
    rng = random.Random(seed)
    trace = _random_trace(rng)
    cap = rng.randint(trace.top_k, trace.layers * trace.experts)
    res = compare(trace, cap)
    best = res[BELADY].hits
    for name, r in res.items():
        assert r.accesses == res[BELADY].accesses
        assert r.hits <= best, (name, r.hits, best)
    if cap >= trace.layers * trace.experts:  # everything fits: only first touches miss
        assert res["lru"].misses == len({a for a in trace.accesses()})


def test_capacity_and_errors():
    t = Trace(layers=4, experts=8, top_k=2, model="m", tokens=[[[0, 1]] * 4])
    assert capacity_for(t, 0.25) == 8
    assert capacity_for(t, budget_bytes=1000, expert_bytes=300) == 3
    with pytest.raises(QcoderError, match="either"):
        capacity_for(t)
    with pytest.raises(QcoderError, match="cannot hold one layer's 2"):
        simulate(t, "lru", 1)
    with pytest.raises(QcoderError, match="unknown expert cache policy"):
        simulate(t, "mru", 4)
    rows = sweep(t, [0.25, 1.0])
    assert [r["capacity"] for r in rows] == [8, 32]
    assert set(rows[0]["results"]) == {*POLICIES, BELADY}


def test_routing_stats_and_file_round_trip(tmp_path):
    path = tmp_path / "t.trace"
    with TraceWriter(path, layers=1, experts=10, top_k=1, model="m") as w:
        for e in [0, 0, 0, 1]:
            w.token([[e]])
    s = routing_stats(read_trace(path))
    # top 10% of 10 experts = expert 0: 3 of 4 routes; reuse: 2 of 3 token pairs
    assert s["top10pct_share"] == pytest.approx(0.75)
    assert s["prev_token_reuse"] == pytest.approx(2 / 3)
    assert s["experts_used"] == 2


def test_cli_simulate_and_stats(tmp_path, capsys):
    from qcoder_ds.cli import main

    path = tmp_path / "t.trace"
    with TraceWriter(path, layers=1, experts=8, top_k=1, model="hand") as w:
        for e in [0, 1, 2, 0, 1, 2]:
            w.token([[e]])
    assert main(["trace", "simulate", str(path), "--budget", "2", "--policy", "lru",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    res = out["budgets"][0]["results"]
    assert out["budgets"][0]["capacity"] == 2
    assert (res["lru"]["hits"], res["belady"]["hits"]) == (0, 2)  # the cyclic trace above
    assert main(["trace", "simulate", str(path), "--budget", "25%", "--expert-bytes", "1000"]) == 0
    assert "belady" in capsys.readouterr().out
    assert main(["trace", "simulate", str(path), "--budget", "8GiB"]) == 1
    assert "--expert-bytes" in capsys.readouterr().err
    assert main(["trace", "stats", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["experts_used"] == 3
    (tmp_path / "bad.trace").write_bytes(b"nonsense")
    assert main(["trace", "stats", str(tmp_path / "bad.trace")]) == 1
    assert "not a qcoder MoE trace" in capsys.readouterr().err
