"""The feature SSM (specjax.feature): its training-time-test forward equals cached drafting, its
checkpoints refuse another LLM, its data refuses another LLM or malformed prompts, and training
resumes exactly."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import model
from specjax.boost.data import make_samples
from specjax.config import ModelConfig
from specjax.feature import data as fdata
from specjax.feature import model as fm
from specjax.feature import train as ftrain

LLM = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, max_position_embeddings=128, eos_token_ids=(2,))
TAPS = (0, 2, 3)


def _drafter(layers=2, seed=0):
    cfg = fm.make_config(LLM, TAPS, draft_vocab=16, num_layers=layers)
    return cfg, fm.init_params(cfg, jax.random.PRNGKey(seed), std=0.3)


def test_ttt_passes_equal_cached_drafting():
    """Pass 1 == a causal cached forward over real features; pass s at position i == drafting depth s-1
    from the root at i - s + 2 (catch-up up to i - s + 1, then the chain on the drafter's own outputs)."""
    cfg, p = _drafter()
    # jitted, as training and the engine run them (op by op, this test compiled ~360 small programs)
    ttt_outputs = jax.jit(fm.ttt_outputs, static_argnums=(1, 4))
    step = jax.jit(fm.step, static_argnums=1)
    B, T, S = 2, 10, 32
    feats = jax.random.normal(jax.random.PRNGKey(1), (B, T, cfg.feature_width))
    emb = jax.random.normal(jax.random.PRNGKey(2), (B, T, LLM.hidden_size))
    outs = ttt_outputs(p, cfg, feats, emb, 3)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    o, _ = step(p, cfg, fm.fuse(p, feats), emb, pos, fm.init_cache(cfg, B, S), pos,
                jnp.arange(S)[None, None, :] <= pos[:, :, None])
    np.testing.assert_allclose(o, outs[0], atol=1e-4)
    P = 6
    pp = pos[:, :P]
    o1, c = step(p, cfg, fm.fuse(p, feats[:, :P]), emb[:, :P], pp, fm.init_cache(cfg, B, S), pp,
                 jnp.arange(S)[None, None, :] <= pp[:, :, None])
    g = o1[:, -1:]
    for d in (1, 2):
        i = P - 1 + d  # the depth-d node's position
        m = (jnp.arange(S) < P) | ((jnp.arange(S) > 20) & (jnp.arange(S) <= 20 + d))
        g, c = step(p, cfg, g, emb[:, i:i + 1], jnp.full((B, 1), i), c, jnp.full((B, 1), 20 + d),
                    jnp.broadcast_to(m, (B, 1, S)))
        np.testing.assert_allclose(g[:, 0], outs[d][:, i], atol=1e-4)


def test_ttt_window_and_left_padding_equal_the_full_forward():
    """Training's layout: later passes run from `first` on, left padding masked out. Pass s equals the
    full computation wherever it is exact (i >= first + s - 2), and padding in front changes nothing."""
    cfg, p = _drafter()
    ttt_outputs = jax.jit(fm.ttt_outputs, static_argnums=(1, 4, 5))
    B, T, first, pad = 2, 10, 4, 3
    feats = jax.random.normal(jax.random.PRNGKey(1), (B, T, cfg.feature_width))
    emb = jax.random.normal(jax.random.PRNGKey(2), (B, T, LLM.hidden_size))
    full = ttt_outputs(p, cfg, feats, emb, 3, 0)
    part = ttt_outputs(p, cfg, feats, emb, 3, first)
    # Float32 logits of magnitude ~30 from differently shaped matmuls: XLA:CPU sums them in another
    # order per shape and processor (AVX-512 hosts differed by 1.3e-5 = 1.6e-6 relative, a few ulps),
    # so the bound is relative too; a wrong window or mask moves them by O(1).
    np.testing.assert_allclose(part[0], full[0], rtol=1e-5, atol=1e-5)
    for s in (2, 3):
        np.testing.assert_allclose(part[s - 1][:, s - 2:], full[s - 1][:, first + s - 2:], rtol=1e-5, atol=1e-5)
    junk = 5.0 * jax.random.normal(jax.random.PRNGKey(3), (B, pad, feats.shape[-1]))
    padded = ttt_outputs(p, cfg, jnp.concatenate([junk, feats], 1), jnp.concatenate([junk[..., :LLM.hidden_size], emb], 1),
                         3, first + pad, jnp.arange(T + pad)[None].repeat(B, 0) >= pad)
    np.testing.assert_allclose(padded[0][:, pad:], full[0], atol=1e-4)
    for s in (2, 3):
        np.testing.assert_allclose(padded[s - 1][:, s - 2:], full[s - 1][:, first + s - 2:], atol=1e-4)
    with pytest.raises(ValueError, match="context positions"):
        ftrain.TrainConfig(crop=12, window=12, passes=3)


def test_ttt_mask_shape():
    m = fm.ttt_mask(5, 2)
    assert m.shape == (5, 10)
    assert fm.ttt_mask(5, 3, first=2).shape == (3, 11)  # positions 2..4 of pass 3 over 5 + 3 + 3 keys
    assert m[3, :5].tolist() == [True, True, True, False, False]  # real features up to i - 1
    assert m[3, 5:].tolist() == [False, False, False, True, False]  # only itself in pass 2


def test_checkpoint_round_trip_and_mismatches(tmp_path):
    cfg, p = _drafter()
    d2t = np.arange(16, dtype=np.int32) * 3 + 2  # includes EOS 2
    fm.save(tmp_path / "f", p, cfg, d2t, dtype=np.float32)
    p2, cfg2, d2 = fm.load(tmp_path / "f", LLM)
    assert cfg2 == cfg and (d2 == d2t).all()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), p, p2)
    other = dict(hidden_size=(48, "hidden size"), num_layers=(5, "layer count"), vocab_size=(80, "vocabulary"))
    for field, (value, words) in other.items():
        import dataclasses

        with pytest.raises(fm.FeatureSSMError, match=words):
            fm.load(tmp_path / "f", dataclasses.replace(LLM, **{field: value}))
    with pytest.raises(fm.FeatureSSMError, match="fingerprint"):
        cfgf = dataclasses.replace(cfg, llm_fingerprint="aaaa")
        fm.save(tmp_path / "g", p, cfgf, d2t)
        fm.load(tmp_path / "g", LLM, fingerprint="bbbb")
    fm.save(tmp_path / "h", p, cfg, np.arange(16, dtype=np.int32) + 10)
    with pytest.raises(fm.FeatureSSMError, match="end-of-sequence"):
        fm.load(tmp_path / "h", LLM)
    with pytest.raises(fm.FeatureSSMError, match="not a feature SSM"):
        fm.load(tmp_path)
    with pytest.raises(fm.FeatureSSMError, match="taps"):
        fm.make_config(LLM, (1, 4), 16)


