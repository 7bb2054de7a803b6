"""The expert cache on its own: budget, eviction, protection, prefetch and its accounting."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from qcoder_ds.runtime.expert_cache import ExpertBudgetError, ExpertCache, human_bytes


class _Expert:
    def __init__(self, key):
        self.key = key

    def run(self, x):
        return x + self.key[1]


class Loader:
    """Counts builds; can be slowed down or made to fail for chosen keys."""

    def __init__(self, fail=(), gate: threading.Event | None = None):
        self.built: list = []
        self.fail = set(fail)
        self.gate = gate

    def __call__(self, layer, expert):
        if self.gate is not None:
            self.gate.wait(5)
        if (layer, expert) in self.fail:
            raise OSError(f"cannot read expert {(layer, expert)}")
        self.built.append((layer, expert))
        return _Expert((layer, expert)), 100


def test_budget_is_never_exceeded_and_lru_evicts_the_oldest():
    load = Loader()
    c = ExpertCache(load, expert_bytes=100, budget=350, top_k=2, policy="lru")
    assert c.capacity == 3
    rng = np.random.default_rng(0)
    for _ in range(200):
        c.get((int(rng.integers(2)), int(rng.integers(6))))
        assert c.resident <= 3
    c2 = ExpertCache(Loader(), 100, 300, 2, "lru")
    for e in (0, 1, 2):
        c2.get((0, e))
    c2.get((0, 0))  # 0 is now the most recent
    c2.get((0, 3))  # evicts 1, the least recently used
    assert c2.resident_keys() == {(0, 0), (0, 2), (0, 3)}
    assert c2.stats.evictions == 1 and c2.stats.misses == 4 and c2.stats.hits == 1


def test_protected_experts_stay():
    c = ExpertCache(Loader(), 100, 300, 2, "lru")
    for e in (0, 1, 2):
        c.get((0, e))
    c.protect([(0, 0), (0, 1)])
    c.get((1, 5))
    assert {(0, 0), (0, 1)} <= c.resident_keys()


def test_the_minimum_budget_is_one_layers_top_k():
    with pytest.raises(ExpertBudgetError, match=r"minimum of .*\(800 bytes: one layer's top-8"):
        ExpertCache(Loader(), 100, 799, 8)
    ExpertCache(Loader(), 100, 800, 8)
    assert human_bytes(17_200_000_000) == "17.20 GB"


def test_prefetch_builds_in_the_background_and_counts_accuracy():
    load = Loader()
    c = ExpertCache(load, 100, 1000, 2, "lru")
    c.prefetch(1, [(1, 3), (1, 4), (1, 5)])
    c.wait_idle()
    assert {(1, 3), (1, 4), (1, 5)} <= set(load.built)
    for e in (3, 4):  # the layer used two of the three
        c.get((1, e))
    c.layer_done(1, [(1, 3), (1, 4), (1, 7)])
    d = c.describe()
    assert d["prefetch_loaded"] == 3 and d["prefetch_loaded_used"] == 2
    assert d["prefetch_accuracy"] == pytest.approx(2 / 3)
    assert d["prediction_accuracy"] == pytest.approx(2 / 3)
    assert d["misses"] == 0 and d["hits"] == 2
    c.close()


def test_a_request_for_an_expert_being_prefetched_waits_for_it():
    gate = threading.Event()
    load = Loader(gate=gate)
    c = ExpertCache(load, 100, 1000, 2, "lru")
    c.prefetch(0, [(0, 1)])
    got = []
    t = threading.Thread(target=lambda: got.append(c.get((0, 1))))
    t.start()
    gate.set()
    t.join(5)
    assert got and got[0].key == (0, 1)
    assert load.built.count((0, 1)) == 1  # built once, not twice
    c.close()


def test_prefetch_never_evicts_what_the_layer_needs():
    c = ExpertCache(Loader(), 100, 300, 2, "lru")
    for e in (0, 1, 2):
        c.get((0, e))
    c.protect([(0, 0), (0, 1), (0, 2)])
    c.prefetch(1, [(1, 0), (1, 1)])
    c.wait_idle()
    assert c.resident_keys() == {(0, 0), (0, 1), (0, 2)}
    c.close()


def test_load_errors_reach_the_decoder():
    c = ExpertCache(Loader(fail={(0, 1)}), 100, 300, 2, "lru")
    with pytest.raises(OSError, match=r"cannot read expert \(0, 1\)"):
        c.get((0, 1))
    c.prefetch(0, [(0, 1)])
    c.wait_idle()
    assert c.stats.prefetch_errors == 1
    with pytest.raises(OSError):
        c.get((0, 1))
    assert c.resident == 0
    c.close()


def test_policies_from_expert_policy():
    expert_policy = pytest.importorskip("qcoder_ds.runtime.expert_policy")
    for name in expert_policy.POLICIES:
        c = ExpertCache(Loader(), 100, 300, 2, name)
        rng = np.random.default_rng(1)
        for _ in range(100):
            c.protect([])
            c.get((0, int(rng.integers(8))))
            assert c.resident <= 3
    with pytest.raises(Exception, match="lru"):
        ExpertCache(Loader(), 100, 300, 2, "no-such-policy")


def _prefetching_session(monkeypatch, probation: int):
    """(cache, a MoeDecoderSession with prefetch on over it and nothing else) for the
    switch-off rules, with PREFETCH_PROBATION set to ``probation``."""
    from qcoder_ds.runtime import moe_session

    monkeypatch.setattr(moe_session, "PREFETCH_PROBATION", probation)
    c = ExpertCache(Loader(), 100, 1000, 2, "lru")

    class Session(moe_session.MoeDecoderSession):
        def __init__(self):
            self.cache, self.prefetch, self.prefetch_off = c, True, ""

    return c, Session()


def test_prefetch_switches_itself_off_when_its_guesses_are_wrong(monkeypatch):
    """Wrong guesses cost builds and evictions: after the probation, below 30% used, off."""
    c, s = _prefetching_session(monkeypatch, 10)
    c.stats.prefetch_predicted, c.stats.prefetch_predicted_used = 8, 0
    assert s._prefetch_pays()  # still on probation
    c.stats.prefetch_predicted, c.stats.prefetch_predicted_used = 12, 4  # 33%: pays
    assert s._prefetch_pays()
    c.stats.prefetch_predicted_used = 3  # 25%
    assert not s._prefetch_pays() and not s.prefetch
    assert "3 of 12 predicted experts were used" in s.prefetch_off


def test_prefetch_switches_itself_off_when_most_of_its_builds_go_unused(monkeypatch):
    """Guesses may be right about experts already resident and still waste the builds: after
    PREFETCH_PROBATION / 4 built, fewer than half of them used, off."""
    c, s = _prefetching_session(monkeypatch, 40)
    c.stats.prefetch_predicted, c.stats.prefetch_predicted_used = 400, 250  # good guesses
    c.stats.prefetch_loaded, c.stats.prefetch_loaded_used = 9, 0
    assert s._prefetch_pays()  # too few builds to judge
    c.stats.prefetch_loaded, c.stats.prefetch_loaded_used = 10, 5  # half: pays
    assert s._prefetch_pays()
    c.stats.prefetch_loaded_used = 4
    assert not s._prefetch_pays() and not s.prefetch
    assert "4 of the 10 experts it built were used" in s.prefetch_off
