"""Hugging Face config.json <-> ModelConfig, for model_type llama, mistral, qwen2 and opt.

Strict by design: every attribute is either understood (and mapped, or rejected when its value changes
the math in a way specjax does not implement) or on a list of attributes known not to change the
logits (dropout, init, bookkeeping, generation defaults). Anything else raises ConfigError naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from specjax.config import ConfigError, ModelConfig, RopeConfig

MODEL_TYPES = ("llama", "mistral", "qwen2", "opt")

# Attributes real checkpoints carry that do not change the forward pass (values ignored).
HARMLESS = frozenset({
    # bookkeeping
    "architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "_commit_hash",
    "_attn_implementation", "_attn_implementation_autoset", "_attn_implementation_internal",
    "attn_implementation", "_from_model_config", "tokenizer_class", "prefix", "model_max_length",
    "use_bfloat16", "torchscript", "return_dict", "use_return_dict", "output_attentions",
    "output_hidden_states", "gradient_checkpointing", "pruned_heads", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "add_cross_attention", "tie_encoder_decoder",
    "cross_attention_hidden_size", "tf_legacy_loss", "finetuning_task", "task_specific_params",
    "id2label", "label2id", "num_labels", "problem_type", "use_cache",
    # training only
    "initializer_range", "init_std", "initializer_factor", "dropout", "attention_dropout",
    "activation_dropout", "hidden_dropout", "embd_pdrop", "resid_pdrop", "attn_pdrop", "layerdrop",
    "classifier_dropout",
    # token ids that do not reach the model (bos/eos/pad are read)
    "unk_token_id", "sep_token_id", "cls_token_id", "mask_token_id", "decoder_start_token_id",
    # generation defaults stored in old config.json files
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens",
})

# hidden_act values (transformers' ACT2FN names) -> ModelConfig.activation.
ACTIVATIONS = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu",
               "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new"}
_ACTIVATIONS_BACK = {"silu": "silu", "relu": "relu", "gelu": "gelu", "gelu_new": "gelu_new"}

# Keys of a rope dict ('rope_parameters', or old 'rope_scaling') each rope type understands.
_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}

_REQUIRED = object()


class _Fields:
    """Reads attributes of a config dict, remembering which ones were looked at."""

    def __init__(self, d: dict[str, Any], where: str):
        self.d, self.where, self.used = d, where, {"model_type"}

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        """d[key] when present (even null), else default; required (no default) means present, not null."""
        self.used.add(key)
        if key in self.d and not (self.d[key] is None and default is _REQUIRED):
            return self.d[key]
        if default is _REQUIRED:
            raise ConfigError(f"{self.where}: required attribute {key!r} is missing")
        return default

    def reject(self, key: str, value: Any, why: str) -> None:
        raise ConfigError(f"{self.where}: unsupported {key}={value!r}: {why}")

    def finish(self, harmless: frozenset[str] = frozenset()) -> None:
        unknown = sorted(set(self.d) - self.used - HARMLESS - harmless)
        if unknown:
            listed = ", ".join(f"{k}={self.d[k]!r}" for k in unknown)
            raise ConfigError(
                f"{self.where}: unsupported attribute(s) for model_type {self.d.get('model_type')!r}: {listed} "
                "(specjax cannot tell whether they change the model; only known-harmless attributes are ignored)")


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def _rope(f: _Fields) -> RopeConfig:
    """Old (rope_theta + rope_scaling) and transformers-5 (rope_parameters) forms."""
    f.used.update({"rope_theta", "rope_scaling", "rope_parameters"})
    if f.d.get("rope_parameters") is not None:
        field, rope = "rope_parameters", dict(f.d["rope_parameters"])
    else:
        field, rope = "rope_scaling", dict(f.d.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", f.d.get("rope_theta", 10000.0))
    kind = rope.pop("rope_type", None) or rope.pop("type", None) or "default"  # 'type': transformers < 4.45
    rope.pop("type", None)
    if kind not in _ROPE_KEYS:
        raise ConfigError(f"{f.where}: unsupported {field}.rope_type={kind!r} "
                          f"(supported: {', '.join(_ROPE_KEYS)})")
    unknown = sorted(set(rope) - set(_ROPE_KEYS[kind]))
    if unknown:
        raise ConfigError(f"{f.where}: unsupported {field} attribute(s) for rope_type {kind!r}: "
                          + ", ".join(f"{k}={rope[k]!r}" for k in unknown))
    missing = [k for k in _ROPE_KEYS[kind] if k not in rope]
    if missing:
        raise ConfigError(f"{f.where}: {field} with rope_type {kind!r} needs {', '.join(missing)}")
    return RopeConfig(theta=float(theta), kind=kind, **{k: (int(v) if k.startswith("original") else float(v))
                                                         for k, v in rope.items()})


def from_hf_config(d: dict[str, Any], generation_config: dict[str, Any] | None = None,
                   where: str = "config.json") -> ModelConfig:
    """A Hugging Face config dict (plus optional generation_config dict) -> ModelConfig."""
    model_type = d.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{where}: unsupported model_type={model_type!r} (supported: {', '.join(MODEL_TYPES)})")
    f = _Fields(d, where)
    f.used.update({"bos_token_id", "eos_token_id", "pad_token_id"})
    cfg = _opt(f) if model_type == "opt" else _llama_family(f, model_type)
    # Token ids, with the defaults of each transformers config class.
    bos, eos, pad = {"llama": (1, 2, None), "mistral": (1, 2, None), "qwen2": (None, None, None),
                     "opt": (2, 2, 1)}[model_type]
    eos_ids = list(_token_ids(f.get("eos_token_id", eos)))
    for tok in _token_ids((generation_config or {}).get("eos_token_id")):
        if tok not in eos_ids:
            eos_ids.append(tok)
    return dataclasses.replace(cfg, bos_token_id=f.get("bos_token_id", bos), eos_token_ids=tuple(eos_ids),
                               pad_token_id=f.get("pad_token_id", pad))


def _activation(f: _Fields, key: str, default: str) -> str:
    act = f.get(key, default)
    if act not in ACTIVATIONS:
        f.reject(key, act, f"supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def _llama_family(f: _Fields, model_type: str) -> ModelConfig:
    D, H = f.get("hidden_size"), f.get("num_attention_heads")
    K = f.get("num_key_value_heads", None) or H
    A = f.get("head_dim", None) or D // H
    qkv_bias = o_bias = mlp_bias = False
    sliding_window = None
    extra_harmless: frozenset[str] = frozenset()
    if model_type == "llama":
        qkv_bias = o_bias = bool(f.get("attention_bias", False))
        mlp_bias = bool(f.get("mlp_bias", False))
        # pretraining_tp: transformers 5 ignores it (same math); is_llama_config: a nanotron export marker.
        extra_harmless = frozenset({"pretraining_tp", "is_llama_config"})
        if f.get("rope_interleaved", False):  # nanotron exports (SmolLM2) write rope_interleaved=false
            f.reject("rope_interleaved", True, "interleaved rope is not the Hugging Face llama rope layout")
        max_pos = f.get("max_position_embeddings", 2048)
    elif model_type == "mistral":
        sliding_window = f.get("sliding_window", 4096)  # null: full attention
        max_pos = f.get("max_position_embeddings", 4096 * 32)
    else:  # qwen2
        qkv_bias = True
        if f.get("use_sliding_window", False):
            f.reject("use_sliding_window", True, "Qwen2 sliding-window layers are not implemented")
        layer_types = f.get("layer_types", None)
        if layer_types is not None and any(t != "full_attention" for t in layer_types):
            f.reject("layer_types", layer_types, "only 'full_attention' layers are implemented")
        f.used.update({"sliding_window", "max_window_layers"})  # unused without use_sliding_window
        max_pos = f.get("max_position_embeddings", 32768)
    cfg = ModelConfig(
        family="llama", vocab_size=f.get("vocab_size"), hidden_size=D,
        intermediate_size=f.get("intermediate_size"), num_layers=f.get("num_hidden_layers"), num_heads=H,
        num_kv_heads=K, head_dim=A, max_position_embeddings=max_pos, norm_eps=float(f.get("rms_norm_eps", 1e-6)),
        activation=_activation(f, "hidden_act", "silu"),
        tie_word_embeddings=bool(f.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias, rope=_rope(f), sliding_window=sliding_window)
    f.finish(extra_harmless)
    return cfg


def _opt(f: _Fields) -> ModelConfig:
    D, H = f.get("hidden_size"), f.get("num_attention_heads")
    if D % H:
        raise ConfigError(f"{f.where}: hidden_size={D} is not a multiple of num_attention_heads={H}")
    if not f.get("layer_norm_elementwise_affine", True):
        f.reject("layer_norm_elementwise_affine", False, "layer norms without scale and bias are not implemented")
    pre_norm = bool(f.get("do_layer_norm_before", True))
    remove_final = bool(f.get("_remove_final_layer_norm", False))
    E = f.get("word_embed_proj_dim", None) or D
    bias = bool(f.get("enable_bias", True))
    cfg = ModelConfig(
        family="opt", vocab_size=f.get("vocab_size"), hidden_size=D, intermediate_size=f.get("ffn_dim"),
        num_layers=f.get("num_hidden_layers"), num_heads=H, num_kv_heads=H, head_dim=D // H,
        max_position_embeddings=f.get("max_position_embeddings", 2048), norm_eps=1e-5,
        activation=_activation(f, "activation_function", "relu"),
        tie_word_embeddings=bool(f.get("tie_word_embeddings", True)),
        qkv_bias=bias, o_bias=bias, mlp_bias=bias, rope=None, pre_norm=pre_norm,
        final_norm=pre_norm and not remove_final,  # as OPTDecoder builds its final_layer_norm
        embed_dim=E if E != D else None, position_offset=2)
    f.finish()
    return cfg


# ----------------------------------------------------------------------------- export


def hf_model_type(cfg: ModelConfig) -> str:
    """The Hugging Face model_type that computes exactly cfg's model."""
    if cfg.family == "opt":
        return "opt"
    if cfg.sliding_window is not None:
        if cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias:
            raise ConfigError("no Hugging Face model_type has both sliding_window and biases")
        return "mistral"
    if cfg.qkv_bias and not cfg.o_bias and not cfg.mlp_bias:
        return "qwen2"
    if cfg.qkv_bias != cfg.o_bias:
        raise ConfigError(f"no Hugging Face model_type has qkv_bias={cfg.qkv_bias} with o_bias={cfg.o_bias} "
                          f"and mlp_bias={cfg.mlp_bias}")
    return "llama"