def test_prompt_rows_checked(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n{"messages": [{"role": "user", "content": "a"}, '
                 '{"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}\n')
    rows = fdata.read_rows(f)
    assert rows[0]["messages"] == [{"role": "user", "content": "hi"}] and len(rows[1]["messages"]) == 3
    for bad, words in (('{"messages": "x"}', "non-empty list"), ('{"messages": [{"role": "bot", "content": "x"}]}', "role"),
                       ('{"messages": [{"role": "system", "content": "x"}]}', "no user turn"),
                       ('{"prompt": ""}', "non-empty"), ("[1, 2]", "JSON object"), ("{oops", "not valid JSON")):
        f.write_text('{"prompt": "ok"}\n' + bad + "\n")
        with pytest.raises(fdata.FeatureDataError, match=f"p.jsonl:2: .*{words}"):
            fdata.read_rows(f)


def test_one_pass_generation_equals_generating_then_reading_back():
    """`generate` (features and top-k kept while decoding) gives greedy continuations, cut after EOS, and
    the features and top-k that the teacher-forced pass over them gives, where training reads them."""
    params = model.init_params(LLM, jax.random.PRNGKey(4), std=0.3)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(3, LLM.vocab_size, n).tolist() for n in (5, 9, 12)]
    new, seq_len = 10, 24
    conts, feats, ids, probs = fdata.generate(params, LLM, prompts, new, TAPS, 4, eos=(), seq_len=seq_len, bucket=8)
    assert [len(c) for c in conts] == [new] * 3
    eos = conts[1][3]  # a token row 1 emits 4th: it must stop there (and others at their first one)
    conts, feats, ids, probs = fdata.generate(params, LLM, prompts, new, TAPS, 4, eos=(eos,), seq_len=seq_len, bucket=8)
    assert conts[1][-1] == eos and len(conts[1]) <= 4
    tokens, mask = make_samples(prompts, conts, seq_len, 16)
    f2, i2, p2 = fdata.features(params, LLM, tokens, TAPS, 4)
    for b, (p, c) in enumerate(zip(prompts, conts)):
        P, end = len(p), len(p) + len(c)
        np.testing.assert_array_equal(i2[b, P - 1: end - 1, 0], c[: len(c)])  # greedy: each token the argmax
        np.testing.assert_allclose(feats[b, :end].astype(np.float32), f2[b, :end].astype(np.float32), atol=2e-3, rtol=2e-3)
        np.testing.assert_array_equal(ids[b, P - 1: end], i2[b, P - 1: end])
        np.testing.assert_allclose(probs[b, P - 1: end].astype(np.float32), p2[b, P - 1: end].astype(np.float32), atol=1e-3)
        assert not feats[b, end:].any() and not ids[b, : P - 1].any() and not ids[b, end:].any()
    with pytest.raises(fdata.FeatureDataError, match="empty prompt"):
        fdata.generate(params, LLM, [[5], []], new, TAPS, 4, eos=(), seq_len=seq_len)
    with pytest.raises(fdata.FeatureDataError, match="seq_len 24"):
        fdata.generate(params, LLM, [list(range(3, 20))], new, TAPS, 4, eos=(), seq_len=seq_len)


def _tiny_data(n=6, T=24, seed=0):
    """FeatureData of a tiny random LLM over random sequences (prompt 8 tokens, then 'generated')."""
    llm_params = model.init_params(LLM, jax.random.PRNGKey(seed), std=0.3)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, LLM.vocab_size, (n, T)).astype(np.int32)
    mask = np.zeros((n, T), np.uint8)
    mask[:, 8:] = 1
    mask[0, 20:] = 0
    tokens[0, 20:] = 0
    feats, ids, probs = fdata.features(llm_params, LLM, tokens, TAPS, 4)
    return llm_params, fdata.FeatureData(tokens, mask, [feats], ids, probs, np.asarray([0, n]), {})


