"""Each of the default LLM's weight matrices alone through skinny.matmul, 30 chained calls (distinct
weights per layer, as in a forward), at 1 / 9 / 16 rows: us a call, GB/s of weights, GFLOP/s.
Shapes interleaved round-robin, medians of 15.   python docs/experiments/step-ops/per_matrix.py"""
import time, sys
import jax, jax.numpy as jnp, numpy as np
from specjax import api, skinny

llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg)
rows = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "1,9,16").split(",")]
names = ["qkv", "o", "gate_up", "down"]
ws = {n: [lp[n] for lp in p["layers"]] for n in names}
fns = {}
for n in names:
    K = ws[n][0].shape[0]
    def f(x, ws, K=K):
        acc = jnp.zeros((), jnp.float32)
        for w in ws:
            y = skinny.matmul(x + acc, w)
            acc = acc + 1e-9 * y[..., :1].sum()  # chain the calls so none runs in parallel with another
        return acc
    fns[n] = (jax.jit(f), K)
xs = {(n, r): jnp.ones((1, r, fns[n][1]), jnp.float32) for n in names for r in rows}
for (n, r), x in xs.items(): jax.block_until_ready(fns[n][0](x, ws[n]))
ts = {k: [] for k in xs}
for _ in range(15):
    for (n, r), x in xs.items():
        t = time.perf_counter(); jax.block_until_ready(fns[n][0](x, ws[n])); ts[n, r].append(time.perf_counter() - t)
for n in names:
    K, N = ws[n][0].shape
    line = []
    for r in rows:
        s = np.median(ts[n, r]) / 30
        line.append(f"{r} rows {s*1e6:6.1f} us {K*N*4/s/1e9:5.1f} GB/s {2*K*N*r/s/1e9:5.0f} GFLOP/s")
    print(f"{n:8s} [{K}x{N}]: " + " | ".join(line))
