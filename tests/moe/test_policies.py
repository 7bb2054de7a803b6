"""Eviction policies: the victims each one picks on hand-made access sequences."""

from __future__ import annotations

import random

import pytest

from qcoder_ds.errors import QcoderError
from qcoder_ds.runtime.expert_policy import (
    LFU,
    LRU,
    POLICIES,
    LFUDecay,
    NextUse,
    Policy,
    make_policy,
)


def _touch(policy: Policy, keys) -> None:
    for key in keys:
        policy.use(key)


def _admit_all(policy: Policy, keys) -> None:
    for key in keys:
        policy.admit(key)
        policy.use(key)


def test_make_policy_names_and_unknown():
    assert {"lru", "lfu", "lfu-decay"} <= set(POLICIES)
    for name in POLICIES:
        assert make_policy(name).name == name
    with pytest.raises(QcoderError, match="lru.*lfu.*lfu-decay"):
        make_policy("fifo")


def test_lru_evicts_least_recent_and_skips_protected():
    p = LRU()
    _admit_all(p, [(0, 0), (0, 1), (1, 0)])
    p.use((0, 0))
    assert p.victim(()) == (0, 1)
    assert p.victim({(0, 1)}) == (1, 0)
    p.evict((0, 1))
    assert p.victim(()) == (1, 0)


def test_lfu_counts_and_ties_go_to_least_recent():
    p = LFU()
    _admit_all(p, [(0, 0), (0, 1), (0, 2)])
    _touch(p, [(0, 0), (0, 0), (0, 2)])  # counts 3, 1, 2
    assert p.victim(()) == (0, 1)
    _touch(p, [(0, 1)])  # counts 3, 2, 2: tie, (0, 2) used longer ago
    assert p.victim(()) == (0, 2)
    assert p.victim({(0, 2)}) == (0, 1)


def test_lfu_remembers_counts_across_eviction():
    p = LFU()
    _admit_all(p, [(0, 0), (0, 1)])
    _touch(p, [(0, 0)] * 5)
    p.evict((0, 0))
    _admit_all(p, [(0, 0)])  # back with 7 uses, above (0, 1)'s 1
    assert p.victim(()) == (0, 1)


def test_lfu_decay_forgets_old_popularity():
    p = LFUDecay(half_life=2)
    _admit_all(p, [(0, 0), (0, 1)])
    _touch(p, [(0, 0)] * 4)  # (0, 0) popular early
    _touch(p, [(0, 1)] * 12)  # then (0, 1) for six half-lives
    assert p.victim(()) == (0, 0)
    plain = LFU()
    _admit_all(plain, [(0, 0), (0, 1)])
    _touch(plain, [(0, 0)] * 20)
    _touch(plain, [(0, 1)] * 12)
    assert plain.victim(()) == (0, 1)  # plain LFU still prefers the stale one


def test_nextuse_keeps_the_layer_needed_next():
    # 3 layers, 1 expert each: having just used layer 1, layer 2 is needed next and layer 1 last
    p = NextUse()
    _admit_all(p, [(0, 0), (1, 0), (2, 0)])
    _touch(p, [(0, 0), (1, 0)])
    assert p.victim(()) == (1, 0)
    _touch(p, [(2, 0)])
    assert p.victim(()) == (2, 0)
    assert p.victim({(2, 0)}) == (1, 0)


def test_nextuse_prefers_rare_experts_within_a_layer():
    p = NextUse()
    _admit_all(p, [(0, 0), (0, 1), (1, 0)])
    for _ in range(10):  # layer 0 always uses expert 0, expert 1 was used once
        _touch(p, [(0, 0), (1, 0)])
    assert p.victim({(1, 0)}) == (0, 1)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_no_victim_when_everything_is_protected(name):
    p = make_policy(name)
    with pytest.raises(QcoderError, match="protected"):
        p.victim(())
    _admit_all(p, [(0, 0), (0, 1)])
    with pytest.raises(QcoderError, match="protected"):
        p.victim({(0, 0), (0, 1)})


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_victim_is_resident_and_unprotected_under_churn(name):
    """A random admit/use/evict workload: the victim is always resident and unprotected, and the
    lazy heaps stay bounded."""
    rng = random.Random(0)
    p = make_policy(name)
    resident: set = set()
    for _ in range(3000):
        key = (rng.randrange(4), rng.randrange(16))
        if key not in resident:
            if len(resident) >= 20:
                protected = {k for k in resident if rng.random() < 0.2}
                if len(protected) == len(resident):
                    protected.pop()
                victim = p.victim(protected)
                assert victim in resident and victim not in protected
                p.evict(victim)
                resident.discard(victim)
            p.admit(key)
            resident.add(key)
        p.use(key)
    heaps = getattr(p, "_heap", None)
    if heaps is not None:
        assert len(heaps) <= 4 * len(resident) + 64
