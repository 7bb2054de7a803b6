"""Eviction policies for the MoE expert cache: which resident (layer, expert) to drop next.

The cache (``expert_cache.py``) and the trace simulator (``cache_simulator.py``) drive the same
objects through four calls: ``admit`` when a key becomes resident, ``use`` on every access of a
resident key (also right after ``admit``), ``victim`` to pick a resident key outside
``protected`` (the experts of the layer being computed, which must stay while it loads the rest),
and ``evict`` when the key has left. The real cache holds up to 48 x 128 keys and is consulted
~400 times a token, so every call is O(log n) or amortized O(1): heaps with lazy deletion, no
scans over the resident set.

Policies:

- ``lru``: least recently used. Decode visits layers 0..L-1 in a cycle, so when the working set
  exceeds the cache, LRU evicts exactly the experts of the layers coming next (a cyclic access
  pattern is LRU's worst case).
- ``lfu``: least frequently used, counting every access since the key was first seen (counts
  survive eviction, "perfect LFU": an expert's popularity is a property of the router, not of
  its stay in the cache); ties go to the least recently used.
- ``lfu-decay``: LFU where each access weighs 2^(-age / half_life), age in tokens (forward
  passes, counted from the access order), so a change of topic (a new file, a new language)
  moves the counts within a few half-lives.
- ``nextuse``: our own; estimates Belady's next-use time. Decode's access order is known in
  shape: layer l is next visited after ``d(l)`` = (l - current layer) mod L layer steps, and
  expert e of layer l is used on a visit with probability p(e|l), estimated as its decayed
  use count over the layer's decayed visit count. The expected distance to the next use is
  ``d(l) + L * (1/p - 1)`` layer steps (geometric over later visits); the victim is the key
  where it is largest. Within one layer d is shared, so the layer's candidate is its least
  frequent key (a per-layer heap); across layers, one comparison per layer (48), not per key.

Measured (``python benchmarks/moe.py``, ``benchmarks/results/moe.json``, the synthetic model's
48-layer routing at 25% of the experts): hit rate lru 0.616, lfu 0.688, lfu-decay 0.689,
nextuse 0.690, Belady 0.814. nextuse gains little over lfu-decay (the layer distance matters
only for experts used on nearly every visit) and its victim costs one step per layer, ~4x
lfu-decay's per access in the simulator; lfu-decay is the default to beat. The gap to Belady
is knowledge of the next tokens' routes, which prefetch, not eviction, can capture.
"""

from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Collection

from qcoder_ds.errors import QcoderError

Key = tuple[int, int]  # (layer, expert)

DEFAULT_HALF_LIFE = 64.0  # tokens (the clock of lfu-decay and nextuse counts forward passes)


class _TokenClock:
    """Counts forward passes from the access order alone: a pass ends when an access goes back
    to a lower layer, or repeats an expert already used on this visit of the layer (which is how
    a one-layer trace shows its next token). Decay measured in tokens means the same half-life
    whatever the number of layers."""

    def __init__(self) -> None:
        self.tokens = 0
        self._layer = -1
        self._visit: set[int] = set()

    def see(self, key: Key) -> bool:
        """Advance on ``key``; True when it starts a new visit of its layer."""
        layer, expert = key
        if layer < self._layer or (layer == self._layer and expert in self._visit):
            self.tokens += 1
        if layer != self._layer or expert in self._visit:
            self._layer, self._visit = layer, {expert}
            return True
        self._visit.add(expert)
        return False


def _no_victim(name: str, protected: Collection[Key]) -> QcoderError:
    return QcoderError(
        f"{name} policy: every resident expert is protected ({len(protected)} keys); the expert "
        "cache must hold at least one layer's routed experts plus one more"
    )


def _log2_add(a: float, b: float) -> float:
    """log2(2^a + 2^b) without overflow: decayed counts are kept as logs of sums of 2^(t/h)."""
    if a == -math.inf:
        return b
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log2(1.0 + 2.0 ** (lo - hi))