def test_features_read_each_row_only_to_its_end():
    """With the mask, rows are read in length order up to their group's longest row: the positions kept
    equal the full-length pass; past a row's end (padding) they are zeros."""
    llm_params = model.init_params(LLM, jax.random.PRNGKey(1), std=0.3)
    rng = np.random.default_rng(1)
    T = 40
    tokens = rng.integers(3, LLM.vocab_size, (5, T)).astype(np.int32)
    mask = np.zeros((5, T), np.uint8)
    for i, end in enumerate((12, 40, 9, 30, 20)):
        mask[i, 6:end] = 1
        tokens[i, end:] = 0
    full = fdata.features(llm_params, LLM, tokens, TAPS, 4, rows=2)
    cut = fdata.features(llm_params, LLM, tokens, TAPS, 4, rows=2, mask=mask, bucket=8)
    for i, (end, read) in enumerate(zip((12, 40, 9, 30, 20), (16, 40, 16, 32, 32))):  # groups {9, 12} {20, 30} {40}
        np.testing.assert_allclose(cut[0][i, :end].astype(np.float32), full[0][i, :end].astype(np.float32),
                                   rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(cut[2][i, :end].astype(np.float32), full[2][i, :end].astype(np.float32),
                                   rtol=2e-3, atol=1e-3)
        assert (cut[1][i, :end] == full[1][i, :end]).mean() > 0.99
        assert cut[0][i, read - 1].any() and not cut[0][i, read:].any() and not cut[2][i, read:].any()


def test_data_directory_refuses_another_llm(tmp_path):
    meta = {"llm": "aaa", "taps": [0, 2, 3]}
    fdata.check_meta(tmp_path, meta)
    fdata.check_meta(tmp_path, meta)  # same config: fine
    with pytest.raises(fdata.FeatureDataError, match="llm"):
        fdata.check_meta(tmp_path, {"llm": "bbb", "taps": [0, 2, 3]})
    with pytest.raises(fdata.FeatureDataError, match="another LLM"):
        fdata.load(tmp_path, LLM)


def test_training_resumes_exactly_and_learns(tmp_path):
    llm_params, data = _tiny_data()
    d2t, cov = ftrain.choose_vocab(data, 16, LLM.eos_token_ids, LLM.vocab_size)
    assert 2 in d2t.tolist() and 0 < cov <= 1
    cfg = fm.make_config(LLM, TAPS, 16, num_layers=1)
    p0 = fm.init_params(cfg, jax.random.PRNGKey(0), np.asarray(llm_params["embed"]), d2t)
    tcfg = ftrain.TrainConfig(steps=6, batch_size=2, crop=20, window=12, lr=3e-3, warmup_steps=1, checkpoint_every=2)
    embed = llm_params["embed"]
    full, hist = ftrain.train(p0, cfg, embed, data, d2t, tcfg, log=None, log_every=1)
    ftrain.train(p0, cfg, embed, data, d2t, tcfg, state_dir=tmp_path, stop_at=3, log=None)
    resumed, _ = ftrain.train(p0, cfg, embed, data, d2t, tcfg, state_dir=tmp_path, resume=True, log=None)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), full, resumed)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert json.loads((tmp_path / ftrain.META_FILE).read_text())["step"] == 6


