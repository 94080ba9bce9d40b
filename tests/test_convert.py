"""checkpoints_convert + specjax.checkpoint: parity with transformers on tiny random models, both ways."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAMILIES, hf_logits, rewrite_json

from checkpoints_convert import convert, export_hf, read_source
from checkpoints_convert.__main__ import main
from specjax import model as M
from specjax import skinny
from specjax.checkpoint import CheckpointError, flatten, load_checkpoint, load_model, save_checkpoint
from specjax.config import ConfigError

TOL = 1e-4
B, T = 2, 20


def tokens(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, vocab, size=(B, T))


def specjax_logits(params, cfg, toks) -> np.ndarray:
    return np.asarray(M.causal_logits(params, cfg, jnp.asarray(toks)))


# ----------------------------------------------------------------------------- parity


def maybe_packed(params, cfg, packed: bool):
    """The params as loaded, or packed for the CPU skinny-matmul kernel (the engine's default on CPU)."""
    if not packed:
        return params
    out = skinny.pack_params(params, cfg)
    assert skinny.is_packed(out), skinny.status()[1]
    return out


@pytest.mark.parametrize("packed", [False, True], ids=["xla", "kernel"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers(name, packed, converted, hf_models):
    params, cfg = load_checkpoint(converted[name])
    params = maybe_packed(params, cfg, packed)
    toks = tokens(cfg.vocab_size)
    ref = hf_logits(hf_models[name], toks)
    np.testing.assert_allclose(specjax_logits(params, cfg, toks), ref, atol=TOL, rtol=0)


def test_rope_scaling_is_exercised(converted, hf_models):
    """Guard: the tiny llama3 model is sensitive to its rope scaling, so the parity test would catch it."""
    import dataclasses

    params, cfg = load_checkpoint(converted["llama_gqa_llama3"])
    assert cfg.rope.kind == "llama3"
    toks = tokens(cfg.vocab_size)
    wrong = specjax_logits(params, dataclasses.replace(cfg, rope=dataclasses.replace(cfg.rope, kind="default")), toks)
    assert np.abs(wrong - hf_logits(hf_models["llama_gqa_llama3"], toks)).max() > 100 * TOL


@pytest.mark.parametrize("packed", [False, True], ids=["xla", "kernel"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_prefill_then_steps_match_full_forward(name, packed, converted):
    """Prefill P tokens into a cache of T slots, then decode one token per step: same logits."""
    params, cfg = load_checkpoint(converted[name])
    params = maybe_packed(params, cfg, packed)
    toks = jnp.asarray(tokens(cfg.vocab_size, seed=1))
    full = specjax_logits(params, cfg, toks)
    P = 12
    cache = M.init_cache(cfg, B, T)
    slots = jnp.arange(T)
    pos = jnp.broadcast_to(slots[:P], (B, P))
    mask = jnp.broadcast_to(slots[None, :] <= slots[:P, None], (B, P, T))
    hidden, cache = M.forward(params, cfg, toks[:, :P], pos, cache, pos, mask)
    steps = [M.lm_head(params, cfg, hidden)]
    for t in range(P, T):
        pos = jnp.full((B, 1), t)
        mask = jnp.broadcast_to(slots <= t, (B, 1, T))
        hidden, cache = M.forward(params, cfg, toks[:, t:t + 1], pos, cache, pos, mask)
        steps.append(M.lm_head(params, cfg, hidden))
    np.testing.assert_allclose(np.concatenate([np.asarray(s) for s in steps], axis=1), full, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_to_hf_round_trip(name, converted, hf_models, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_hf(converted[name], tmp_path / "hf")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    toks = tokens(reloaded.config.vocab_size, seed=2)
    np.testing.assert_allclose(hf_logits(reloaded, toks), hf_logits(hf_models[name], toks), atol=TOL, rtol=0)
    # And the exported directory converts back to the very same parameters and config.
    flat, cfg = read_source(out)
    params, cfg0 = load_checkpoint(converted[name])
    assert cfg == cfg0
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)


def test_tokenizer_files_travel(converted, tmp_path):
    from specjax.tokenizer import load_tokenizer

    assert (converted["llama_gqa_llama3"] / "tokenizer.json").is_file()
    out = export_hf(converted["llama_gqa_llama3"], tmp_path / "hf")
    tok = load_tokenizer(out)
    assert tok.decode(tok.encode("w5 w6", chat=False)).split()[-2:] == ["w5", "w6"]
    assert tok.encode("w5", chat=True) == [5, 9, 6, 7]  # w1 w5 w2 w3 from the chat template
    assert 2 in tok.eos_token_ids


def test_chat_without_template_is_a_clear_error(converted):
    from specjax.tokenizer import TokenizerError, load_tokenizer

    tok = load_tokenizer(converted["qwen2"])
    with pytest.raises(TokenizerError, match="chat template"):
        tok.encode("w5", chat=True)


# ----------------------------------------------------------------------------- other source layouts


def _same_params(flat_a: dict, flat_b: dict) -> None:
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)


def test_sharded_safetensors(hf_models, converted, tmp_path):
    hf_models["llama_gqa_llama3"].save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    flat, _ = read_source(tmp_path)
    params, _ = load_checkpoint(converted["llama_gqa_llama3"])
    _same_params(flat, flatten(params))


@pytest.mark.parametrize("name", ["llama_tied_bias", "opt_postnorm"])
def test_pytorch_model_bin(name, hf_dirs, hf_models, converted, tmp_path):
    import torch

    shutil.copy(hf_dirs[name] / "config.json", tmp_path / "config.json")
    torch.save(hf_models[name].state_dict(), tmp_path / "pytorch_model.bin")
    flat, _ = read_source(tmp_path)  # a tied lm_head.weight copy in the state dict is accepted
    params, _ = load_checkpoint(converted[name])
    _same_params(flat, flatten(params))


def test_bf16_safetensors(hf_models, tmp_path):
    import torch

    model = hf_models["qwen2"]
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    model.to(torch.float32)
    flat, cfg = read_source(tmp_path)
    ref = {k: v.to(torch.bfloat16).float().numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(flat["embed"], ref["model.embed_tokens.weight"])


def test_load_model_dispatch(hf_dirs, converted, gguf_files):
    a, cfg_a = load_model(converted["mistral"])
    b, cfg_b = load_model(hf_dirs["mistral"])
    assert cfg_a == cfg_b
    _same_params(flatten(a), flatten(b))
    _, cfg = load_model(gguf_files["llama3"])
    assert cfg.rope.kind == "llama3"
    with pytest.raises(CheckpointError, match="not a specjax checkpoint"):
        load_model(hf_dirs["mistral"] / "nowhere")


def test_cli(hf_dirs, tmp_path, capsys):
    assert main([str(hf_dirs["qwen2"]), str(tmp_path / "out"), "--dtype", "float16"]) == 0
    params, _ = load_checkpoint(tmp_path / "out")
    assert params["embed"].dtype == np.float32  # stored float16, loaded float32
    assert main([str(hf_dirs["qwen2"]), str(tmp_path / "out")]) == 1  # exists: refuses to overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["--to-hf", str(tmp_path / "out"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def llama_copy(hf_dirs, tmp_path):
    dst = tmp_path / "src"
    shutil.copytree(hf_dirs["llama_gqa_llama3"], dst)
    return dst


@pytest.mark.parametrize("changes, match", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type='yarn'"),
    ({"rope_parameters": ..., "rope_theta": 1e4, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "rope_scaling.rope_type='dynamic'"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0, "beta": 1}}, "beta"),
    ({"frobnicate": 3}, "frobnicate=3"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"hidden_act": "gelu_10"}, "hidden_act='gelu_10'"),
    ({"model_type": "gpt2"}, "model_type='gpt2'"),
    ({"hidden_size": ...}, "hidden_size"),
])
def test_unsupported_config_is_named(llama_copy, tmp_path, changes, match):
    rewrite_json(llama_copy / "config.json", **changes)
    with pytest.raises(ConfigError, match=match):
        convert(llama_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_old_style_rope_config_is_read(llama_copy, converted):
    rewrite_json(llama_copy / "config.json", rope_parameters=..., rope_theta=10000.0,
                 rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 32})
    _, cfg = read_source(llama_copy)
    assert cfg == load_checkpoint(converted["llama_gqa_llama3"])[1]


@pytest.mark.parametrize("name, changes, match", [
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window=True"),
    ("opt_prenorm", {"layer_norm_elementwise_affine": False}, "layer_norm_elementwise_affine=False"),
    ("opt_prenorm", {"intermediate_size": 96}, "intermediate_size"),
    ("mistral", {"attention_bias": True}, "attention_bias"),
])
def test_family_specific_config_errors(hf_dirs, tmp_path, name, changes, match):
    shutil.copytree(hf_dirs[name], tmp_path / "src")
    rewrite_json(tmp_path / "src" / "config.json", **changes)
    with pytest.raises(ConfigError, match=match):
        read_source(tmp_path / "src")


def _rewrite_safetensors(path, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor_is_named(llama_copy):
    _rewrite_safetensors(llama_copy / "model.safetensors",
                         lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): model\.layers\.1\.self_attn\.k_proj\.weight"):
        read_source(llama_copy)


def test_unexpected_tensor_is_named(llama_copy):
    _rewrite_safetensors(llama_copy / "model.safetensors",
                         lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\): model\.layers\.0\.mlp\.extra\.weight"):
        read_source(llama_copy)


def test_shape_mismatch_is_named(llama_copy):
    _rewrite_safetensors(llama_copy / "model.safetensors",
                         lambda t: t.update({"model.layers.0.mlp.up_proj.weight": np.zeros((64, 96), np.float32)}))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.up_proj\.weight: expected \(96, 64\), "
                                              r"found \(64, 96\)"):
        read_source(llama_copy)


def _truncate(path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_truncated_safetensors_is_named(llama_copy):
    _truncate(llama_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors file"):
        read_source(llama_copy)


def test_truncated_gguf_is_named(gguf_files, tmp_path):
    for keep in (0.95, 0.01):
        bad = tmp_path / f"cut{keep}.gguf"
        bad.write_bytes(gguf_files["quantized"].read_bytes()[:int(gguf_files["quantized"].stat().st_size * keep)])
        with pytest.raises(CheckpointError, match=rf"cut{keep}\.gguf: cannot read GGUF file"):
            read_source(bad)


def test_specjax_checkpoint_errors(converted, tmp_path):
    params, cfg = load_checkpoint(converted["qwen2"])
    flat = flatten(params)
    flat.pop("layers.0.k_bias")
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): layers\.0\.k_bias"):
        save_checkpoint(tmp_path / "a", flat, cfg)
    shutil.copytree(converted["qwen2"], tmp_path / "b")
    _truncate(tmp_path / "b" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"b/model\.safetensors: cannot read"):
        load_checkpoint(tmp_path / "b")
    shutil.copytree(converted["qwen2"], tmp_path / "c")
    _rewrite_safetensors(tmp_path / "c" / "model.safetensors", lambda t: t.update({"embed": t["embed"][:5]}))
    with pytest.raises(CheckpointError, match=r"embed: expected \(101, 64\), found \(5, 64\)"):
        load_checkpoint(tmp_path / "c")


# ----------------------------------------------------------------------------- GGUF


def test_gguf_matches_transformers_gguf_loader(gguf_files):
    """Mixed Q8_0 / Q4_0 / Q4_1 / F16 / BF16 / F32 tensors: same logits as transformers' own GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM

    path = gguf_files["quantized"]
    ref_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    flat, cfg = read_source(path)
    params = load_model(path)[0]
    toks = tokens(cfg.vocab_size, seed=3)
    np.testing.assert_allclose(specjax_logits(params, cfg, toks), hf_logits(ref_model, toks), atol=TOL, rtol=0)


def test_gguf_llama3_rope_freqs_match_original(gguf_files, hf_models):
    """An all-F32 GGUF with llama.cpp's rope_freqs tensor gives the original HF llama3 model's logits."""
    params, cfg = load_model(gguf_files["llama3"])
    assert cfg.rope.kind == "llama3" and cfg.rope.factor == 8.0
    toks = tokens(cfg.vocab_size, seed=4)
    np.testing.assert_allclose(specjax_logits(params, cfg, toks), hf_logits(hf_models["llama_gqa_llama3"], toks),
                               atol=TOL, rtol=0)


def test_gguf_unsupported_metadata_is_named(gguf_files, tmp_path):
    import gguf

    reader = gguf.GGUFReader(str(gguf_files["llama3"]))
    w = gguf.GGUFWriter(str(tmp_path / "moe.gguf"), "llama")
    w.add_uint32("llama.expert_count", 8)
    for key in ("llama.embedding_length", "llama.block_count"):
        w.add_uint32(key, int(reader.fields[key].contents()))
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConfigError, match="llama.expert_count=8"):
        read_source(tmp_path / "moe.gguf")
