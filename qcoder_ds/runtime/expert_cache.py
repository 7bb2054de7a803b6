"""The expert cache: executable experts under a byte budget, with eviction and prefetch.

A token of Qwen3-Coder-30B-A3B uses 8 of 128 experts in each of 48 layers; the 6144 experts
take ~17 GB in int4. The cache keeps as many as ``--expert-ram`` allows, in the form the
backend executes at full speed (an ONNX Runtime session or an OpenVINO compiled model with
the weights as constants: ONNX Runtime prepacks only constants, and an int4 MatMulNBits fed
its weights as an input ran ~100x slower), and builds a missing one from the expert store.

- **Budget**: bytes of memory for resident experts; each counts what it really takes
  (``resident_cost``: ~2.0-2.5x its blob, measured), and a share (``50%``) is a share of all
  experts. The minimum is one layer's top-k experts: below that a single token could not keep
  its own experts.
- **Eviction**: through a ``Policy`` of ``qcoder_ds.runtime.expert_policy`` (``admit``,
  ``use``, ``victim(protected)``, ``evict``); the experts the current layer needs are
  protected.
- **Prefetch**: a background thread builds the experts the next layer will probably use
  (its router applied to this layer's hidden state) while this layer computes; its accuracy
  (the share of prefetched experts that were then used) is counted.

A cache never changes the numbers: an expert is built from the same blob whichever way it
arrives, and an evicted expert is rebuilt identically.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from qcoder_ds.errors import QcoderError

Key = tuple[int, int]  # (layer, expert)


class ExpertBudgetError(QcoderError):
    """An expert-RAM budget that cannot work (unreadable, or below the minimum)."""


class Runner(Protocol):
    """One executable expert: ``run(x [n, hidden]) -> [n, hidden]``."""

    def run(self, x: np.ndarray) -> np.ndarray: ...


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20,
          "g": 2**30, "t": 2**40}


#: ``auto`` budgets take this share of the memory available when the model loads
AUTO_SHARE = 0.6


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def parse_budget(text: str | int | float | None, total_bytes: int) -> int:
    """``--expert-ram``: bytes (``6GB``, ``6GiB``, ``500MB``, ``123456``) or a share of all
    expert bytes (``50%``); None or ``all`` is every expert; ``auto`` is what fits in 60% of
    the memory available now, at most every expert."""
    if text is None:
        return int(total_bytes)
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip().lower().replace(" ", "")
    if s in ("all", "100%"):
        return int(total_bytes)
    if s == "auto":
        avail = available_memory()
        return int(min(total_bytes, avail * AUTO_SHARE)) if avail else int(total_bytes)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(%|[kmgt]i?b?|b)?", s)
    if not m:
        raise ExpertBudgetError(f"--expert-ram {text!r} is not a size: write e.g. 6GB, 6GiB, "
                                f"800MB, 50% (of all experts' bytes), all or auto")
    value, unit = float(m.group(1)), m.group(2) or ""
    if unit == "%":
        if not 0 < value <= 100:
            raise ExpertBudgetError(f"--expert-ram {text!r}: a share must be in (0, 100]%")
        return int(total_bytes * value / 100)
    return int(value * _UNITS[unit])


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


#: memory a resident expert takes, per byte of its blob in the store: live RSS (after
#: malloc_trim) of experts built at Qwen3-Coder-30B-A3B's shape, measured by
#: ``python benchmarks/moe_experts.py`` (benchmarks/results/moe-experts.json, "resident").
#: ONNX Runtime's experts are their blobs, run by the expert kernel (one buffer each); an
#: OpenVINO compiled expert keeps a copy of its constants beside the compiled weights, so
#: there a budget in bytes of memory holds fewer experts than bytes of blobs would suggest.
RESIDENT_FACTOR: dict[tuple[str, str], float] = {
    ("onnx", "int4"): 1.05, ("onnx", "int8"): 1.05, ("onnx", "fp32"): 1.05,
    ("openvino", "int4"): 2.45, ("openvino", "int8"): 2.15, ("openvino", "fp32"): 2.05,
}


#: the eviction policy a loaded MoE model uses unless told: LFU with decay kept more hits
#: than LRU on every trace measured (48-layer synthetic routing at 50%: 0.858 against 0.825;
#: the 4-layer live run at 50%, steady state: 63.0 against 55.5 tok/s), benchmarks/moe.py
DEFAULT_POLICY = "lfu-decay"


def resident_cost(blob_bytes: int, backend: str, weights: str) -> int:
    """Bytes of memory one resident expert counts against the budget."""
    return int(blob_bytes * RESIDENT_FACTOR.get((backend, weights), 2.5))


def minimum_budget(top_k: int, expert_bytes: int) -> int:
    """The smallest workable budget: one layer's top-k experts."""
    return top_k * expert_bytes


