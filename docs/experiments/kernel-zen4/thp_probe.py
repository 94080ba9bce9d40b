"""A/B: the kernel's weight matmuls with the packed weights in 4 KB pages vs collapsed into 2 MB pages."""
import ctypes, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
from specjax import api, model, skinny
libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_HUGEPAGE, MADV_COLLAPSE, H = 14, 25, 2 << 20
def huge(params):
    n_ok = n_bad = 0
    for leaf in jax.tree.leaves(params):
        ptr = leaf.unsafe_buffer_pointer(); end = ptr + leaf.nbytes
        a = ptr // H * H; b = -(-end // H) * H
        r1 = libc.madvise(a, b - a, MADV_HUGEPAGE); r2 = libc.madvise(a, b - a, MADV_COLLAPSE)
        if r1 == 0 and r2 == 0: n_ok += 1
        else: n_bad += 1
    return n_ok, n_bad
llm = api.load(None); cfg = llm.cfg; D = cfg.hidden_size
pb = skinny.pack_params(llm.params, cfg)
orig = skinny._in_huge_pages
skinny._in_huge_pages = lambda a: jnp.asarray(np.ascontiguousarray(a))
pa = skinny.pack_params(api.load(None).params, cfg)
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
ps = {"4K": pa, "2M": pb}
for T in sizes:
    for p in ps.values(): jax.block_until_ready(chain(p, xs[T]))
res = {(n, T): [] for n in ps for T in sizes}
for _ in range(15):
    for T in sizes:
        for n, p in ps.items():
            t = time.perf_counter(); jax.block_until_ready(chain(p, xs[T])); res[(n, T)].append(time.perf_counter() - t)
for T in sizes:
    a, b = (statistics.median(res[(n, T)]) * 1e3 for n in ps)
    print(f"T={T}: 4K {a:.1f} ms  2M {b:.1f} ms  ratio {b/a:.2f}")
