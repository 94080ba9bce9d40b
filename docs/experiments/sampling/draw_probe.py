"""One sampled token from [B, V] logits: jax.random.categorical (Gumbel: V uniforms per row) vs
inverse-CDF (one uniform per row: softmax, cumulative sum, count below), jitted, medians of 50, us.
    python docs/experiments/sampling/draw_probe.py"""
import time, jax, jax.numpy as jnp, numpy as np
V = 49152
def gumbel(key, lg): return jax.random.categorical(key, lg, axis=-1)
def inv_cdf(key, lg):
    p = jax.nn.softmax(lg, axis=-1)
    c = jnp.cumsum(p, axis=-1)
    u = jax.random.uniform(key, lg.shape[:-1] + (1,)) * c[..., -1:]
    return jnp.minimum(jnp.sum(c <= u, axis=-1), lg.shape[-1] - 1)
def uniforms(key, lg): return jax.random.uniform(key, lg.shape).sum()
for B in (1, 9):
    lg = jax.random.normal(jax.random.PRNGKey(1), (B, V)) * 3
    for name, f in (("categorical", gumbel), ("inverse-cdf", inv_cdf), ("V uniforms alone", uniforms)):
        f = jax.jit(f); k = jax.random.PRNGKey(0); jax.block_until_ready(f(k, lg))
        ts = []
        for i in range(50):
            t = time.perf_counter(); jax.block_until_ready(f(k, lg)); ts.append(time.perf_counter() - t)
        print(f"B={B} {name}: {np.median(ts) * 1e6:.0f} us")
