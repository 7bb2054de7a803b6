"""Tiny random Qwen3-MoE models saved as Hugging Face directories, and transformers' answers.

torch and transformers are test-only: the runtime never imports them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models

from tiny_models import build_tiny  # noqa: E402

#: (name, layers, experts, top_k, norm_topk_prob): the shapes the parity tests cover
CONFIGS = {
    "l2-e8-top2-norm": (2, 8, 2, True),
    "l3-e16-top4-raw": (3, 16, 4, False),
    "l4-e16-top4-norm": (4, 16, 4, True),
}


def build_tiny_moe(out_dir: Path, layers: int = 2, experts: int = 8, top_k: int = 2,
                   norm_topk_prob: bool = True, seed: int = 0, **overrides) -> Path:
    """Save a tiny random Qwen3MoeForCausalLM (every layer MoE) to ``out_dir``; ``overrides``
    are further config fields (hidden_size, moe_intermediate_size, ...)."""
    overrides.setdefault("moe_intermediate_size", 32)
    return build_tiny("qwen3_moe", Path(out_dir), seed=seed, num_hidden_layers=layers,
                      num_experts=experts, num_experts_per_tok=top_k,
                      norm_topk_prob=norm_topk_prob, **overrides)


def reference(model_dir: Path, input_ids: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """transformers in fp32: logits [n, vocab] and, per layer, the experts each position is
    routed to ([n, k], as sets: sorted)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    k = model.config.num_experts_per_tok
    with torch.no_grad():
        out = model(torch.tensor([input_ids]), output_router_logits=True)
    experts = []
    for logits in out.router_logits:
        probs = torch.softmax(logits.reshape(len(input_ids), -1).float(), dim=-1)
        experts.append(np.sort(torch.topk(probs, k, dim=-1).indices.numpy(), axis=-1))
    return out.logits[0].numpy(), experts


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def add_tiny_tokenizer(model_dir: Path) -> Path:
    """A byte-level tokenizer of 256 bytes + 3 ChatML specials (ids < 512, the tiny vocab),
    with a ChatML template: enough for the command line to run a tiny model end to end."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    model_dir = Path(model_dir)
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": CHATML}))
    return model_dir
