"""The attention kernel (skinny.attend) alone: T queries over S cache slots of which P are visible, 30
calls chained in one jit, median per call.

    python docs/experiments/spec-overhead/attend_probe.py
"""
import time, jax, jax.numpy as jnp, numpy as np
from specjax import skinny
B, H, K, A = 1, 9, 3, 64
for T, S, P in [(1, 320, 100), (1, 320, 300), (8, 320, 100), (1, 2048, 100), (1, 2048, 2000)]:
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(B, T, H, A)).astype(np.float32))
    kn = jnp.asarray(rng.normal(size=(B, T, K, A)).astype(np.float32)); vn = kn
    kc = jnp.asarray(rng.normal(size=(B, K, S, A)).astype(np.float32)); vc = kc
    om = jnp.asarray(np.arange(S)[None, None, :] < P).repeat(T, 1)
    nm = jnp.asarray(np.tril(np.ones((T, T), bool))[None])
    @jax.jit
    def f(q):
        for _ in range(30):
            q = q + 0 * skinny.attend(q, kn, vn, kc, vc, om, nm)
        return q
    jax.block_until_ready(f(q))
    ts = []
    for _ in range(20):
        t = time.perf_counter(); jax.block_until_ready(f(q)); ts.append(time.perf_counter() - t)
    print(f"T={T} S={S} P={P}: {np.median(ts)/30*1e6:.1f} us per call")
