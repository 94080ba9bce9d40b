"""model.attend (attention over the cache as it was + the new tokens, block by block for long caches)
against the plain definition: masked softmax attention over the cache with the new K/V written at
their slots."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import model


def reference(q, k, v, k_cache, v_cache, slots, mask):
    B, T, H, A = q.shape
    K = k.shape[2]
    kc = model.write_cache(k_cache, k, slots)  # [B, K, S, A]
    vc = model.write_cache(v_cache, v, slots)
    kc, vc = jnp.repeat(kc, H // K, axis=1), jnp.repeat(vc, H // K, axis=1)  # [B, H, S, A]
    s = jnp.einsum("btha,bhsa->bhts", q, kc) / math.sqrt(A)
    s = jnp.where(mask[:, None], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhts,bhsa->btha", p, vc).reshape(B, T, H * A)


@pytest.mark.parametrize("S", [40, 300, 3 * model.BLOCK])  # one pass; blocks with a short last one; exact blocks
def test_attend_equals_masked_attention_over_the_written_cache(S):
    B, T, H, K, A = 3, 5, 4, 2, 8
    rng = np.random.default_rng(S)
    keys = jax.random.split(jax.random.PRNGKey(S), 5)
    q = jax.random.normal(keys[0], (B, T, H, A))
    k, v = jax.random.normal(keys[1], (B, T, K, A)), jax.random.normal(keys[2], (B, T, K, A))
    k_cache, v_cache = jax.random.normal(keys[3], (B, K, S, A)), jax.random.normal(keys[4], (B, K, S, A))
    # Rows of different lengths (the last sees slots beyond the first block); row 1's last token is
    # padding (slot S: written nowhere). A random tree mask over the new tokens, each sees itself.
    length = np.array([3, S // 2, S - T - 1])
    slots = length[:, None] + np.arange(T)[None]
    slots[1, -1] = S
    mask = np.zeros((B, T, S), bool)
    for b in range(B):
        for t in range(T):
            mask[b, t, : length[b]] = True
            seen = [u for u in range(t) if rng.random() < 0.5] + [t]
            for u in seen:
                if slots[b, u] < S:
                    mask[b, t, slots[b, u]] = True
    mask[1, -1] = mask[1, 0]  # the padding query still gets a finite output
    slots, mask = jnp.asarray(slots, jnp.int32), jnp.asarray(mask)
    got = model.attend(q, k, v, k_cache, v_cache, slots, mask)
    want = reference(q, k, v, k_cache, v_cache, slots, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_attend_ignores_what_no_query_sees():
    """Stale cache contents beyond every row's length, and at slots being written, change nothing."""
    B, T, H, K, A, S = 2, 3, 2, 1, 8, 4 * model.BLOCK
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    q = jax.random.normal(keys[0], (B, T, H, A))
    k, v = jax.random.normal(keys[1], (B, T, K, A)), jax.random.normal(keys[2], (B, T, K, A))
    slots = jnp.asarray([[10, 11, 12], [150, 151, 152]], jnp.int32)
    mask = jnp.arange(S)[None, None] <= slots[:, :, None]
    clean = jnp.zeros((B, K, S, A))
    junk = jax.random.normal(keys[3], (B, K, S, A)) * 1e3
    stale = jnp.where((jnp.arange(S) >= jnp.asarray([10, 150])[:, None])[:, None, :, None], junk, clean)
    a = model.attend(q, k, v, clean, clean, slots, mask)
    b = model.attend(q, k, v, stale, stale, slots, mask)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
