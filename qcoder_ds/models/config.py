"""The architecture of a decoder, independent of where its weights come from."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qcoder_ds.errors import ModelError

SUPPORTED_ARCHS = ("qwen2", "qwen3", "llama", "qwen3_moe")


@dataclass(frozen=True)
class ArchConfig:
    """Everything the graph builders need to know about a decoder-only transformer.

    Weights are named as Hugging Face names them (``model.layers.0.self_attn.q_proj.weight``),
    whatever the source, so one builder serves GGUF and safetensors alike.
    """

    arch: str  # one of SUPPORTED_ARCHS
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    # Mixture of experts (qwen3_moe); zero for dense models.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_hf(cls, cfg: dict) -> ArchConfig:
        """Read a Hugging Face ``config.json`` dict."""
        model_type = cfg.get("model_type", "")
        if model_type not in SUPPORTED_ARCHS:
            raise ModelError(
                f"unsupported architecture {model_type!r}: qcoder-ds runs "
                f"{', '.join(SUPPORTED_ARCHS)} decoders"
            )
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        return cls(
            arch=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            intermediate_size=cfg.get("intermediate_size", 0),
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(
                cfg.get("rope_theta")
                or (cfg.get("rope_parameters") or {}).get("rope_theta")
                or 10000.0
            ),
            max_position_embeddings=cfg.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            qk_norm=model_type in ("qwen3", "qwen3_moe"),
            num_experts=cfg.get("num_experts") or cfg.get("num_local_experts") or 0,
            num_experts_per_tok=cfg.get("num_experts_per_tok", 0) or 0,
            moe_intermediate_size=cfg.get("moe_intermediate_size", 0) or 0,
            norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        )
