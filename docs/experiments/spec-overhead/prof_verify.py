"""Where a tree verification's time goes at N nodes vs one token (the kernel path, the default LLM, B=1,
prefix 100 in 320 slots, as scripts/bench_tree_verify.py): jax.profiler over repeated forwards + LM head,
time per forward in the weight matmuls (kernel calls but the attention's), the attention kernel calls
(every layer's second kernel call: qkv, attend, o, gate_up, down), and the other XLA ops.

    python docs/experiments/spec-overhead/prof_verify.py [1,8,16]
"""
import collections, glob, re, shutil, sys, time
import numpy as np, jax, jax.numpy as jnp
from jax.profiler import ProfileData
from specjax import api, model, skinny
from specjax.tree_search import random_tree, tree_forward

sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1,8,16").split(",")]
llm = api.load(None); cfg = llm.cfg
params = skinny.pack_params(llm.params, cfg)
slots, R = 320, 20
fwd = jax.jit(tree_forward(cfg, 100, slots), donate_argnums=1)

rng = np.random.default_rng(0)
cache = model.init_cache(cfg, 1, slots, jnp.float32)
trees = {n: random_tree(n, rng) for n in sizes}
for n in sizes:
    _, cache = jax.block_until_ready(fwd(params, cache, trees[n]))
for n in sizes:
    d = f"/tmp/probe/verify_{n}"; shutil.rmtree(d, ignore_errors=True)
    jax.profiler.start_trace(d)
    t = time.perf_counter()
    for _ in range(R):
        _, cache = jax.block_until_ready(fwd(params, cache, trees[n]))
    wall = (time.perf_counter() - t) / R
    jax.profiler.stop_trace()
    pd = ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
    calls = collections.defaultdict(float); other = collections.Counter(); nother = 0
    for plane in pd.planes:
        for line in plane.lines:
            for ev in line.events:
                st = dict((k, v) for k, v in ev.stats if k == "hlo_module")
                if st.get("hlo_module") != "jit_fwd" or ev.name.startswith(("ThunkExecutor", "while")):
                    continue
                if ev.name.startswith("ffi_call"):
                    calls[ev.name] += ev.duration_ns
                else:
                    other[re.sub(r"\.\d+$", "", ev.name)] += ev.duration_ns; nother += 1
    names = sorted(calls, key=lambda s: int(s.split(".")[1]))
    per = [calls[c] / R / 1e6 for c in names]
    layer = np.array(per[:150]).reshape(30, 5)
    att = layer[:, 1].sum(); mm = layer.sum() - att + sum(per[150:])
    print(f"N={n}: wall {wall*1e3:.2f} ms/forward; weight matmuls {mm:.2f} ms (head {sum(per[150:]):.2f}), "
          f"attention kernel {att:.2f} ms, other ops {sum(other.values())/R/1e6:.2f} ms ({nother/R:.0f}); "
          f"per layer call ms {np.round(layer.mean(0), 3)}")
    print("   top other:", ", ".join(f"{k} {v/R/1e6:.2f}" for k, v in other.most_common(5)))
