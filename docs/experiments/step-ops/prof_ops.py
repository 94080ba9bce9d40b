"""(step-ops: prof_both.py + the other ops listed by name.) The default speculative loop and the incremental loop profiled in one process (jax.profiler, two
128-token generations of the README prompt each): per LLM step, kernel time, per-layer kernel calls,
the drafter's calls and the other XLA ops by kind. 

    python docs/experiments/spec-overhead/prof_both.py
"""
import collections, glob, shutil, sys, time, re
import numpy as np, jax
from specjax import api
from jax.profiler import ProfileData
gs = {"inc": api.Generator.load(mode="incremental"), "spec": api.Generator.load()}
prompt = "What is speculative decoding?"
for g in gs.values(): g.generate([prompt], max_new_tokens=128, chat=True)
d = "/tmp/probe/ops"; shutil.rmtree(d, ignore_errors=True)
jax.profiler.start_trace(d)
steps = collections.Counter(); wall = collections.Counter()
for rep in range(2):
    for name, g in gs.items():
        t = time.perf_counter(); r = g.generate([prompt], max_new_tokens=128, chat=True)[0]
        wall[name] += time.perf_counter() - t; steps[name] += r["llm_steps"]
jax.profiler.stop_trace()
for n in gs: print(n, steps[n], f"{wall[n]/steps[n]*1e3:.2f} ms/step")
f = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0]
pd = ProfileData.from_file(f)
mods = {"inc": "jit_incremental_until_finish", "spec": "jit_spec_until_finish"}
for n, mod in mods.items():
    calls = collections.defaultdict(list); other = 0.0; nev = 0
    for plane in pd.planes:
        for line in plane.lines:
            if "Eigen" not in line.name and "PjRt" not in line.name: continue
            for ev in line.events:
                st = dict((k, v) for k, v in ev.stats if k == "hlo_module")
                if st.get("hlo_module") != mod: continue
                if ev.name.startswith("ffi_call"): calls[ev.name].append(ev.duration_ns / 1e3)
                elif not ev.name.startswith(("ThunkExecutor", "while")): other += ev.duration_ns; nev += 1
    names = sorted(calls, key=lambda s: int(s.split(".")[1]))
    med = [np.median(calls[c]) for c in names]
    tot = sum(np.sum(calls[c]) for c in names) / steps[n] / 1e3
    print(n, len(names), "calls", f"kernel {tot:.2f} ms/step, other ops {other/steps[n]/1e6:.2f} ms/step ({nev/steps[n]:.0f}/step)")
    layer = np.array(med[-151:-1]).reshape(30, 5)
    print("  layer call medians (us)", np.median(layer, 0).round(1), "sum/layer", np.median(layer, 0).sum().round(1), "head", round(med[-1], 1))
    if len(names) > 151: print("  drafter calls", len(names) - 151, "sum median", round(sum(med[:-151]), 1), "us")
# The other ops by name (numbers stripped), ms per step, the largest first.
for n, mod in mods.items():
    by = collections.Counter(); cnt = collections.Counter()
    for plane in pd.planes:
        for line in plane.lines:
            if "Eigen" not in line.name and "PjRt" not in line.name: continue
            for ev in line.events:
                st = dict((k, v) for k, v in ev.stats if k == "hlo_module")
                if st.get("hlo_module") != mod or ev.name.startswith(("ffi_call", "ThunkExecutor", "while")): continue
                key = re.sub(r"[.\d]+$", "", ev.name)
                by[key] += ev.duration_ns; cnt[key] += 1
    print(n, "top other ops (ms/step, count/step):")
    for k, v in by.most_common(25):
        print(f"   {k:45s} {v / steps[n] / 1e6:6.3f} {cnt[k] / steps[n]:6.1f}")
