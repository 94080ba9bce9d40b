"""Hugging Face model directories <-> specjax: one weight table per family, used both ways."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from checkpoints_convert import hf_config
from checkpoints_convert.sources import open_hf_weights
from checkpoints_convert.table import IDENTITY, TRANSPOSE, Entry, export_tensors, heads_bias, heads_in, heads_out, \
    import_tensors
from specjax.checkpoint import CheckpointError, copy_tokenizer_files, expected_shapes, make_readable
from specjax.config import ModelConfig


def _llama_table(cfg: ModelConfig) -> list[Entry]:
    """LLaMA / Mistral / Qwen2 (LlamaForCausalLM naming)."""
    H, K = cfg.num_heads, cfg.num_kv_heads
    t = [Entry("embed", "model.embed_tokens.weight"), Entry("final_norm.scale", "model.norm.weight")]
    for l in range(cfg.num_layers):
        p, n = f"layers.{l}.", f"model.layers.{l}."
        t += [Entry(p + "attn_norm.scale", n + "input_layernorm.weight"),
              Entry(p + "mlp_norm.scale", n + "post_attention_layernorm.weight"),
              Entry(p + "q", n + "self_attn.q_proj.weight", heads_in(H)),
              Entry(p + "k", n + "self_attn.k_proj.weight", heads_in(K)),
              Entry(p + "v", n + "self_attn.v_proj.weight", heads_in(K)),
              Entry(p + "o", n + "self_attn.o_proj.weight", heads_out(H))]
        t += [Entry(p + w, n + f"mlp.{w}_proj.weight", TRANSPOSE) for w in ("gate", "up", "down")]
        if cfg.qkv_bias:
            t += [Entry(p + "q_bias", n + "self_attn.q_proj.bias", heads_bias(H)),
                  Entry(p + "k_bias", n + "self_attn.k_proj.bias", heads_bias(K)),
                  Entry(p + "v_bias", n + "self_attn.v_proj.bias", heads_bias(K))]
        if cfg.o_bias:
            t.append(Entry(p + "o_bias", n + "self_attn.o_proj.bias"))
        if cfg.mlp_bias:
            t += [Entry(p + f"{w}_bias", n + f"mlp.{w}_proj.bias") for w in ("gate", "up", "down")]
    if not cfg.tie_word_embeddings:
        t.append(Entry("lm_head", "lm_head.weight", TRANSPOSE))
    return t


def _opt_table(cfg: ModelConfig) -> list[Entry]:
    """OPTForCausalLM naming: fc1/fc2 are up/down, self_attn_layer_norm/final_layer_norm the two norms."""
    H = cfg.num_heads
    d = "model.decoder."
    t = [Entry("embed", d + "embed_tokens.weight"), Entry("pos_embed", d + "embed_positions.weight")]
    if cfg.projects_embeddings:
        t += [Entry("project_in", d + "project_in.weight", TRANSPOSE),
              Entry("project_out", d + "project_out.weight", TRANSPOSE)]
    if cfg.final_norm:
        t += [Entry("final_norm.scale", d + "final_layer_norm.weight"),
              Entry("final_norm.bias", d + "final_layer_norm.bias")]
    for l in range(cfg.num_layers):
        p, n = f"layers.{l}.", f"{d}layers.{l}."
        for ours, theirs in (("attn_norm", "self_attn_layer_norm"), ("mlp_norm", "final_layer_norm")):
            t += [Entry(p + ours + ".scale", n + theirs + ".weight"), Entry(p + ours + ".bias", n + theirs + ".bias")]
        t += [Entry(p + "q", n + "self_attn.q_proj.weight", heads_in(H)),
              Entry(p + "k", n + "self_attn.k_proj.weight", heads_in(H)),
              Entry(p + "v", n + "self_attn.v_proj.weight", heads_in(H)),
              Entry(p + "o", n + "self_attn.out_proj.weight", heads_out(H)),
              Entry(p + "up", n + "fc1.weight", TRANSPOSE), Entry(p + "down", n + "fc2.weight", TRANSPOSE)]
        if cfg.qkv_bias:
            t += [Entry(p + f"{x}_bias", n + f"self_attn.{x}_proj.bias", heads_bias(H)) for x in "qkv"]
        if cfg.o_bias:
            t.append(Entry(p + "o_bias", n + "self_attn.out_proj.bias", IDENTITY))
        if cfg.mlp_bias:
            t += [Entry(p + "up_bias", n + "fc1.bias"), Entry(p + "down_bias", n + "fc2.bias")]
    if not cfg.tie_word_embeddings:
        t.append(Entry("lm_head", "lm_head.weight", TRANSPOSE))
    return t


def hf_table(cfg: ModelConfig) -> list[Entry]:
    """specjax path <-> Hugging Face state-dict name, for cfg's family."""
    return _opt_table(cfg) if cfg.family == "opt" else _llama_table(cfg)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e


def read_hf_config(directory: str | os.PathLike) -> ModelConfig:
    d = Path(directory)
    config = _read_json(d / "config.json")
    if config is None:
        raise CheckpointError(f"{d}: config.json not found")
    return hf_config.from_hf_config(config, _read_json(d / "generation_config.json"), where=str(d / "config.json"))


def read_hf(directory: str | os.PathLike, progress: bool | None = None) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """A Hugging Face model directory -> ({specjax flat path: float32 array}, cfg)."""
    cfg = read_hf_config(directory)
    files = open_hf_weights(directory)
    table = hf_table(cfg)
    shapes = dict(files.shapes)
    # A base model saved without its "model." prefix (e.g. OPTModel's "decoder.layers.0...").
    names = {e.name for e in table}
    if not any(n.startswith("model.") for n in shapes) and any("model." + n in names for n in shapes):
        renamed = {"model." + n if n != "lm_head.weight" else n: n for n in shapes}
        shapes = {k: files.shapes[v] for k, v in renamed.items()}
        read = lambda name: files.read(renamed[name])  # noqa: E731
    else:
        read = files.read
    ignorable = [n for n in shapes if n.endswith("rotary_emb.inv_freq")]  # old llama buffers
    if cfg.tie_word_embeddings and "lm_head.weight" in shapes:  # some exports write the tied copy too
        embed = next(e.name for e in table if e.path == "embed")
        if shapes["lm_head.weight"] == shapes.get(embed) and np.array_equal(read("lm_head.weight"), read(embed)):
            ignorable.append("lm_head.weight")
    flat = import_tensors(table, expected_shapes(cfg), shapes, read, f"{directory} ({files.description})",
                          ignorable=ignorable, progress=progress)
    return flat, cfg


def write_hf(directory: str | os.PathLike, flat: dict[str, np.ndarray], cfg: ModelConfig,
             tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Writes config.json, generation_config.json, model.safetensors (+ tokenizer files) for transformers."""
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    config = hf_config.to_hf_config(cfg)
    tensors = export_tensors(hf_table(cfg), flat)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, d)
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
    if not (d / "generation_config.json").is_file():  # a copied one (the source's own) wins
        (d / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    make_readable(d / "model.safetensors")
    return d
