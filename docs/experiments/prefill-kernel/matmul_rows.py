"""ms a row and GFLOP/s of the default LLM's weight matmuls (probe_kernel_matmuls.weight_chain: every
layer + the head chained, B = 1, min of 5) by row count, through skinny.matmul: the kernel, or with
`xla` XLA's dot over the unpacked weight above 64 rows (the rule before 2026-12-07 night). The "kernel
as it was" row of docs/benchmarks.md ran this at a4b47ba with skinny.MAX_ROWS raised.

    python docs/experiments/prefill-kernel/matmul_rows.py [ROWS [xla]]   e.g. 64,128,256,512,1024"""
import statistics, sys, time, jax, jax.numpy as jnp
sys.path.insert(0, "scripts")
from probe_kernel_matmuls import weight_chain
from specjax import api, skinny

if len(sys.argv) > 2 and sys.argv[2] == "xla":
    skinny.max_rows = lambda: skinny.GENERIC_MAX_ROWS
llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg); D = cfg.hidden_size
chain = weight_chain(cfg)
nparams = sum(l.data.size for l in jax.tree.leaves(p, is_leaf=lambda a: isinstance(a, skinny.PackedWeight)) if isinstance(l, skinny.PackedWeight))
print("packed params", nparams / 1e6, "M")
rows = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "16,64,128,256,512,1024").split(",")]
xs = {T: jnp.ones((1, T, D)) for T in rows}
for T in rows: jax.block_until_ready(chain(p, xs[T]))
res = {T: [] for T in rows}
for _ in range(5):
    for T in rows:
        t = time.perf_counter(); jax.block_until_ready(chain(p, xs[T])); res[T].append(time.perf_counter() - t)
for T in rows:
    m = min(res[T]); print(f"T={T}: {m*1e3:.1f} ms  {2*nparams*T/m/1e9:.0f} GFLOP/s  {m/T*1e3:.2f} ms/row")
