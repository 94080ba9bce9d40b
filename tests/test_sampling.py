"""Logit warping against Hugging Face's warpers; sampling; config validation."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from specjax import sampling
from specjax.sampling import SamplingConfig, argmax, probs, sample, warp_logits

V = 50

warp_jit = jax.jit(warp_logits, static_argnums=1)
probs_jit = jax.jit(probs, static_argnums=1)
sample_jit = jax.jit(sample, static_argnums=2)


def hf_warp(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """What HF generate(do_sample=True) applies, in its order. logits [B, V] float32."""
    scores = torch.from_numpy(logits.copy())
    if cfg.temperature != 1.0:
        scores = TemperatureLogitsWarper(float(cfg.temperature))(None, scores)
    if cfg.top_k != 0:
        scores = TopKLogitsWarper(top_k=cfg.top_k)(None, scores)
    if cfg.top_p < 1.0:
        scores = TopPLogitsWarper(top_p=cfg.top_p)(None, scores)
    return scores.numpy()


def random_logits(seed: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.normal(0.0, 2.0, (16, V))
    elif kind == "ties":  # few distinct values: many ties, also at the top-k / top-p borders
        x = rng.integers(-2, 3, (16, V)).astype(np.float64)
    elif kind == "flat":  # all equal: which tied tokens top-p keeps depends on the sort order
        x = np.zeros((16, V))
    else:  # one dominant token
        x = rng.normal(0.0, 1.0, (16, V))
        x[:, 7] += 12.0
    return x.astype(np.float32)


CONFIGS = [
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.7),
    SamplingConfig(temperature=1.3, top_k=1),
    SamplingConfig(temperature=1.0, top_k=5),
    SamplingConfig(temperature=0.7, top_k=V + 10),
    SamplingConfig(temperature=1.0, top_p=0.9),
    SamplingConfig(temperature=1.0, top_p=0.35),
    SamplingConfig(temperature=0.5, top_p=0.05),
    SamplingConfig(temperature=0.7, top_k=10, top_p=0.9),
    SamplingConfig(temperature=2.0, top_k=3, top_p=0.537),
]


@pytest.mark.parametrize("kind", ["normal", "ties", "flat", "peaked"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_warp_matches_hf(cfg, kind):
    logits = random_logits(zlib.crc32(f"{kind}{cfg}".encode()), kind)
    ours = np.asarray(warp_jit(jnp.asarray(logits), cfg))
    ref = hf_warp(logits, cfg)
    assert np.isfinite(ours).any(axis=-1).all()  # at least one token always survives
    # top_p values are chosen so that no cumulative probability of tied tokens lands exactly on
    # 1 - top_p: there the result hangs on float rounding (torch's CPU cumsum accumulates in
    # float64, its CUDA one and XLA's in float32).
    if kind in ("ties", "flat") and cfg.top_p < 1.0:
        # Among exactly tied logits HF's top-p keeps whichever torch's (unstable) sort puts last;
        # we drop the lower indices first. Same number of survivors with the same values.
        np.testing.assert_array_equal(np.sort(ours, -1), np.sort(ref, -1))
    else:
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
        np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_top_p_flat_keeps_highest_indices():
    """All-equal logits: HF's ascending stable sort drops the lowest indices first."""
    ours = np.asarray(warp_jit(jnp.zeros((1, 10)), SamplingConfig(temperature=1.0, top_p=0.35)))
    np.testing.assert_array_equal(np.isfinite(ours[0]), np.arange(10) >= 6)


def test_probs_and_greedy():
    logits = jnp.asarray(random_logits(0, "normal"))
    greedy = SamplingConfig()
    assert greedy.is_greedy and not SamplingConfig(temperature=0.1).is_greedy
    np.testing.assert_array_equal(warp_jit(logits, greedy), logits)
    p = probs_jit(logits, greedy)
    np.testing.assert_array_equal(p, jax.nn.one_hot(jnp.argmax(logits, -1), V))
    np.testing.assert_array_equal(sample_jit(jax.random.key(0), logits, greedy),
                                  jnp.argmax(logits, -1))
    cfg = SamplingConfig(temperature=0.7, top_k=10, top_p=0.9)
    p = probs_jit(logits, cfg)
    assert p.dtype == jnp.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p == 0, np.isneginf(hf_warp(np.asarray(logits), cfg)))


