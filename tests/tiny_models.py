"""Tiny random decoders built with transformers (the reference implementation), for parity tests.

Each builder saves a Hugging Face directory (config.json + model.safetensors) and returns
the path; ``reference_logits`` runs transformers on it. torch and transformers are test-only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)


def build_tiny(arch: str, out_dir: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random ``arch`` model ("qwen2", "qwen3", "llama", "qwen3_moe") to out_dir."""
    import torch
    import transformers

    torch.manual_seed(seed)
    kw = {**TINY, **overrides}
    head_dim = kw["hidden_size"] // kw["num_attention_heads"]
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(**kw)
        model = transformers.Qwen2ForCausalLM(cfg)
    elif arch == "qwen3":
        cfg = transformers.Qwen3Config(head_dim=head_dim, **kw)
        model = transformers.Qwen3ForCausalLM(cfg)
    elif arch == "llama":
        cfg = transformers.LlamaConfig(**kw)
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "qwen3_moe":
        kw.setdefault("num_experts", 8)
        kw.setdefault("num_experts_per_tok", 2)
        kw.setdefault("moe_intermediate_size", 32)
        kw.setdefault("norm_topk_prob", True)
        kw.setdefault("decoder_sparse_step", 1)
        cfg = transformers.Qwen3MoeConfig(head_dim=head_dim, **kw)
        model = transformers.Qwen3MoeForCausalLM(cfg)
    else:
        raise ValueError(arch)
    # random init is small; widen it so that logits differ and greedy paths are not trivial
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def reference_logits(model_dir: Path, input_ids: list[int]) -> np.ndarray:
    """Logits for every position, shape [len(input_ids), vocab], from transformers in fp32."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([input_ids]))
    return out.logits[0].numpy()


def reference_greedy(model_dir: Path, input_ids: list[int], steps: int) -> list[int]:
    """Greedy continuation from transformers (no EOS stop), ``steps`` new tokens."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([input_ids]), max_new_tokens=steps, do_sample=False,
            eos_token_id=None, pad_token_id=0, min_new_tokens=steps,
        )
    return out[0, len(input_ids):].tolist()


def build_drafter(target_dir: Path, out_dir: Path, layers: int = 1) -> Path:
    """A smaller drafter for ``target_dir``: its first ``layers`` layers, with the target's
    embeddings, final norm and lm_head (one vocabulary), so that its guesses are often right,
    as a small model of the same family is for a large one."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
