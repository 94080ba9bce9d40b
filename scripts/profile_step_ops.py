"""One decode step of T tokens (default LLM, kernel on, 320 slots) under jax.profiler: time per step by op
name (kernel calls, XLA fusions, loops), to see what is not a weight matmul (docs/benchmarks.md, issue 12).

    python scripts/profile_step_ops.py T [B]   (B rows of T tokens each; default 1)
"""
import functools, glob, os, sys, collections, jax, jax.numpy as jnp, shutil
from specjax import api, model, skinny
llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg); S = 320
T = int(sys.argv[1]); B = int(sys.argv[2]) if len(sys.argv) > 2 else 1
pos = jnp.broadcast_to(jnp.arange(100, 100 + T)[None], (B, T))
mask = jnp.arange(S)[None, None, :] <= pos[:, :, None]
@functools.partial(jax.jit, donate_argnums=1)
def step(p, cache):
    h, cache = model.forward(p, cfg, jnp.ones((B, T), jnp.int32), pos, cache, pos, mask)
    return model.lm_head(p, cfg, h), cache
cache = model.init_cache(cfg, B, S)
for _ in range(3): _, cache = jax.block_until_ready(step(p, cache))
d = f"/tmp/probe/trace{T}x{B}"; shutil.rmtree(d, ignore_errors=True)
jax.profiler.start_trace(d)
N = 10
for _ in range(N): _, cache = jax.block_until_ready(step(p, cache))
jax.profiler.stop_trace()
from jax.profiler import ProfileData
f = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0]
pd = ProfileData.from_file(f)
tot = collections.Counter(); cnt = collections.Counter()
for plane in pd.planes:
    for line in plane.lines:
        for ev in line.events:
            key = (plane.name[:20], line.name[:30], ev.name.split(".")[0][:40])
            tot[key] += ev.duration_ns; cnt[key] += 1
for k, v in tot.most_common(40):
    print(f"{v/N/1e6:8.3f} ms/step  n={cnt[k]//N:5d}  {k}")
print("---- by name")
byname = collections.Counter(); n2 = collections.Counter()
for (pl, ln, name), v in tot.items():
    if ln.startswith("python") or name.startswith("ThunkExecutor"): continue
    byname[name] += v; n2[name] += cnt[(pl, ln, name)]
for k, v in byname.most_common(25):
    print(f"{v/N/1e6:8.3f} ms/step n={n2[k]//N:4d} {k}")
