"""(Needs glu.patch.) skinny.glu vs the gate_up matmul + XLA silu * up vs the product alone, 30 chained
 layers of K 576, F 1,536 (gate panels interleaved with up panels for glu), M = 1 / 9 / 16, medians of 15."""
import time, jax, jax.numpy as jnp, numpy as np
from specjax import skinny
rng = np.random.default_rng(0)
K, F = 576, 1536
g = rng.standard_normal((K, F)).astype(np.float32) * 0.05; u = rng.standard_normal((K, F)).astype(np.float32) * 0.05
perm = np.stack([np.arange(F).reshape(-1, 16), F + np.arange(F).reshape(-1, 16)], 1).reshape(-1)
W = np.concatenate([g, u], 1)
pi = [skinny.pack(W[:, perm]) for _ in range(30)]
pc = [skinny.pack(W) for _ in range(30)]
def chain_glu(ws, x):
    for w in ws: x = x + skinny.glu(x, w)[..., :K]
    return x
def chain_mm(ws, x):
    for w in ws:
        a, b = jnp.split(skinny.matmul(x, w), 2, axis=-1)
        x = x + (jax.nn.silu(a) * b)[..., :K]
    return x
def chain_mm_only(ws, x):
    for w in ws:
        a, b = jnp.split(skinny.matmul(x, w), 2, axis=-1)
        x = x + (a * b)[..., :K]
    return x
fs = {"glu": (jax.jit(chain_glu), pi), "matmul+xla silu": (jax.jit(chain_mm), pc), "matmul, product only": (jax.jit(chain_mm_only), pc)}
for M in (1, 9, 16):
    x = jnp.asarray(rng.standard_normal((M, K)).astype(np.float32))
    r = {}
    for f, w in fs.values(): f(w, x).block_until_ready()
    for _ in range(15):
        for k, (f, w) in fs.items():
            t = time.perf_counter(); f(w, x).block_until_ready(); r.setdefault(k, []).append(time.perf_counter() - t)
    print(M, " | ".join(f"{k} {np.median(v)*1e3:.2f} ms" for k, v in r.items()))
