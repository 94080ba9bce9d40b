"""RMSNorm's mean of squares in 61 chained norms (as a forward's 30 layers x 2 + the final one), per
formulation and row count: XLA:CPU sends some reduce shapes to YNNPACK (ynn_fusion, ~7.5 us a call in
the speculative step's profile) and others to its own loops.   python docs/experiments/step-ops/norm_probe.py"""
import time, sys
import jax, jax.numpy as jnp, numpy as np

D = 576
def variants():
    yield "mean(x*x)", lambda x: (x * x).mean(-1, keepdims=True)
    yield "sum(x*x)/D", lambda x: (x * x).sum(-1, keepdims=True) / D
    yield "einsum", lambda x: jnp.einsum("...d,...d->...", x, x)[..., None] / D
    yield "dot ones", lambda x: ((x * x) @ jnp.ones((D, 1), x.dtype)) / D
    yield "split 2x288", lambda x: (x * x).reshape(*x.shape[:-1], 2, D // 2).sum(-1).sum(-1, keepdims=True) / D
    yield "reduce_precision", lambda x: jax.lax.reduce_sum_p.bind(x * x, axes=(x.ndim - 1,))[..., None] / D

def chain(ms):
    def f(x, s):
        for i in range(61):
            x = x * jax.lax.rsqrt(ms(x) + 1e-5) * s[i] + 0.01
        return x
    return jax.jit(f)

rng = np.random.default_rng(0)
s = jnp.asarray(rng.normal(size=(61, D)).astype(np.float32))
for T in (1, 9, 16):
    x = jnp.asarray(rng.normal(size=(1, T, D)).astype(np.float32))
    fs = {name: chain(ms) for name, ms in variants()}
    ref = np.asarray(fs["mean(x*x)"](x, s))
    ts = {k: [] for k in fs}
    for f in fs.values(): jax.block_until_ready(f(x, s))
    for _ in range(30):
        for k, f in fs.items():
            t = time.perf_counter(); jax.block_until_ready(f(x, s)); ts[k].append(time.perf_counter() - t)
    print(f"T={T}:", ", ".join(f"{k} {np.median(v) * 1e6 / 61:.1f} us"
          f"{'' if np.array_equal(np.asarray(fs[k](x, s)), ref) else ' (floats differ)'}" for k, v in ts.items()))
