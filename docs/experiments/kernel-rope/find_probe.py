"""lookup.find vs its eight n-gram rounds as one [B, 8, S] comparison (not shipped): equal on 300 random
cases, then us per call inside a jitted loop.  python docs/experiments/kernel-rope/find_probe.py"""
import time, numpy as np, jax, jax.numpy as jnp
from specjax.drafters import lookup

def find2(tokens, root_slot, max_ngram: int):
    B, S = tokens.shape
    s = jnp.arange(S)
    P = root_slot[:, None]
    t = jnp.arange(max_ngram)[:, None]  # [n, 1]: n-gram length t + 1
    here = tokens[:, jnp.clip(s[None, :] - t, 0, S - 1)]  # [B, n, S]: token at e - t
    suffix = jnp.take_along_axis(tokens, jnp.maximum(P - t.T, 0), axis=1)  # [B, n]: token at P - t
    eq = (here == suffix[:, :, None]) & (s[None, None, :] - t[None] >= 0) & (P[:, :, None] - t[None] >= 0)
    ok = jnp.cumprod(eq, axis=1, dtype=jnp.int32) > 0  # [B, n, S]: the (t+1)-gram ending at e matches
    ends = jnp.where(ok & (s[None, None, :] < P[:, :, None]), s[None, None, :], -1).max(-1)  # [B, n] most recent end
    found = ends >= 0
    n_best = jnp.max(jnp.where(found, jnp.arange(1, max_ngram + 1)[None, :], 0), axis=-1)
    start = jnp.take_along_axis(ends, jnp.maximum(n_best - 1, 0)[:, None], axis=1)[:, 0] + 1
    return jnp.where(n_best > 0, start, 0).astype(jnp.int32), n_best.astype(jnp.int32)

rng = np.random.default_rng(0)
f1 = jax.jit(lookup.find, static_argnums=2); f2 = jax.jit(find2, static_argnums=2)
bad = 0
for trial in range(300):
    B, S = rng.integers(1, 4), int(rng.choice([16, 64, 256]))
    tok = rng.integers(0, rng.integers(2, 6), (B, S)).astype(np.int32)
    P = rng.integers(0, S, B).astype(np.int32)
    a, b = f1(tok, P, 8), f2(tok, P, 8)
    if not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])): bad += 1
print("mismatches", bad)
tok = jnp.asarray(rng.integers(0, 1000, (1, 384)).astype(np.int32)); P = jnp.asarray([200], jnp.int32)
for name, f in (("old", f1), ("new", f2)):
    g = jax.jit(lambda t, p: jax.lax.fori_loop(0, 100, lambda i, c: c + f(t, p + i % 2, 8)[0], jnp.zeros((1,), jnp.int32)))
    g(tok, P).block_until_ready()
    ts = []
    for _ in range(10):
        t0 = time.perf_counter(); g(tok, P).block_until_ready(); ts.append(time.perf_counter() - t0)
    print(name, f"{np.median(ts)/100*1e6:.1f} us per find")
