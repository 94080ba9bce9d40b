"""The decode loop in bounded calls and the prefill in chunks give the same output as one call each:
greedy incremental and speculative token for token, sampling the same tokens for a fixed seed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturbed

from specjax import decode_state, model, prefill
from specjax.chunked import next_chunk
from specjax.config import ModelConfig
from specjax.engine import Engine, LoadedModel
from specjax.sampling import SamplingConfig
from specjax.tree import TreeConfig

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=512)
PROMPTS = [list(np.arange(40) % 60 + 1), [7, 8, 9], [10] * 21]
SAMPLED = SamplingConfig(temperature=0.9, top_p=0.95)


@pytest.fixture(scope="module")
def engines():
    llm = LoadedModel(model.init_params(CFG, jax.random.PRNGKey(0), std=0.3), CFG)
    ssm = LoadedModel(perturbed(llm.params, 0.05, 1), CFG)
    return Engine(llm), Engine(llm, [ssm], TreeConfig(expansion=(2, 1, 1), num_ssms=1))


def outputs(engine, speculative, sampling, steps_per_call):
    gen = engine.generate_spec if speculative else engine.generate_incremental
    return [(r.token_ids, r.finish_reason, r.accepted_per_step)
            for r in gen(PROMPTS, 20, sampling, seed=3, eos_ids=(5,), steps_per_call=steps_per_call)]


@pytest.mark.parametrize("speculative", [False, True])
def test_loop_and_prefill_chunks_do_not_change_the_output(engines, speculative, monkeypatch):
    engine = engines[speculative]
    for sampling in (SamplingConfig(), SAMPLED):
        monkeypatch.setattr(prefill, "ONE_CALL", 1 << 20)  # one prefill call, one loop call: as before chunking
        one_shot = outputs(engine, speculative, sampling, steps_per_call=1 << 20)
        assert any(len(t) == 20 for t, _, _ in one_shot)  # a long enough run to split
        monkeypatch.setattr(prefill, "CHUNK", 8)  # 5 prefill chunks of the 40-token prompt
        monkeypatch.setattr(prefill, "ONE_CALL", 8)
        for steps in (1, 3, None):  # None: adapted to the wall time
            assert outputs(engine, speculative, sampling, steps) == one_shot, (sampling, steps)


def test_chunked_prefill_writes_the_one_shot_cache(engines):
    """Every prompt K/V the chunks write equals the one-shot prefill's (decode_state.prefill)."""
    params = engines[0].llm.params
    B, S, bucket = len(PROMPTS), 128, 64
    tokens = np.zeros((B, S), np.int32)
    for b, p in enumerate(PROMPTS):
        tokens[b, :len(p)] = p
    lens = jnp.asarray([len(p) for p in PROMPTS], jnp.int32)
    tokens = jnp.asarray(tokens)
    ref = decode_state.prefill(params, CFG, model.init_cache(CFG, B, S), tokens, lens, bucket)
    cache = model.init_cache(CFG, B, S)
    for start, chunk, window in _plan(40, bucket, S, 16):
        cache = prefill.prefill_chunk(params, cache, tokens, lens, jnp.int32(start), cfg=CFG, chunk=chunk,
                                      window=window)
    for b, p in enumerate(PROMPTS):
        for got, want in zip(cache.k + cache.v, ref.k + ref.v):
            np.testing.assert_allclose(np.asarray(got[b, :, :len(p) - 1]), np.asarray(want[b, :, :len(p) - 1]),
                                       rtol=1e-5, atol=1e-5)  # float32 sums in another order
            assert not np.asarray(got[b, :, len(p) - 1:]).any()  # nothing written past P - 2


def test_chunked_prefill_gives_the_drafters_what_the_one_shot_prefill_did(engines, monkeypatch):
    """The drafters' prefill outputs (top-k successors, features at taps) from chunks equal the one-call
    prefill's (drafters.setup.prefill_outputs) at every real position, and so does the cache."""
    from specjax.drafters.setup import prefill_outputs

    engine = engines[0]
    params = engine.llm.params
    B, S, bucket, k, taps = len(PROMPTS), 128, 64, 3, (0, 1)
    tokens = np.zeros((B, S), np.int32)
    for b, p in enumerate(PROMPTS):
        tokens[b, :len(p)] = p
    lens = jnp.asarray([len(p) for p in PROMPTS], jnp.int32)
    tokens = jnp.asarray(tokens)
    ref_cache, ref_top, ref_feats = prefill_outputs(params, CFG, model.init_cache(CFG, B, S), tokens, lens, bucket, k, taps)
    monkeypatch.setattr(prefill, "CHUNK", 16)  # 3 chunks of the 40-token prompt
    monkeypatch.setattr(prefill, "ONE_CALL", 16)
    cache, top, feats = engine.prefill(params, CFG, model.init_cache(CFG, B, S), tokens, lens, 40, bucket, k, taps)
    assert top.shape == ref_top.shape and feats.shape == ref_feats.shape
    for b, p in enumerate(PROMPTS):
        real = len(p) - 1
        np.testing.assert_array_equal(np.asarray(top[b, :real]), np.asarray(ref_top[b, :real]))
        got, want = np.asarray(feats[b, :real], np.float64), np.asarray(ref_feats[b, :real], np.float64)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()  # float32 sums in another order
        for got, want in zip(cache.k + cache.v, ref_cache.k + ref_cache.v):
            np.testing.assert_allclose(np.asarray(got[b, :, :real]), np.asarray(want[b, :, :real]), rtol=1e-5, atol=1e-5)


def _plan(longest, bucket, slots, chunk, one_call=None):
    old = prefill.CHUNK, prefill.ONE_CALL
    prefill.CHUNK, prefill.ONE_CALL = chunk, chunk if one_call is None else one_call
    try:
        return prefill.plan(longest, bucket, slots)
    finally:
        prefill.CHUNK, prefill.ONE_CALL = old


def test_prefill_plan_windows_and_last_chunk():
    assert _plan(40, 64, 128, 16) == [(0, 16, 32), (16, 16, 32), (32, 16, 64)]
    long = _plan(5924, 6144, 6208, 256)
    assert long[0] == (0, 256, 1792) and long[-1] == (5888, 256, 6208) and len(long) == 24
    assert sorted({w for _, _, w in long}) == [1792, 3328, 6208]  # three compiles: S/4, S/2, S (whole chunks)
    # a cache not a multiple of the chunk: the last chunk starts earlier, inside the cache
    assert _plan(100, 100, 100, 64) == [(0, 64, 64), (36, 64, 100)]
    assert _plan(30, 32, 256, 256) == [(0, 32, 64)]  # a short prompt: one call, a quarter of the cache
    assert _plan(1, 16, 64, 256) == []  # a one-token prompt has nothing to prefill
    # up to ONE_CALL tokens the padded prompt goes in one call: a 300-token prompt padded to 320 computes
    # 320 positions, not two chunks of 256 (512)
    assert _plan(300, 320, 512, 256, one_call=512) == [(0, 320, 320)]
    assert _plan(600, 640, 1024, 256, one_call=512) == [(0, 256, 256), (256, 256, 512), (512, 256, 1024)]


def test_next_chunk_aims_at_the_target_time():
    assert next_chunk(4, 0.01, target=0.5) == 16  # at most 4x more steps
    assert next_chunk(100, 1.0, target=0.5) == 50
    assert next_chunk(1, 10.0, target=0.5) == 1
