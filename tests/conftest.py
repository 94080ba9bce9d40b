"""Session fixtures: tiny random Hugging Face models of each supported family, saved once per session.

Weights are drawn with std 0.2 (biases and norm scales too, so a mis-mapped bias or norm shows up) to
make attention peaky enough that RoPE and masking mistakes change the logits well above 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

VOCAB, HIDDEN, LAYERS, FFN = 101, 64, 2, 96


@pytest.fixture(scope="session", autouse=True)
def autotune_cache(tmp_path_factory):
    """The automatic tree choice caches its cost measurements here, not in the user's cache."""
    import os

    path = tmp_path_factory.mktemp("autotune")
    old = os.environ.get("SPECJAX_AUTOTUNE_DIR")
    os.environ["SPECJAX_AUTOTUNE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SPECJAX_AUTOTUNE_DIR", None)
    else:
        os.environ["SPECJAX_AUTOTUNE_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def compile_cache_dir(tmp_path_factory):
    """The command line's persistent compilation cache (specjax.compile_cache) goes here, not into the
    user's cache."""
    import os

    from specjax import compile_cache

    path = tmp_path_factory.mktemp("xla")
    old = os.environ.get(compile_cache.ENV)
    os.environ[compile_cache.ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(compile_cache.ENV, None)
    else:
        os.environ[compile_cache.ENV] = old

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}

# name -> (transformers config class name, config kwargs)
FAMILIES = {
    "llama_gqa_llama3": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2,
                                             rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False)),
    "llama_tied_bias": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4, head_dim=32,
                                            attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=4096,
                                      rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})),
    "qwen2": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "opt_prenorm": ("OPTConfig", dict(num_attention_heads=4, do_layer_norm_before=True, enable_bias=False)),
    "opt_postnorm": ("OPTConfig", dict(num_attention_heads=4, do_layer_norm_before=False, word_embed_proj_dim=32,
                                       tie_word_embeddings=False)),
}


def build_hf_model(name: str, seed: int = 0):
    """A tiny random `*ForCausalLM` (fp32, eval mode) of family `name`."""
    import torch
    import transformers

    cls_name, kwargs = FAMILIES[name]
    size = dict(ffn_dim=FFN) if cls_name == "OPTConfig" else dict(intermediate_size=FFN)
    config = getattr(transformers, cls_name)(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                             max_position_embeddings=128, **size, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            is_norm_scale = p.ndim == 1 and pname.endswith("weight")
            p.copy_((1.0 if is_norm_scale else 0.0) + 0.2 * torch.randn(p.shape))
    return model


def tiny_tokenizer(chat_template: str | None):
    """A word-level tokenizer over VOCAB tokens (ids 0..3 special)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(VOCAB - 4)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


CHAT_TEMPLATE = "{% for m in messages %}w1 {{ m['content'] }} w2 {% endfor %}{% if add_generation_prompt %}w3{% endif %}"


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """name -> directory of the saved tiny HF model (config.json + model.safetensors)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name in FAMILIES:
        build_hf_model(name).save_pretrained(root / name)
        out[name] = root / name
    # Two tokenizers: one with a chat template, one without.
    tiny_tokenizer(CHAT_TEMPLATE).save_pretrained(out["llama_gqa_llama3"])
    tiny_tokenizer(None).save_pretrained(out["qwen2"])
    return out


@pytest.fixture(scope="session")
def hf_models(hf_dirs):
    """name -> the saved model loaded back by transformers (fp32, eval): the reference."""
    from transformers import AutoModelForCausalLM

    return {name: AutoModelForCausalLM.from_pretrained(d).eval() for name, d in hf_dirs.items()}


@pytest.fixture(scope="session")
def converted(hf_dirs, tmp_path_factory) -> dict[str, Path]:
    """name -> specjax checkpoint converted from hf_dirs[name]."""
    from checkpoints_convert import convert

    root = tmp_path_factory.mktemp("specjax")
    return {name: convert(d, root / name) for name, d in hf_dirs.items()}


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


# ----------------------------------------------------------------------------- GGUF


GGUF_TYPES = {  # tensor kind -> GGML type, so one tiny file exercises several dequantizers
    "token_embd": "Q8_0", "output": "Q8_0", "attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "F16",
    "attn_output": "BF16", "ffn_gate": "Q8_0", "ffn_up": "Q4_1", "ffn_down": "F16",
}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half rows -> interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, path: Path, quantize: bool, rope_freqs: bool) -> Path:
    """Writes a tiny HF LlamaForCausalLM as llama.cpp would (names, q/k permutation, metadata).

    quantize: use GGUF_TYPES (else all F32). rope_freqs: store the llama3 rope scaling as llama.cpp does
    (a rope_freqs.weight tensor of per-frequency divisors); else no rope scaling metadata at all."""
    import math

    import gguf

    c = model.config
    H, K, A = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    rope = c.rope_parameters
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(A)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(1)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    hf_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down"}
    for l in range(c.num_hidden_layers):
        for hf, gg in hf_layer.items():
            names[f"model.layers.{l}.{hf}.weight"] = f"blk.{l}.{gg}.weight"
    for hf_name, x in sd.items():
        name = names[hf_name]
        if ".attn_q." in name:
            x = llama_cpp_permute(x, H)
        elif ".attn_k." in name:
            x = llama_cpp_permute(x, K)
        kind = name.split(".")[-2]
        qtype = gguf.GGMLQuantizationType[GGUF_TYPES.get(kind, "F32") if quantize and x.ndim == 2 else "F32"]
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, np.ascontiguousarray(x, np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    if rope_freqs:
        assert rope["rope_type"] == "llama3"
        w.add_uint32("llama.rope.scaling.original_context_length", rope["original_max_position_embeddings"])
        factors = []  # llama.cpp LlamaModel.generate_extra_tensors
        low_wavelen = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
        high_wavelen = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
        for i in range(0, A, 2):
            wavelen = 2 * math.pi / (1.0 / rope["rope_theta"] ** (i / A))
            if wavelen < high_wavelen:
                factors.append(1.0)
            elif wavelen > low_wavelen:
                factors.append(rope["factor"])
            else:
                smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / (
                    rope["high_freq_factor"] - rope["low_freq_factor"])
                factors.append(1 / ((1 - smooth) / rope["factor"] + smooth))
        w.add_tensor("rope_freqs.weight", np.asarray(factors, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def gguf_files(hf_models, tmp_path_factory) -> dict[str, Path]:
    """'quantized': mixed-type GGUF of the llama3 tiny model written with default rope (what transformers'
    GGUF loader reads too); 'llama3': all-F32 GGUF of the same model with llama.cpp's rope_freqs."""
    root = tmp_path_factory.mktemp("gguf")
    model = hf_models["llama_gqa_llama3"]
    return {"quantized": write_llama_gguf(model, root / "tiny-q.gguf", quantize=True, rope_freqs=False),
            "llama3": write_llama_gguf(model, root / "tiny-llama3.gguf", quantize=False, rope_freqs=True)}


# ----------------------------------------------------------------------------- the real default model


@pytest.fixture(scope="session")
def default_llm_dir() -> Path:
    """The embedded default LLM, fetched and converted once (cached across sessions)."""
    from specjax import default_model

    return default_model.default_llm_dir()


def rewrite_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is ...:
            d.pop(k, None)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


def perturbed(params, scale: float, seed: int):
    """A drafter that agrees with the LLM often but not always: the LLM's weights plus noise."""
    import jax

    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
