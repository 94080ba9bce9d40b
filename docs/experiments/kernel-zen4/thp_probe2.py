import statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
from specjax import api, model, skinny
skinny._in_huge_pages = lambda a: jnp.asarray(np.ascontiguousarray(a))
llm = api.load(None); cfg = llm.cfg; D = cfg.hidden_size
pa = skinny.pack_params(llm.params, cfg)
pc = jax.block_until_ready(jax.tree.map(lambda x: x + 0, pa))
pb = jax.block_until_ready(jax.tree.map(lambda x: x + 0, pa))
for w in jax.tree.leaves(pb, is_leaf=lambda x: isinstance(x, skinny.PackedWeight)):
    if isinstance(w, skinny.PackedWeight): skinny._collapse(w.data)
print(open("/proc/meminfo").read().split("AnonHugePages:")[1].split("\n")[0])
@jax.jit
def chain(p, x):
    for lp in p["layers"]:
        x = x + model.dense(model.dense(x, lp["qkv"])[..., :D], lp["o"])
        gu = model.dense(x, lp["gate_up"])
        x = x + model.dense(gu[..., : gu.shape[-1] // 2], lp["down"])
    return model.lm_head(p, cfg, x)
sizes = [int(t) for t in sys.argv[1].split(",")]
xs = {T: jnp.ones((1, T, D)) for T in sizes}
ps = {"orig": pa, "copy": pc, "collapsed": pb}
for T in sizes:
    for p in ps.values(): jax.block_until_ready(chain(p, xs[T]))
res = {(n, T): [] for n in ps for T in sizes}
for _ in range(15):
    for T in sizes:
        for n, p in ps.items():
            t = time.perf_counter(); jax.block_until_ready(chain(p, xs[T])); res[(n, T)].append(time.perf_counter() - t)
for T in sizes:
    print(f"T={T}: " + "  ".join(f"{n} {statistics.median(res[(n, T)])*1e3:.1f}" for n in ps))