class _LRU:
    """Least recently used; the policy used when ``expert_policy`` is not installed."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Key, None] = OrderedDict()

    def admit(self, key: Key) -> None:
        self._order[key] = None

    def use(self, key: Key) -> None:
        self._order.move_to_end(key)

    def victim(self, protected: Collection[Key]) -> Key:
        for key in self._order:
            if key not in protected:
                return key
        raise QcoderError("no evictable expert: every resident expert is protected")

    def evict(self, key: Key) -> None:
        self._order.pop(key, None)


def make_policy(name: str):
    """A fresh eviction policy by name, from ``qcoder_ds.runtime.expert_policy`` (LRU of our
    own if that module is not there)."""
    try:
        from qcoder_ds.runtime import expert_policy
    except ImportError:
        if name != "lru":
            raise ExpertBudgetError(f"eviction policy {name!r} needs "
                                    f"qcoder_ds.runtime.expert_policy, which is not installed; "
                                    f"use 'lru'") from None
        return _LRU()
    return expert_policy.make_policy(name)


@dataclass
class CacheStats:
    """What the cache did: hits and misses of the decoder's requests, bytes read from the
    store, evictions, and how the prefetcher did."""

    hits: int = 0
    misses: int = 0
    waited: int = 0  # requests that found their expert being built by the prefetcher
    loads: int = 0
    bytes_read: int = 0
    evictions: int = 0
    prefetch_predicted: int = 0  # experts the prefetcher predicted
    prefetch_predicted_used: int = 0  # ... that the layer then used
    prefetch_loaded: int = 0  # experts the prefetcher built (not resident before)
    prefetch_loaded_used: int = 0  # ... that the layer then used
    prefetch_errors: int = 0
    build_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        requests = self.hits + self.misses
        d["hit_rate"] = self.hits / requests if requests else None
        d["prefetch_accuracy"] = (self.prefetch_loaded_used / self.prefetch_loaded
                                  if self.prefetch_loaded else None)
        d["prediction_accuracy"] = (self.prefetch_predicted_used / self.prefetch_predicted
                                    if self.prefetch_predicted else None)
        return d


@dataclass
class _Slot:
    runner: Any = None
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    prefetched: bool = False


class ExpertCache:
    """Executable experts under ``budget`` bytes.

    ``load(layer, expert) -> (runner, bytes_read)`` builds one expert from the store (the
    backend decides the runner); ``expert_bytes`` is what one resident expert counts. Safe
    for one decoding thread plus the cache's own prefetch thread.
    """

    def __init__(self, load: Callable[[int, int], tuple[Runner, int]], expert_bytes: int,
                 budget: int, top_k: int, policy: str | Any = "lru",
                 total_experts: int | None = None):
        self._load = load
        self.expert_bytes = int(expert_bytes)
        self.budget = int(budget)
        self.top_k = top_k
        minimum = minimum_budget(top_k, self.expert_bytes)
        if self.budget < minimum:
            raise ExpertBudgetError(
                f"--expert-ram {human_bytes(self.budget)} is below the minimum of "
                f"{human_bytes(minimum)} ({minimum} bytes: one layer's top-{top_k} experts of "
                f"{self.expert_bytes:,} bytes each)")
        self.capacity = self.budget // self.expert_bytes  # experts resident at once
        self.total_experts = total_experts
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.stats = CacheStats()
        self._slots: dict[Key, _Slot] = {}  # resident or being built
        self._lock = threading.Lock()
        self._protected: frozenset[Key] = frozenset()
        self._pending: dict[int, set[Key]] = {}  # layer -> experts prefetched for it
        self._predicted: dict[int, set[Key]] = {}
        self._queue: list[tuple[int, list[Key]]] = []
        self._wake = threading.Condition(self._lock)
        self._generation = 0
        self._batch = False  # the prefetcher is working through a batch it took off the queue
        self._closed = False
        self._worker: threading.Thread | None = None

    @property
    def fully_resident(self) -> bool:
        """True when every expert fits: nothing is ever evicted."""
        return self.total_experts is not None and self.capacity >= self.total_experts

    @property
    def resident(self) -> int:
        with self._lock:
            return sum(1 for s in self._slots.values() if s.ready.is_set() and s.error is None)

    def resident_keys(self) -> set[Key]:
        with self._lock:
            return {k for k, s in self._slots.items() if s.ready.is_set() and s.error is None}

    def ready(self, key: Key) -> bool:
        """Whether ``key`` is resident and built (a ``get`` now is a hit without waiting)."""
        slot = self._slots.get(key)  # one dict read: atomic, no lock needed for a hint
        return slot is not None and slot.ready.is_set() and slot.error is None

    # -- the decoder's side
    def protect(self, keys: Iterable[Key]) -> None:
        """The experts the current layer needs: not evicted to make room for others."""
        with self._lock:
            self._protected = frozenset(keys)

    def get(self, key: Key) -> Runner:
        """The runner of ``key``, built now if it is not resident (a miss)."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and slot.ready.is_set() and slot.error is None:
                self.stats.hits += 1
                self.policy.use(key)
                return slot.runner
            if slot is None:
                self.stats.misses += 1
                slot = self._reserve(key, self._protected | {key})
                own = True
            else:  # the prefetcher is building it: wait rather than build it twice
                self.stats.hits += 1
                self.stats.waited += 1
                own = False
        if own:
            self._build(key, slot)
        else:
            slot.ready.wait()
            if slot.error is not None:  # the prefetcher failed: build it here, with its error
                with self._lock:
                    if self._slots.get(key) is slot:
                        del self._slots[key]
                return self.get(key)
        if slot.error is not None:
            raise slot.error
        with self._lock:
            self.policy.use(key)
        return slot.runner

    def _reserve(self, key: Key, protected: Collection[Key]) -> _Slot:
        """Make room for one more expert (evicting under the lock), and claim its slot."""
        while len(self._slots) >= self.capacity:
            ready = [k for k, s in self._slots.items() if s.ready.is_set()]
            if not ready:  # everything is being built right now: over budget for a moment
                break
            shielded = set(protected) | {k for k, s in self._slots.items()
                                         if not s.ready.is_set()}
            if all(k in shielded for k in ready):
                shielded = {k for k, s in self._slots.items() if not s.ready.is_set()}
            victim = self.policy.victim(shielded)
            slot = self._slots.pop(victim, None)
            self.policy.evict(victim)
            if slot is not None:
                self.stats.evictions += 1
        slot = _Slot()
        self._slots[key] = slot
        return slot

    def _build(self, key: Key, slot: _Slot) -> None:
        import time

        t0 = time.perf_counter()
        try:
            runner, nbytes = self._load(*key)
        except BaseException as e:
            with self._lock:
                slot.error = e
                if self._slots.get(key) is slot:
                    del self._slots[key]
            slot.ready.set()
            raise
        with self._lock:
            slot.runner = runner
            self.stats.loads += 1
            self.stats.bytes_read += nbytes
            self.stats.build_seconds += time.perf_counter() - t0
            if self._slots.get(key) is slot:
                self.policy.admit(key)
                self.policy.use(key)
        slot.ready.set()

    def layer_done(self, layer: int, used: Collection[Key]) -> None:
        """Count how the prefetcher did for ``layer`` once its experts are known."""
        with self._lock:
            used = set(used)
            loaded = self._pending.pop(layer, set())
            self.stats.prefetch_loaded_used += len(loaded & used)
            predicted = self._predicted.pop(layer, set())
            self.stats.prefetch_predicted_used += len(predicted & used)

    # -- prefetch
    def prefetch(self, layer: int, keys: Iterable[Key]) -> None:
        """Build ``keys`` (layer ``layer``'s likely experts) on the background thread; an
        older request not yet started is dropped."""
        keys = list(dict.fromkeys(keys))
        with self._lock:
            if self._closed:
                return
            self._predicted[layer] = set(keys)
            self.stats.prefetch_predicted += len(keys)
            self._generation += 1
            self._queue = [(self._generation, [(k[0], k[1]) for k in keys])]
            self._pending.setdefault(layer, set())
            if self._worker is None:
                self._worker = threading.Thread(target=self._run_prefetch, daemon=True,
                                                name="qcoder-expert-prefetch")
                self._worker.start()
            self._wake.notify()

    def _run_prefetch(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                generation, keys = self._queue.pop(0)
                self._batch = True
            try:
                self._prefetch_batch(generation, keys)
            finally:
                with self._lock:
                    self._batch = False

    def _prefetch_batch(self, generation: int, keys: list[Key]) -> None:
        """Build ``keys`` in order until the decoder asks for newer ones or room runs out."""
        for key in keys:
            with self._lock:
                if self._closed or generation != self._generation:
                    break
                if key in self._slots:
                    continue
                protected = self._protected | set(keys)
                evictable = [k for k, s in self._slots.items()
                             if s.ready.is_set() and k not in protected]
                if len(self._slots) >= self.capacity and not evictable:
                    break  # no room without evicting what is needed now
                slot = self._reserve(key, protected)
                slot.prefetched = True
                self._pending.setdefault(key[0], set()).add(key)
                self.stats.prefetch_loaded += 1
            try:
                self._build(key, slot)
            except BaseException:  # noqa: BLE001 - the decoder rebuilds it and reports
                with self._lock:
                    self.stats.prefetch_errors += 1
                    self._pending.get(key[0], set()).discard(key)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until the prefetcher has nothing being built (tests; stats at rest)."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                busy = self._queue or self._batch or \
                    any(not s.ready.is_set() for s in self._slots.values())
            if not busy:
                return
            time.sleep(0.005)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10)

    def describe(self) -> Mapping[str, Any]:
        return {"budget_bytes": self.budget, "expert_bytes": self.expert_bytes,
                "capacity_experts": self.capacity, "policy": getattr(self.policy, "name", "?"),
                "fully_resident": self.fully_resident, **self.stats.as_dict()}
