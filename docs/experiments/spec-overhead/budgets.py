"""Feature + lookup at several budgets vs incremental, steady-state step cost on the README prompt, one
process: (t_160 - t_32) / (steps_160 - steps_32), medians of 3 rounds, and the 160-token call's tokens/s.

    python docs/experiments/spec-overhead/budgets.py 4,5,6,7,8
"""
import statistics, sys, time
from specjax import api
prompt = "What is speculative decoding?"
bs = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "4,8").split(",")]
gs = {b: api.Generator.load(drafters="feature,lookup", budget=b) for b in bs}
gs["inc"] = api.Generator.load(mode="incremental")
def gen(g, n):
    t = time.perf_counter(); r = g.generate([prompt], max_new_tokens=n, chat=True)[0]
    return time.perf_counter() - t, r["llm_steps"]
for g in gs.values(): gen(g, 32); gen(g, 160)
res = {k: [] for k in gs}; tot = {k: [] for k in gs}
for rnd in range(3):
    for k, g in gs.items():
        t1, s1 = gen(g, 32); t2, s2 = gen(g, 160)
        res[k].append((t2 - t1) / (s2 - s1)); tot[k].append(160 / t2)
        if rnd == 0: print(k, "steps at 160:", s2, flush=True)
inc = statistics.median(res["inc"])
for k in gs:
    print(f"{k}: step {statistics.median(res[k])*1e3:.2f} ms ({statistics.median(res[k])/inc:.3f}x inc), 160-token call {statistics.median(tot[k]):.1f} tok/s")
