"""`qcoder ask/export/models info` on a Qwen3-MoE model, end to end on a tiny one: one command,
a memory budget, a routing trace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_moe import add_tiny_tokenizer, build_tiny_moe  # noqa: E402

from qcoder_ds.cli import main  # noqa: E402
from qcoder_ds.models.config import ArchConfig  # noqa: E402

#: Qwen3-Coder-30B-A3B-Instruct's config.json (the fields that matter)
QWEN3_CODER_30B = dict(
    model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
    num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
    num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
    max_position_embeddings=262144, rope_theta=10000000.0, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny MoE in a directory named as the hub repository, with a tokenizer."""
    d = tmp_path_factory.mktemp("user") / "Qwen3-Coder-30B-A3B-Instruct"
    build_tiny_moe(d, layers=2, experts=8, top_k=2)
    return add_tiny_tokenizer(d)


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch):
    h = tmp_path_factory.getbasetemp() / "qcoder-home"
    monkeypatch.setenv("QCODER_HOME", str(h))
    monkeypatch.delenv("QCODER_EXPERT_RAM", raising=False)
    monkeypatch.delenv("QCODER_EXPERT_POLICY", raising=False)
    return h


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_info_shows_experts_active_parameters_and_the_budget(model_dir, capsys):
    code, out, _ = run(capsys, "models", "info", str(model_dir), "--expert-ram", "25%")
    assert code == 0
    assert "name: qwen3-coder-30b-a3b-instruct" in out  # the catalogue entry, from a path
    assert "layers_x_experts: 2 x 8 = 16" in out
    assert "routed_per_token: 2 per layer (top-k renormalized)" in out
    assert "budget: --expert-ram 25%: " in out and "4 of 16 experts (25%)" in out
    code, out, _ = run(capsys, "models", "info", str(model_dir), "--json")
    d = json.loads(out)
    assert d["experts"]["minimum_expert_ram"] and d["config"]["num_experts"] == 8


def test_the_real_models_sizes():
    from qcoder_ds.commands.models import describe_experts

    d = describe_experts(ArchConfig.from_hf(QWEN3_CODER_30B), "8GiB")
    assert d["parameters"].startswith("30.53 B (28.99 B in experts)")
    assert d["active_parameters_per_token"].startswith("3.35 B")  # "A3B"
    # as the store writes it: blocks of 64 (2048 and 768 are multiples of 64), zero points
    assert d["expert_bytes_int4"].startswith("2,691,072 per expert")
    # 8 GiB of memory, each resident expert its blob and ~5% more (measured)
    assert d["budget"].endswith("3,040 of 6,144 experts (49%)")


def test_export_then_ask_with_a_budget_and_a_trace(model_dir, capsys, tmp_path):
    from qcoder_ds.runtime.moe_trace import read_trace

    code, out, err = run(capsys, "export", str(model_dir), "--weights", "int4", "--check")
    assert code == 0, err
    export = Path(out.strip().splitlines()[-1])
    assert (export / "experts.bin").is_file() and (export / "layer_1.onnx").is_file()
    assert "check ok" in err
    trace = tmp_path / "route.trace"
    code, out, err = run(capsys, "ask", "print hello", "--model", str(model_dir),
                         "--expert-ram", "25%", "--trace", str(trace), "--max-tokens", "6",
                         "--full")
    assert code == 0, err
    assert out.startswith("```python\n")
    assert "experts: 4 resident at most" in err and "lfu-decay" in err  # the default policy
    t = read_trace(trace)
    assert (t.layers, t.experts, t.top_k) == (2, 8, 2)
    assert len(t.tokens) >= 6  # the prompt's tokens and each generated one
    assert all(len(layer) == 2 and len(set(layer)) == 2 for tok in t.tokens for layer in tok)


def test_a_budget_below_the_minimum_is_one_clear_error(model_dir, capsys):
    code, _, err = run(capsys, "ask", "print hello", "--model", str(model_dir),
                       "--expert-ram", "1%", "--max-tokens", "2")
    assert code == 1
    assert "below the minimum of" in err and "top-2 experts" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "ask", "print hello", "--model", str(model_dir),
                       "--expert-ram", "lots")
    assert code == 1 and "is not a size" in err


def test_the_environment_sets_the_budget_for_every_front_end(model_dir, monkeypatch):
    from qcoder_ds.engine import Engine

    monkeypatch.setenv("QCODER_EXPERT_RAM", "50%")
    monkeypatch.setenv("QCODER_EXPERT_POLICY", "lfu-decay")
    engine = Engine.load(str(model_dir), weights="int4", progress=False)
    stats = engine.session.cache_stats()
    assert stats["capacity_experts"] == 8 and stats["policy"] == "lfu-decay"
    text = "".join(engine.complete("x = ", __import__(
        "qcoder_ds.runtime.sampler", fromlist=["SamplingParams"]).SamplingParams(
        max_new_tokens=4)))
    assert isinstance(text, str)
    engine.session.close()


def test_export_recipe_moe_section(model_dir, capsys, tmp_path):
    good = tmp_path / "moe.toml"
    good.write_text(f'[model]\nsource = "{model_dir}"\n[[export]]\nbackend = "onnx"\n'
                    f'weights = "int4"\n[moe]\nexpert_weights = "int4"\nexpert_ram = "50%"\n'
                    f'policy = "lfu-decay"\nprefetch = true\n')
    code, out, err = run(capsys, "export", "--recipe", str(good), "--check")
    assert code == 0, err
    assert "check ok" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('expert_weights = "int4"', 'expert_weights = "int8"'))
    code, _, err = run(capsys, "export", "--recipe", str(bad))
    assert code == 1 and "expert_weights 'int8' differs" in err
    bad.write_text(good.read_text() + 'cache = "lots"\n')
    code, _, err = run(capsys, "export", "--recipe", str(bad))
    assert code == 1 and "[moe] has unknown keys cache" in err
    code, _, err = run(capsys, "export", str(model_dir), "--check", "--expert-ram", "1%")
    assert code == 1 and "below the minimum" in err


def test_the_shipped_recipe_reads():
    from qcoder_ds.commands.export import read_recipe, recipe_moe

    recipe = Path(__file__).resolve().parents[2] / "export" / "qwen3-coder-30b-a3b.toml"
    source, _, exports = read_recipe(recipe)
    assert source == "qwen3-coder-30b-a3b-instruct" and exports[0]["weights"] == "int4"
    assert recipe_moe(recipe)["expert_ram"] == "8GiB"