class Policy(ABC):
    """One eviction policy; the cache owns residency, the policy only ranks resident keys."""

    name: str

    @abstractmethod
    def admit(self, key: Key) -> None:
        """``key`` became resident."""

    @abstractmethod
    def use(self, key: Key) -> None:
        """``key`` (resident) was accessed; called on every access, also right after ``admit``."""

    @abstractmethod
    def victim(self, protected: Collection[Key]) -> Key:
        """A resident key not in ``protected``; QcoderError if there is none. Does not evict it."""

    @abstractmethod
    def evict(self, key: Key) -> None:
        """``key`` left the cache."""


class LRU(Policy):
    """Least recently used: an ordered dict, oldest first; protected keys (at most k) skipped."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Key, None] = OrderedDict()

    def admit(self, key: Key) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def use(self, key: Key) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def victim(self, protected: Collection[Key]) -> Key:
        for key in self._order:
            if key not in protected:
                return key
        raise _no_victim(self.name, protected)

    def evict(self, key: Key) -> None:
        self._order.pop(key, None)


class _HeapPolicy(Policy):
    """A min-heap of (score, last use, key) with lazy deletion: an entry is live while it matches
    the key's current score and tick, so ``use`` is one push and ``victim`` pops stale entries.
    The heap is rebuilt when stale entries outnumber live ones 4 to 1, keeping it O(resident)."""

    def __init__(self) -> None:
        self._resident: dict[Key, tuple[float, int]] = {}  # key -> its live (score, tick)
        self._heap: list[tuple[float, int, Key]] = []
        self._tick = 0

    @abstractmethod
    def _score_after_use(self, key: Key) -> float:
        """Update the key's statistics for one access and return its new score (low = evict)."""

    def admit(self, key: Key) -> None:
        self._tick += 1
        self._set(key, self._admit_score(key))

    def _admit_score(self, key: Key) -> float:
        return -math.inf

    def use(self, key: Key) -> None:
        if key not in self._resident:
            return
        self._tick += 1
        self._set(key, self._score_after_use(key))

    def _set(self, key: Key, score: float) -> None:
        self._resident[key] = (score, self._tick)
        heapq.heappush(self._heap, (score, self._tick, key))
        if len(self._heap) > 4 * len(self._resident) + 64:
            self._heap = [(s, t, k) for k, (s, t) in self._resident.items()]
            heapq.heapify(self._heap)

    def victim(self, protected: Collection[Key]) -> Key:
        held: list[tuple[float, int, Key]] = []
        found: Key | None = None
        while self._heap:
            score, tick, key = self._heap[0]
            if self._resident.get(key) != (score, tick):
                heapq.heappop(self._heap)  # stale
                continue
            if key in protected:
                held.append(heapq.heappop(self._heap))
                continue
            found = key
            break
        for entry in held:
            heapq.heappush(self._heap, entry)
        if found is None:
            raise _no_victim(self.name, protected)
        return found

    def evict(self, key: Key) -> None:
        self._resident.pop(key, None)


class LFU(_HeapPolicy):
    """Least frequently used over all accesses since the key was first seen; ties: least recent."""

    name = "lfu"

    def __init__(self) -> None:
        super().__init__()
        self._count: dict[Key, int] = {}

    def _admit_score(self, key: Key) -> float:
        return float(self._count.get(key, 0))

    def _score_after_use(self, key: Key) -> float:
        self._count[key] = self._count.get(key, 0) + 1
        return float(self._count[key])


class LFUDecay(_HeapPolicy):
    """LFU where an access ``age`` tokens ago weighs 2^(-age/half_life).

    Scores are log2(sum over accesses of 2^(t/half_life)) on a global token clock t: every
    score decays by the same factor per tick, so their order never changes between accesses and
    a heap stays valid; the logs never overflow."""

    name = "lfu-decay"

    def __init__(self, half_life: float = DEFAULT_HALF_LIFE) -> None:
        super().__init__()
        if half_life <= 0:
            raise QcoderError(f"lfu-decay: half_life must be positive, got {half_life}")
        self.half_life = float(half_life)
        self._log_count: dict[Key, float] = {}
        self._clock = _TokenClock()

    def _admit_score(self, key: Key) -> float:
        return self._log_count.get(key, -math.inf)

    def _score_after_use(self, key: Key) -> float:
        self._clock.see(key)
        score = _log2_add(self._log_count.get(key, -math.inf),
                          self._clock.tokens / self.half_life)
        self._log_count[key] = score
        return score


