"""GFLOP/s of the default LLM's weight matmuls (probe_kernel_matmuls.weight_chain) by rows: the kernel
(<= 64 rows), XLA's dot over unpacked f32 weights (the prefill's path today), and the kernel over
64-row chunks of a many-row x.   python docs/experiments/prefill-kernel/matmul_rows.py"""
import statistics, sys, time, jax, jax.numpy as jnp
sys.path.insert(0, "scripts")
from probe_kernel_matmuls import weight_chain
from specjax import api, skinny

llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg); D = cfg.hidden_size
chain = weight_chain(cfg)
nparams = sum(l.data.size for l in jax.tree.leaves(p, is_leaf=lambda a: isinstance(a, skinny.PackedWeight)) if isinstance(l, skinny.PackedWeight))
print("packed params", nparams / 1e6, "M")
rows = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "16,32,48,64,128,256,320").split(",")]
xs = {T: jnp.ones((1, T, D)) for T in rows}
for T in rows: jax.block_until_ready(chain(p, xs[T]))
res = {T: [] for T in rows}
for _ in range(5):
    for T in rows:
        t = time.perf_counter(); jax.block_until_ready(chain(p, xs[T])); res[T].append(time.perf_counter() - t)
for T in rows:
    m = min(res[T]); print(f"T={T}: {m*1e3:.1f} ms  {2*nparams*T/m/1e9:.0f} GFLOP/s  {m/T*1e3:.2f} ms/row")
