"""The feature SSM's dynamic tree at depth 4 (shipped <4,4,4,4>, frontier 4) vs depth 3 (<4,4,4>), merged
with lookup at one budget, beside incremental, in one process, alternating per prompt; held-out
prompts (chat_prompts / context_tasks lines 5000+), 128 tokens, B = 1, greedy, the watch off.

    python docs/experiments/tree-depth/depth_ab.py BUDGET [PROMPTS] [ROUNDS]
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heldout import held_out_ids  # noqa: E402
from specjax import api
from specjax.drafters import setup

budget = int(sys.argv[1]); count = int(sys.argv[2]) if len(sys.argv) > 2 else 8
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
gens = {"inc": api.Generator.load(mode="incremental")}
for exp in ((4, 4, 4, 4), (4, 4, 4)):
    setup.FEATURE_EXPANSION = exp
    gens["d%d" % len(exp)] = api.Generator.load(drafters="feature,lookup", budget=budget)
tok = gens["inc"].llm.tokenizer
ps = held_out_ids(tok, count)
kw = dict(batch_size=1, batching="static")
for g in gens.values():
    g.engine.fallback = None
    g.generate_ids([ps[0]], 8, **kw)
res = {k: [0.0, 0, 0] for k in gens}; outs = {k: [] for k in gens}
for rep in range(rounds):
    for p in ps:
        for k, g in (list(gens.items()) if rep % 2 == 0 else list(gens.items())[::-1]):
            r = g.generate_ids([p], 128, **kw)[0]
            res[k][0] += r.seconds; res[k][1] += r.llm_steps; res[k][2] += len(r.token_ids); outs[k].append(r.token_ids)
print("outputs identical:", outs["d4"] == outs["inc"] == outs["d3"])
inc = res["inc"][2] / res["inc"][0]
for k, (s, n, t) in res.items():
    print(f"b{budget} {k:4s}: {t / s:6.1f} tok/s ({t / s / inc:.3f}x), {s / n * 1e3:6.2f} ms a step, MAT {t / n:.3f}")