def test_feature_regression_targets_the_next_positions_fused_features():
    """tcfg.feature_weight: pass s's output at window position c is scored against fc(f_{c+1}) (clean
    features), where c + 1 exists and c's target is trained: recomputed here position by position
    from the full forward."""
    llm_params, data = _tiny_data()
    d2t, _ = ftrain.choose_vocab(data, 16, LLM.eos_token_ids, LLM.vocab_size)
    cfg, p = _drafter(layers=1)
    tcfg = ftrain.TrainConfig(batch_size=3, crop=20, window=12, feature_weight=1.0)
    batch = ftrain.make_batch(data, np.arange(3), tcfg, ftrain.t2d(d2t, LLM.vocab_size))
    embed = llm_params["embed"]
    loss_and_metrics = jax.jit(ftrain.loss_and_metrics, static_argnums=(1, 4))  # op by op: ~60 s of compiles
    m = loss_and_metrics(p, cfg, embed, {k: jnp.asarray(v) for k, v in batch.items()}, tcfg)
    outs = jax.jit(fm.ttt_outputs, static_argnums=(1, 4))(p, cfg, jnp.asarray(batch["feats"]),
                                                           jnp.take(embed, batch["tokens"], axis=0), 3,
                                                           valid=jnp.asarray(batch["valid"]))
    g = np.asarray(fm.fuse(p, jnp.asarray(batch["feats"])))
    C, W = tcfg.crop, tcfg.window
    for s in (1, 2, 3):
        o = np.asarray(outs[s - 1])
        num = den = 0.0
        for b in range(3):
            for j in range(W - 1):
                c = C - W + j
                if batch["w"][b, j] > 0 and batch["valid"][b, c + 1] and batch["seq0"][b] + j >= s - 1:
                    num += float(np.square(o[b, c] - g[b, c + 1]).sum())
                    den += float(np.square(g[b, c + 1]).sum())
        assert den > 0
        np.testing.assert_allclose(float(m[1][f"reg{s}"]), num / den, rtol=1e-5)
    base = loss_and_metrics(p, cfg, embed, {k: jnp.asarray(v) for k, v in batch.items()},
                            ftrain.TrainConfig(batch_size=3, crop=20, window=12, feature_weight=0.0))
    np.testing.assert_allclose(float(m[1]["loss1"]), float(base[1]["loss1"]) + float(m[1]["reg1"]), rtol=1e-5)
    assert "reg1" not in base[1]
    with pytest.raises(ValueError, match="feature_weight"):
        ftrain.TrainConfig(feature_weight=-1.0)