def _rope_back(rope: RopeConfig) -> dict[str, Any]:
    """Old-style keys (rope_theta + rope_scaling): read by transformers 4.x and 5."""
    out: dict[str, Any] = {"rope_theta": rope.theta, "rope_scaling": None}
    if rope.kind != "default":
        out["rope_scaling"] = {"rope_type": rope.kind,
                               **{k: getattr(rope, k) for k in _ROPE_KEYS[rope.kind]}}
    return out


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """ModelConfig -> a Hugging Face config dict that `AutoModelForCausalLM` builds the same model from."""
    model_type = hf_model_type(cfg)
    if cfg.activation not in _ACTIVATIONS_BACK:
        raise ConfigError(f"activation {cfg.activation!r} has no Hugging Face name")
    eos = list(cfg.eos_token_ids)
    common = {
        "model_type": model_type, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "max_position_embeddings": cfg.max_position_embeddings, "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": cfg.pad_token_id, "torch_dtype": "float32",
    }
    if model_type == "opt":
        if cfg.num_kv_heads != cfg.num_heads or cfg.head_dim * cfg.num_heads != cfg.hidden_size:
            raise ConfigError("OPT needs num_kv_heads == num_heads and head_dim * num_heads == hidden_size")
        if not (cfg.qkv_bias == cfg.o_bias == cfg.mlp_bias):
            raise ConfigError("OPT's enable_bias sets qkv_bias, o_bias and mlp_bias together")
        if cfg.norm_eps != 1e-5 or cfg.position_offset != 2:
            raise ConfigError("OPT has norm_eps 1e-5 and position_offset 2")
        if not cfg.pre_norm and cfg.final_norm:
            raise ConfigError("post-norm OPT (do_layer_norm_before=False) has no final layer norm")
        return {**common, "architectures": ["OPTForCausalLM"], "ffn_dim": cfg.intermediate_size,
                "activation_function": _ACTIVATIONS_BACK[cfg.activation],
                "do_layer_norm_before": cfg.pre_norm,
                "_remove_final_layer_norm": cfg.pre_norm and not cfg.final_norm,
                "word_embed_proj_dim": cfg.embed_dim if cfg.projects_embeddings else cfg.hidden_size,
                "enable_bias": cfg.qkv_bias, "layer_norm_elementwise_affine": True}
    if cfg.projects_embeddings or not cfg.pre_norm or not cfg.final_norm or cfg.position_offset:
        raise ConfigError("llama-family models have no project_in/out, post-norm or learned positions")
    out = {**common, "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                                        "qwen2": "Qwen2ForCausalLM"}[model_type]],
           "intermediate_size": cfg.intermediate_size, "num_key_value_heads": cfg.num_kv_heads,
           "head_dim": cfg.head_dim, "hidden_act": _ACTIVATIONS_BACK[cfg.activation],
           "rms_norm_eps": cfg.norm_eps, **_rope_back(cfg.rope or RopeConfig())}
    if model_type == "llama":
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    elif model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    else:
        out.update(use_sliding_window=False, sliding_window=None)
    return out