def test_argmax_is_jnp_argmax():
    """Ties (first index wins), NaN (the first NaN wins, as jnp.argmax), all -inf, a 49152-wide
    vocabulary, more than one batch dimension."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 257)).astype(np.float32)
    x[0, 0, [5, 9, 200]] = 7.0  # tie: 5
    x[0, 1, [3, 100]] = np.nan  # first NaN: 3
    x[0, 2] = -np.inf  # all -inf: 0
    x[1, 0, 256] = np.inf
    x[1, 1, [0, 256]] = np.inf  # tie at +inf: 0
    x[2, 3] = np.round(x[2, 3])  # many ties
    wide = rng.normal(size=(2, 5, 49152)).astype(np.float32)
    wide[1, 2, 49151] = 9.0
    for a in (x, wide):
        got = jax.jit(argmax)(jnp.asarray(a))
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(got), np.argmax(a, axis=-1))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(jnp.asarray(a), axis=-1)))


def test_sample_follows_probs():
    cfg = SamplingConfig(temperature=0.8, top_k=6, top_p=0.95)
    logits = jnp.asarray(random_logits(3, "normal")[0, :10] / 4.0)
    n = 20_000
    toks = sample_jit(jax.random.key(1), jnp.broadcast_to(logits, (n, 10)), cfg)
    assert toks.shape == (n,) and toks.dtype == jnp.int32
    p = np.asarray(probs_jit(logits, cfg), np.float64)
    counts = np.bincount(np.asarray(toks), minlength=10)
    assert counts[p == 0].sum() == 0
    keep = p > 0
    assert stats.chisquare(counts[keep], p[keep] / p[keep].sum() * n).pvalue > 1e-3


def _chi2_pvalue(draws: np.ndarray, w: np.ndarray) -> float:
    counts = np.bincount(draws, minlength=w.size)
    keep = w > 0
    e = w[keep].astype(np.float64)
    return stats.chisquare(counts[keep], e / e.sum() * draws.size).pvalue


def test_inverse_cdf_draw_follows_weights_across_blocks():
    """sampling.draw over 3 blocks of DRAW_BLOCK and a ragged end: unnormalised weights with zeros
    (never drawn), a block with no weight; several draws per distribution. A block holding 4e-6 of the
    mass is split 1 : 3 between its tokens by the second uniform (one uniform over the vocabulary
    would resolve it only to ~1.2e-7 of the total). The chi-square fails a draw that took the next block's first token
    after every block boundary (an off-by-one in the block search)."""
    rng = np.random.default_rng(3)
    B = sampling.DRAW_BLOCK
    V = 2 * B + 40
    w = rng.random((2, V)).astype(np.float32) * 5
    w[:, ::5] = 0
    w[1, B: 2 * B] = 0
    n = 60_000
    u = jax.random.uniform(jax.random.key(0), (2, n, 2))
    x = np.asarray(jax.jit(sampling.draw)(u, jnp.asarray(w)))
    assert x.shape == (2, n) and x.dtype == np.int32
    for r in range(2):
        assert np.all(w[r][x[r]] > 0)
        assert _chi2_pvalue(x[r], w[r]) > 1e-3
    # The same uniforms mapped as a block search that overshoots by one token at each boundary would:
    bad = np.where(x[0] % B == B - 1, np.minimum(x[0] + 1, V - 1), x[0])
    bad = np.where(w[0][bad] > 0, bad, x[0])
    assert _chi2_pvalue(bad, w[0]) < 1e-3
    tiny = np.zeros(2 * B, np.float32)
    tiny[0], tiny[1], tiny[B] = 1e-6, 3e-6, 1.0 - 4e-6
    u = jnp.stack([jnp.asarray([0.0, 0.0, 1e-7, 3.9e-6]), jnp.asarray([0.1, 0.5, 0.9, 0.99])], -1)
    np.testing.assert_array_equal(np.asarray(sampling.draw(u, jnp.asarray(tiny))), [0, 1, 1, 1])


def test_inverse_cdf_draw_edges():
    """Uniforms of 0 and 1 (the rounding guards: never a zero-weight token, never past the end)."""
    w = jnp.asarray([[0.0, 0.0, 2.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    u = jnp.asarray([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
    np.testing.assert_array_equal(np.asarray(sampling.draw(u, w)), [[2, 2], [0, 1]])
    ragged = jnp.zeros((sampling.DRAW_BLOCK + 3,)).at[sampling.DRAW_BLOCK].set(1.0)  # only the ragged block weighs
    assert int(sampling.draw(jnp.asarray([[1.0, 1.0]]), ragged)[0]) == sampling.DRAW_BLOCK
    keys = jax.random.split(jax.random.key(0), 3)
    one = sampling.draw_rows(jax.random.key_data(keys), jnp.ones((3, 7, 300)))
    many = sampling.draw_rows(jax.random.key_data(keys), jnp.ones((3, 7, 300)), 4)
    assert one.shape == (3, 7) and many.shape == (3, 7, 4)


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.2), "top_p"),
])
def test_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**kwargs)


def test_config_is_hashable_static():
    assert hash(SamplingConfig(0.7, 5, 0.9)) == hash(SamplingConfig(0.7, 5, 0.9))
    with pytest.raises(Exception):
        SamplingConfig().temperature = 1.0  # frozen


def test_request_keys_use_every_seed_bit_and_refuse_bad_seeds():
    """Request i's key is the same alone or among others; seeds differing only above bit 32 differ
    (jax.random.PRNGKey alone truncates them); seeds outside [0, 2**64) are refused by name."""
    from specjax.sampling import request_key, request_keys

    keys = np.asarray(request_keys(5, 3, 4))
    np.testing.assert_array_equal(keys[1], np.asarray(request_key(5, 4)))
    assert len({tuple(k) for k in keys}) == 4
    assert not np.array_equal(np.asarray(request_key(2 ** 40)), np.asarray(request_key(0)))
    for bad in (-1, 2 ** 64):
        with pytest.raises(ValueError, match="seed must be an integer in"):
            request_keys(bad, 0, 1)
