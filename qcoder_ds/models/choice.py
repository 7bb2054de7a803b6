"""Which embedded model answers when nobody names one.

The 1.5B model is right about twice as often as the 0.5B on everyday notebook requests, so
it is the default; it needs more memory (its export dequantizes 1.5 billion weights), so a
machine with little memory available gets the 0.5B instead, and is told so once. Naming a
model (``--model``, ``%%qcoder --model``) or setting ``QCODER_MODEL`` overrides the choice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

COPILOT_MODEL = "qwen2.5-coder-1.5b-instruct"
SMALL_MODEL = "qwen2.5-coder-0.5b-instruct"
ENV = "QCODER_MODEL"
# the 1.5B's export peaks near 6 GiB (fp32 weights while re-quantizing); running it takes
# about 2 GiB with its prompt caches
MIN_AVAILABLE_GIB = 8.0


@dataclass(frozen=True)
class Choice:
    """The model to use, and why (shown by ``qcoder models list``)."""

    name: str
    why: str


def available_gib() -> float | None:
    """Memory available to new work (MemAvailable), in GiB; None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / (1 << 20)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / (1 << 30)
    except (ValueError, OSError, AttributeError):
        return None


_said = False


def default_model(available: float | None = None) -> Choice:
    """The model for requests that name none: ``QCODER_MODEL``, else by available memory."""
    named = os.environ.get(ENV, "").strip()
    if named:
        return Choice(named, f"set by {ENV}")
    gib = available_gib() if available is None else available
    if gib is None:
        return Choice(COPILOT_MODEL, "the default; available memory unknown")
    if gib >= MIN_AVAILABLE_GIB:
        return Choice(COPILOT_MODEL, f"the default; {gib:.1f} GiB of memory available")
    why = (f"only {gib:.1f} GiB of memory available; {COPILOT_MODEL} wants "
           f"{MIN_AVAILABLE_GIB:g} GiB (name a model with --model or {ENV} to choose)")
    global _said
    if not _said:  # said once per process, not per request
        _said = True
        log.warning("qcoder: using %s: %s", SMALL_MODEL, why)
    return Choice(SMALL_MODEL, why)
