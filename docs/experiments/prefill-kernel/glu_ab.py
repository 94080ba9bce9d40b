"""(Needs glu.patch applied: git apply docs/experiments/prefill-kernel/glu.patch.) The gated MLP as one kernel call (skinny.glu: gate, up and silu(gate) * up) vs the kernel's gate_up
matmul + XLA's silu and product: one tree forward + LM head (tree_search.tree_forward, the default
LLM, B = 1, prefix 100 in 320 slots) at N tokens, both compiled in one process, interleaved, medians.

    python docs/experiments/prefill-kernel/glu_ab.py [1,9,16] [ROUNDS]
"""
import statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
from specjax import api, model, skinny
from specjax.tree_search import random_tree, tree_forward

sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1,9,16").split(",")]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg)
F = cfg.intermediate_size
perm = np.stack([np.arange(F).reshape(-1, 16), F + np.arange(F).reshape(-1, 16)], 1).reshape(-1)  # g0 u0 g1 u1 ..
pg = dict(p, layers=[dict(lp, gate_up=skinny.pack(np.concatenate([np.asarray(llm.params["layers"][i]["gate"]),
                                                                  np.asarray(llm.params["layers"][i]["up"])], 1)[:, perm]))
                     for i, lp in enumerate(p["layers"])])
params = {"glu": pg, "unfused": p}
rng = np.random.default_rng(0)
trees = {n: random_tree(n, rng) for n in sizes}
fwds, caches = {}, {}
fits = skinny.glu_fits
for name, rule in (("glu", fits), ("unfused", lambda w: False)):
    skinny.glu_fits = rule  # read while tracing
    fwds[name] = jax.jit(tree_forward(cfg, 100, 320), donate_argnums=1)
    caches[name] = model.init_cache(cfg, 1, 320, jnp.float32)
    for n in sizes:
        out, caches[name] = jax.block_until_ready(fwds[name](params[name], caches[name], trees[n]))
    skinny.glu_fits = fits
logits = {}
for name in fwds:
    c = model.init_cache(cfg, 1, 320, jnp.float32)
    logits[name] = np.asarray(fwds[name](params[name], c, trees[sizes[-1]])[0])
print("logits max |diff| / max |logit|:", float(np.abs(logits["glu"] - logits["unfused"]).max() / np.abs(logits["unfused"]).max()))
times = {(k, n): [] for k in fwds for n in sizes}
for _ in range(rounds):
    for n in sizes:
        for name in fwds:
            t = time.perf_counter()
            _, caches[name] = jax.block_until_ready(fwds[name](params[name], caches[name], trees[n]))
            times[name, n].append(time.perf_counter() - t)
for n in sizes:
    g, u = statistics.median(times["glu", n]), statistics.median(times["unfused", n])
    print(f"N={n}: glu {g * 1e3:.2f} ms, unfused {u * 1e3:.2f} ms, glu/unfused {g / u:.3f}")
