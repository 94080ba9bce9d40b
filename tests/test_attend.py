"""model.attend (attention over the cache as it was + the new tokens, block by block for long caches;
or in one call of the CPU kernel, skinny.attend) against the plain definition: masked softmax
attention over the cache with the new K/V written at their slots."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specjax import model

KERNEL = [False, True]  # XLA's ops; the CPU kernel (tests/test_skinny.py checks it is available)


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


@pytest.mark.parametrize("cpu_kernel", KERNEL)
@pytest.mark.parametrize("S,A,ragged", [(40, 8, False), (300, 12, False), (3 * model.BLOCK, 8, False), (300, 12, True)])
def test_attend_equals_masked_attention_over_the_written_cache(S, A, ragged, cpu_kernel):
    """S: one pass; blocks with a short last one; exact blocks. ragged: the queries of a row see
    different cache slots (the kernel's per-row path; otherwise they all see the row's prefix, its
    shared-mask path)."""
    B, T, H, K = 3, 5, 6, 2
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
    if ragged:  # each query of rows 1 and 2 misses its own random tenth of the row's cache slots
        for b in (1, 2):
            for t in range(T):
                mask[b, t, : length[b]] &= rng.random(length[b]) >= 0.1
    slots, mask = jnp.asarray(slots, jnp.int32), jnp.asarray(mask)
    got = model.attend(q, k, v, k_cache, v_cache, slots, mask, cpu_kernel=cpu_kernel)
    want = reference(q, k, v, k_cache, v_cache, slots, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cpu_kernel", KERNEL)
def test_attend_ignores_what_no_query_sees(cpu_kernel):
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
    a = model.attend(q, k, v, clean, clean, slots, mask, cpu_kernel)
    b = model.attend(q, k, v, stale, stale, slots, mask, cpu_kernel)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kernel_tree_node_equals_the_incremental_step_bitwise():
    """Greedy speculative == incremental needs a tree node's attention to be the very floats of the
    incremental step at its position (its ancestors then in the cache): the kernel adds the same terms
    in the same order whatever T is and whoever else is in the call."""
    B, H, K, A, S, P = 1, 9, 3, 64, 300, 200
    keys = jax.random.split(jax.random.PRNGKey(7), 5)
    k_cache, v_cache = jax.random.normal(keys[0], (B, K, S, A)), jax.random.normal(keys[1], (B, K, S, A))
    # A tree of 6 nodes at slots P..P+5: parents -1, 0, 0, 1, 3, 2 (node 4's path: 0, 1, 3, 4).
    parents, T = [-1, 0, 0, 1, 3, 2], 6
    q = jax.random.normal(keys[2], (B, T, H, A))
    k, v = jax.random.normal(keys[3], (B, T, K, A)), jax.random.normal(keys[4], (B, T, K, A))
    slots = jnp.arange(P, P + T)[None].astype(jnp.int32)
    mask = np.zeros((B, T, S), bool)
    mask[0, :, :P] = True
    for t in range(T):
        u = t
        while u >= 0:
            mask[0, t, P + u] = True
            u = parents[u]
    tree = model.attend(q, k, v, k_cache, v_cache, slots, jnp.asarray(mask), cpu_kernel=True).reshape(B, T, H, A)
    # Node 4 alone, with its ancestors 0, 1, 3 written into the cache at their slots first.
    path = [0, 1, 3]
    kc = model.write_cache(k_cache, k[:, path], slots[:, path])
    vc = model.write_cache(v_cache, v[:, path], slots[:, path])
    alone = model.attend(q[:, 4:5], k[:, 4:5], v[:, 4:5], kc, vc, slots[:, 4:5], jnp.asarray(mask[:, 4:5]),
                         cpu_kernel=True)
    np.testing.assert_array_equal(np.asarray(alone).reshape(B, 1, H, A), np.asarray(tree)[:, 4:5])