class NextUse(Policy):
    """Evict the key with the largest estimated distance to its next use (see the module doc).

    Layer count L is the largest layer seen + 1; the current layer is the last used key's. A
    layer visit starts as _TokenClock says. p(e|l) = decayed uses of (l, e) /
    decayed visits of l, both on the same clock, so log p = log count - log visits.
    """

    name = "nextuse"

    def __init__(self, half_life: float = DEFAULT_HALF_LIFE) -> None:
        if half_life <= 0:
            raise QcoderError(f"nextuse: half_life must be positive, got {half_life}")
        self.half_life = float(half_life)
        self._tick = 0
        self._clock = _TokenClock()
        self._layers = 0
        self._current = -1
        self._log_count: dict[Key, float] = {}
        self._log_visits: dict[int, float] = {}
        self._live: dict[Key, tuple[float, int]] = {}  # resident key -> (log count, tick)
        self._heaps: dict[int, list[tuple[float, int, Key]]] = {}
        self._size: dict[int, int] = {}  # resident keys per layer

    def admit(self, key: Key) -> None:
        layer = key[0]
        self._layers = max(self._layers, layer + 1)
        self._size[layer] = self._size.get(layer, 0) + 1
        self._tick += 1
        self._push(key, self._log_count.get(key, -math.inf))

    def _push(self, key: Key, score: float) -> None:
        self._live[key] = (score, self._tick)
        heap = self._heaps.setdefault(key[0], [])
        heapq.heappush(heap, (score, self._tick, key))
        if len(heap) > 4 * self._size[key[0]] + 16:
            heap[:] = [(s, t, k) for k, (s, t) in self._live.items() if k[0] == key[0]]
            heapq.heapify(heap)

    def use(self, key: Key) -> None:
        if key not in self._live:
            return
        layer = key[0]
        self._tick += 1
        new_visit = self._clock.see(key)
        now = self._clock.tokens / self.half_life
        self._current = layer
        if new_visit:
            self._log_visits[layer] = _log2_add(self._log_visits.get(layer, -math.inf), now)
        score = _log2_add(self._log_count.get(key, -math.inf), now)
        self._log_count[key] = score
        self._push(key, score)

    def _top(
        self, layer: int, protected: Collection[Key], held: list
    ) -> tuple[float, int, Key] | None:
        heap = self._heaps[layer]
        while heap:
            score, tick, key = heap[0]
            if self._live.get(key) != (score, tick):
                heapq.heappop(heap)
                continue
            if key in protected:
                held.append(heapq.heappop(heap))
                continue
            return heap[0]
        return None

    def victim(self, protected: Collection[Key]) -> Key:
        best: Key | None = None
        best_distance = -math.inf
        best_tick = 0
        layers = max(self._layers, 1)
        for layer, heap in self._heaps.items():
            if not self._size.get(layer):
                continue
            held: list[tuple[float, int, Key]] = []
            top = self._top(layer, protected, held)
            for entry in held:
                heapq.heappush(heap, entry)
            if top is None:
                continue
            log_count, tick, key = top
            ahead = (layer - self._current) % layers or layers  # layer steps to its next visit
            visits = self._log_visits.get(layer, -math.inf)
            log_p = min(0.0, log_count - visits) if visits != -math.inf else 0.0
            if log_count == -math.inf:
                distance = math.inf
            else:
                distance = ahead + layers * (2.0 ** (-log_p) - 1.0)
            if distance > best_distance or (distance == best_distance and tick < best_tick):
                best, best_distance, best_tick = key, distance, tick
        if best is None:
            raise _no_victim(self.name, protected)
        return best

    def evict(self, key: Key) -> None:
        if self._live.pop(key, None) is not None:
            self._size[key[0]] -= 1


POLICIES: dict[str, Callable[[], Policy]] = {
    "lru": LRU,
    "lfu": LFU,
    "lfu-decay": LFUDecay,
    "nextuse": NextUse,
}


def make_policy(name: str) -> Policy:
    """The policy called ``name``; an unknown name is an error that lists the choices."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise QcoderError(
            f"unknown expert cache policy {name!r}; choose one of: {', '.join(POLICIES)}"
        ) from None
    return factory()
