import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The real-model tests check the pipeline, not the model: they run the 0.5B, whose export
# takes a few minutes on two cores where the 1.5B default's takes about twenty. The choice
# of default itself is tested in test_model_choice.py.
os.environ.setdefault("QCODER_MODEL", "qwen2.5-coder-0.5b-instruct")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this checkout")
    return SHARED


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A factory: tiny_dir(arch) -> a saved tiny random HF model directory (built once per arch)."""
    from tiny_models import build_tiny

    cache: dict = {}

    def make(arch: str, **overrides):
        key = (arch, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = build_tiny(arch, tmp_path_factory.mktemp(f"tiny-{arch}"), **overrides)
        return cache[key]

    return make
