"""Frozen configurations: the only static arguments of specjax's jitted functions.

Dimension letters used across the package:
  B batch, T new (query) tokens, S cache slots, N tree nodes, D model width,
  E embedding width (OPT's word_embed_proj_dim), F MLP hidden, H query heads,
  K kv heads, G = H // K query heads per kv head, A head dim, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


class ConfigError(ValueError):
    """A configuration that specjax cannot run faithfully."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding. `kind` is 'default', 'linear' or 'llama3'."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer of the LLaMA / Mistral / Qwen2 / OPT families.

    family: 'llama' (LLaMA 1/2/3, Mistral, Qwen2: RMSNorm, RoPE, gated SiLU MLP) or 'opt'
    (LayerNorm, learned positions with offset 2, plain MLP, optional project_in/out, pre- or
    post-norm).
    """

    family: str
    vocab_size: int  # V
    hidden_size: int  # D
    intermediate_size: int  # F
    num_layers: int  # L
    num_heads: int  # H
    num_kv_heads: int  # K
    head_dim: int  # A
    max_position_embeddings: int
    norm_eps: float = 1e-6
    activation: str = "silu"  # silu | relu | gelu | gelu_new
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    rope: RopeConfig | None = dataclasses.field(default_factory=RopeConfig)
    # OPT only.
    pre_norm: bool = True  # do_layer_norm_before
    final_norm: bool = True  # OPT-350m (post-norm) has no final layer norm
    embed_dim: int | None = None  # E: word_embed_proj_dim when != hidden_size (project_in/out)
    position_offset: int = 0  # OPT's learned positions are offset by 2
    # Mistral: attention window; None = full attention.
    sliding_window: int | None = None
    # Token ids.
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.family not in ("llama", "opt"):
            raise ConfigError(f"unknown model family {self.family!r} (expected 'llama' or 'opt')")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.activation not in ("silu", "relu", "gelu", "gelu_new"):
            raise ConfigError(f"unsupported activation {self.activation!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def uses_rope(self) -> bool:
        return self.family == "llama"

    @property
    def projects_embeddings(self) -> bool:
        return self.embed_dim is not None and self.embed_dim != self.hidden_size

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown specjax config field(s): {', '.join(unknown)}")
        if d.get("rope") is not None:
            d["rope"] = RopeConfig(**d["rope"])
        d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))
