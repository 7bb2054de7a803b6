"""The default model: the 1.5B where memory allows, the 0.5B where it is short (said once),
whatever QCODER_MODEL or --model names otherwise."""

import logging

import pytest

from qcoder_ds.models import choice
from qcoder_ds.models.catalogue import CATALOGUE


@pytest.fixture
def unset(monkeypatch):
    monkeypatch.delenv("QCODER_MODEL", raising=False)
    monkeypatch.setattr(choice, "_said", False)


@pytest.mark.parametrize("gib, name", [
    (64.0, "qwen2.5-coder-1.5b-instruct"),
    (8.0, "qwen2.5-coder-1.5b-instruct"),
    (7.9, "qwen2.5-coder-0.5b-instruct"),
    (2.0, "qwen2.5-coder-0.5b-instruct"),
])
def test_chosen_by_available_memory(unset, gib, name):
    c = choice.default_model(available=gib)
    assert c.name == name and f"{gib:.1f} GiB" in c.why
    assert name in CATALOGUE and CATALOGUE[name].parts  # both are installed with the package


def test_the_small_model_is_said_once(unset, caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            choice.default_model(available=4.0)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1
    assert "using qwen2.5-coder-0.5b-instruct: only 4.0 GiB" in said[0]
    assert "--model" in said[0] and "QCODER_MODEL" in said[0]


def test_the_environment_overrides_the_choice(unset, monkeypatch):
    monkeypatch.setenv("QCODER_MODEL", "qwen2.5-coder-0.5b-instruct")
    assert choice.default_model(available=64.0) == choice.Choice(
        "qwen2.5-coder-0.5b-instruct", "set by QCODER_MODEL")


def test_available_memory_is_read():
    gib = choice.available_gib()
    assert gib is not None and 0 < gib < 1 << 20


def test_the_magic_uses_the_choice_once_per_kernel(unset, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from qcoder_ds.magics import QcoderMagics

    magics = QcoderMagics(InteractiveShell.instance())
    monkeypatch.setattr(choice, "available_gib", lambda: 3.0)
    assert magics._key(None)[0] == "qwen2.5-coder-0.5b-instruct"
    monkeypatch.setattr(choice, "available_gib", lambda: 30.0)  # memory freed later: no switch
    assert magics._key(None)[0] == "qwen2.5-coder-0.5b-instruct"
    assert magics._key("qwen2.5-coder-1.5b-instruct")[0] == "qwen2.5-coder-1.5b-instruct"
