"""Sampled decoding: incremental vs feature + lookup at budgets 4 and 8 (the watch off), one process,
alternating per prompt, held-out prompts (chat_prompts / context_tasks lines 5000+, as acceptance.json),
128 tokens, B = 1, temperature T, seed 0.

    python docs/experiments/sampling/temp_ab.py T [PROMPTS] [ROUNDS] [BUDGETS]
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from heldout import held_out_ids  # noqa: E402
from specjax import api
from specjax.sampling import SamplingConfig

T = float(sys.argv[1]); count = int(sys.argv[2]) if len(sys.argv) > 2 else 6
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
budgets = [int(b) for b in (sys.argv[4] if len(sys.argv) > 4 else "4,8").split(",")]
gens = {"inc": api.Generator.load(mode="incremental")}
for b in budgets:
    gens[f"b{b}"] = api.Generator.load(drafters="feature,lookup", budget=b)
tok = gens["inc"].llm.tokenizer
ps = held_out_ids(tok, count)
kw = dict(batch_size=1, batching="static", sampling=SamplingConfig(temperature=T), seed=0)
for g in gens.values():
    g.engine.fallback = None
    g.generate_ids([ps[0]], 8, **kw)
res = {k: [0.0, 0, 0] for k in gens}
for rep in range(rounds):
    for p in ps:
        for k, g in (list(gens.items()) if rep % 2 == 0 else list(gens.items())[::-1]):
            r = g.generate_ids([p], 128, **kw)[0]
            res[k][0] += r.seconds; res[k][1] += r.llm_steps; res[k][2] += len(r.token_ids)
inc = res["inc"][2] / res["inc"][0]
for k, (s, n, t) in res.items():
    print(f"T={T} {k:4s}: {t / s:6.1f} tok/s ({t / s / inc:.2f}x), {s / n * 1e3:6.2f} ms a step, MAT {t / n:.3f}")
