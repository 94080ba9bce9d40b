"""GGUF (llama.cpp) files of the llama architecture -> specjax.

Tensors are dequantized to float32 with `gguf.quants.dequantize`. llama.cpp stores attn_q / attn_k rows
interleaved for its rope layout; `rope_unpermute` undoes that exactly as transformers' GGUF loader
(`LlamaTensorProcessor._reverse_permute_weights`). The tokenizer is rebuilt by transformers
(`AutoTokenizer.from_pretrained(dir, gguf_file=name)`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gguf as gguflib
import numpy as np

from checkpoints_convert.table import TRANSPOSE, Entry, Hook, heads_in, heads_out, import_tensors
from specjax.checkpoint import CheckpointError, expected_shapes
from specjax.config import ConfigError, ModelConfig, RopeConfig
from specjax.model import rope_inv_freq

Q = gguflib.GGMLQuantizationType
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
                             Q.Q4_K, Q.Q5_K, Q.Q6_K})

# llama.* metadata keys this converter reads; any other llama.* key raises ConfigError.
_LLAMA_KEYS = frozenset({
    "context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.dimension_count",
    "vocab_size", "attention.key_length", "attention.value_length", "rope.scaling.type", "rope.scaling.factor",
    "rope.scaling.original_context_length", "rope.scaling.finetuned",
})
# Metadata namespaces that do not change the model (the tokenizer is rebuilt by transformers).
_HARMLESS_PREFIXES = ("GGUF.", "general.", "tokenizer.", "quantize.")


def rope_unpermute(n: int) -> Hook:
    """llama.cpp's interleaved rope rows [n*A, D] <-> Hugging Face's rotate-half rows, per head."""
    return Hook(lambda x: x.reshape(n, x.shape[0] // n // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape),
                lambda y: y.reshape(n, 2, y.shape[0] // n // 2, *y.shape[1:]).swapaxes(1, 2).reshape(y.shape))


def gguf_table(cfg: ModelConfig) -> list[Entry]:
    """specjax path <-> GGUF tensor name (llama.cpp's llama naming); hooks take GGUF rows to specjax."""
    H, K = cfg.num_heads, cfg.num_kv_heads
    t = [Entry("embed", "token_embd.weight"), Entry("final_norm.scale", "output_norm.weight")]
    for l in range(cfg.num_layers):
        p, n = f"layers.{l}.", f"blk.{l}."
        t += [Entry(p + "attn_norm.scale", n + "attn_norm.weight"),
              Entry(p + "mlp_norm.scale", n + "ffn_norm.weight"),
              Entry(p + "q", n + "attn_q.weight", rope_unpermute(H).then(heads_in(H))),
              Entry(p + "k", n + "attn_k.weight", rope_unpermute(K).then(heads_in(K))),
              Entry(p + "v", n + "attn_v.weight", heads_in(K)),
              Entry(p + "o", n + "attn_output.weight", heads_out(H)),
              Entry(p + "gate", n + "ffn_gate.weight", TRANSPOSE),
              Entry(p + "up", n + "ffn_up.weight", TRANSPOSE),
              Entry(p + "down", n + "ffn_down.weight", TRANSPOSE)]
    if not cfg.tie_word_embeddings:
        t.append(Entry("lm_head", "output.weight", TRANSPOSE))
    return t


def open_gguf(path: str | os.PathLike) -> gguflib.GGUFReader:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file not found")
    try:
        return gguflib.GGUFReader(str(path))
    except Exception as e:  # truncated files fail in numpy reshapes / index errors inside the reader
        raise CheckpointError(f"{path}: cannot read GGUF file, truncated or corrupt? ({type(e).__name__}: {e})") from e


def _value(reader: gguflib.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _llama3_rope(freqs: np.ndarray, theta: float, head_dim: int, original: int, where: str) -> RopeConfig:
    """llama.cpp stores llama3 rope scaling as per-frequency divisors (rope_freqs.weight [A/2]).
    Recover the RopeConfig whose inverse frequencies they reproduce, or refuse."""
    base = rope_inv_freq(RopeConfig(theta=theta), head_dim)
    rope = RopeConfig(theta=theta, kind="llama3", factor=float(freqs.max()), low_freq_factor=1.0,
                      high_freq_factor=4.0, original_max_position_embeddings=original)
    if freqs.shape != base.shape or not np.allclose(rope_inv_freq(rope, head_dim), base / freqs, rtol=1e-5):
        raise ConfigError(f"{where}: rope_freqs.weight does not match llama3 rope scaling (factor="
                          f"{rope.factor}, low_freq_factor=1, high_freq_factor=4, original={original})")
    return rope


def read_gguf_config(reader: gguflib.GGUFReader, where: str) -> ModelConfig:
    arch = _value(reader, "general.architecture")
    if arch != "llama":
        raise ConfigError(f"{where}: unsupported general.architecture={arch!r} (supported: 'llama')")
    if (_value(reader, "split.count", 1) or 1) > 1:
        raise ConfigError(f"{where}: split GGUF files (split.count={_value(reader, 'split.count')}) are not "
                          "supported; merge them with llama.cpp's gguf-split --merge first")
    unknown = sorted(k for k in reader.fields if not k.startswith(_HARMLESS_PREFIXES + ("split.",))
                     and not (k.startswith("llama.") and k[len("llama."):] in _LLAMA_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unsupported GGUF metadata: "
                          + ", ".join(f"{k}={_value(reader, k)!r}" for k in unknown))

    def need(key: str) -> Any:
        v = _value(reader, "llama." + key)
        if v is None:
            raise ConfigError(f"{where}: required metadata llama.{key} is missing")
        if isinstance(v, list):
            if len(set(v)) != 1:
                raise ConfigError(f"{where}: per-layer llama.{key}={v} is not supported")
            v = v[0]
        return v

    D, H = int(need("embedding_length")), int(need("attention.head_count"))
    K = int(_value(reader, "llama.attention.head_count_kv") or H)
    A = int(_value(reader, "llama.attention.key_length") or _value(reader, "llama.rope.dimension_count") or D // H)
    for key in ("attention.value_length", "rope.dimension_count"):
        v = _value(reader, "llama." + key)
        if v is not None and int(v) != A:
            raise ConfigError(f"{where}: llama.{key}={v} differs from head_dim {A} (partial rotary / "
                              "asymmetric heads are not supported)")
    names = {t.name: t for t in reader.tensors}
    vocab = _value(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields \
            else int(names["token_embd.weight"].shape[-1])

    theta = float(_value(reader, "llama.rope.freq_base", 10000.0))
    scaling = _value(reader, "llama.rope.scaling.type", "none")
    if scaling == "linear":
        rope = RopeConfig(theta=theta, kind="linear", factor=float(need("rope.scaling.factor")))
    elif scaling == "none":
        rope = RopeConfig(theta=theta)
    else:
        raise ConfigError(f"{where}: unsupported llama.rope.scaling.type={scaling!r} (supported: none, linear)")
    if "rope_freqs.weight" in names:
        if scaling != "none":
            raise ConfigError(f"{where}: rope_freqs.weight together with llama.rope.scaling.type={scaling!r}")
        freqs = np.asarray(gguflib.quants.dequantize(names["rope_freqs.weight"].data,
                                                     names["rope_freqs.weight"].tensor_type), np.float32).ravel()
        rope = _llama3_rope(freqs, theta, A, int(_value(reader, "llama.rope.scaling.original_context_length", 8192)),
                            where)

    eos = [int(_value(reader, "tokenizer.ggml.eos_token_id"))] if "tokenizer.ggml.eos_token_id" in reader.fields else []
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):  # end of turn / message
        tok = _value(reader, key)
        if tok is not None and int(tok) not in eos:
            eos.append(int(tok))
    bos, pad = _value(reader, "tokenizer.ggml.bos_token_id"), _value(reader, "tokenizer.ggml.padding_token_id")
    return ModelConfig(
        family="llama", vocab_size=int(vocab), hidden_size=D, intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")), num_heads=H, num_kv_heads=K, head_dim=A,
        max_position_embeddings=int(need("context_length")),
        norm_eps=float(need("attention.layer_norm_rms_epsilon")), activation="silu",
        tie_word_embeddings="output.weight" not in names, rope=rope,
        bos_token_id=None if bos is None else int(bos), eos_token_ids=tuple(eos),
        pad_token_id=None if pad is None else int(pad))


def read_gguf(path: str | os.PathLike, progress: bool | None = None) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """A llama-architecture .gguf file -> ({specjax flat path: float32 array}, cfg)."""
    reader = open_gguf(path)
    cfg = read_gguf_config(reader, str(path))
    tensors = {t.name: t for t in reader.tensors}
    unsupported = [f"{t.name} ({t.tensor_type.name})" for t in reader.tensors if t.tensor_type not in SUPPORTED_TYPES]
    if unsupported:
        raise CheckpointError(f"{path}: unsupported GGUF tensor type(s): {', '.join(unsupported)} (supported: "
                              f"{', '.join(sorted(q.name for q in SUPPORTED_TYPES))})")
    shapes = {n: tuple(int(d) for d in reversed(t.shape)) for n, t in tensors.items()}  # numpy order

    def read(name: str) -> np.ndarray:
        t = tensors[name]
        try:
            x = gguflib.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot dequantize {name} ({t.tensor_type.name}): {e}") from e
        return np.asarray(x, np.float32).reshape(shapes[name])

    flat = import_tensors(gguf_table(cfg), expected_shapes(cfg), shapes, read, str(path),
                          ignorable=["rope_freqs.weight"], progress=progress)
    return flat, cfg


def gguf_tokenizer(path: str | os.PathLike):
    """The Hugging Face tokenizer transformers builds from the GGUF's metadata, or None if it has none.
    Raises CheckpointError if the GGUF's chat template does not survive."""
    path = Path(path)
    reader = open_gguf(path)
    if "tokenizer.ggml.model" not in reader.fields:
        return None
    from specjax.tokenizer import TokenizerError, require_gguf_tokenizer_support

    try:
        require_gguf_tokenizer_support(path)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:  # transformers' GGUF reader imports torch
        raise CheckpointError(
            f"{path}: building the tokenizer from a GGUF uses transformers' GGUF support, which needs "
            f"torch ({e}); install torch (its CPU build is enough) or convert on a machine that has it") from e
    template = _value(reader, "tokenizer.chat_template")
    if template is not None and tok.chat_template != template:
        raise CheckpointError(f"{path}: the chat template was lost when building the tokenizer")
    return tok
