"""An upper bound on what fusing RMSNorm into the next matmul can save: the default LLM's tree forward
(+ head) at N tokens with the layers' norms as they are vs replaced by a bare multiply by the scale
(wrong outputs: a bound only), jitted apart, interleaved, medians.   python .../norm_bound.py 1,9,16"""
import sys, time
import jax, numpy as np
from specjax import api, model, tree_search

sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1,9,16").split(",")]
g = api.Generator.load(mode="incremental")
params, cfg = g.engine.llm.params, g.engine.llm.cfg
orig = model.norm
fns = {}
for name in ("norm", "bare"):
    model.norm = orig if name == "norm" else (lambda p, x, cfg: x * p["scale"])
    fns[name] = jax.jit(tree_search.tree_forward(cfg), donate_argnums=1)
    rng = np.random.default_rng(0)
    for n in sizes:
        cache = model.init_cache(cfg, 1, 320)
        jax.block_until_ready(fns[name](params, cache, tree_search.random_tree(n, rng)))
model.norm = orig
rng = np.random.default_rng(0)
trees = {n: tree_search.random_tree(n, rng) for n in sizes}
caches = {k: model.init_cache(cfg, 1, 320) for k in fns}
ts = {(k, n): [] for k in fns for n in sizes}
for _ in range(20):
    for n in sizes:
        for k, f in fns.items():
            t = time.perf_counter(); _, caches[k] = jax.block_until_ready(f(params, caches[k], trees[n])); ts[k, n].append(time.perf_counter() - t)
for n in sizes:
    a, b = np.median(ts["norm", n]) * 1e3, np.median(ts["bare", n]) * 1e3
    print(f"N={n}: with norms {a:.2f} ms, bare multiply {b:.2f} ms, saved {a - b:.2f} ms")
