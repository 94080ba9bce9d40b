"""Speed A/B of the feature drafter's tree: feature + lookup at a budget with the static <3,1,1,1> tree
and with a dynamic tree (EXPANSION, FRONTIER), beside incremental decoding, in one process, alternating
per prompt, 4 chat prompts (the README's + 3) x ROUNDS, 128 tokens, B = 1, greedy.

    python docs/experiments/dynamic-tree/speed_ab.py BUDGET EXPANSION FRONTIER [ROUNDS]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from specjax import api  # noqa: E402
from specjax.drafters import setup  # noqa: E402

budget, exp, frontier = int(sys.argv[1]), tuple(int(x) for x in sys.argv[2].split(",")), int(sys.argv[3])
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
inc = api.Generator.load(mode="incremental")
static = api.Generator.load(drafters="feature,lookup", budget=budget)
setup.FEATURE_EXPANSION, setup.FEATURE_FRONTIER = exp, frontier
dynamic = api.Generator.load(drafters="feature,lookup", budget=budget)
print("static", static.engine.drafters[0].expansion, static.engine.drafters[0].frontier,
      "dynamic", dynamic.engine.drafters[0].expansion, dynamic.engine.drafters[0].frontier)
gens = {"inc": inc, "static": static, "dynamic": dynamic}
tok = inc.llm.tokenizer
ps = [tok.encode(p, chat=True) for p in ["What is speculative decoding?",
                                         "Explain how a refrigerator keeps food cold, step by step.",
                                         "Write a short poem about the sea.",
                                         "Write a Python function that checks whether a string is a palindrome."]]
for g in gens.values():
    g.engine.fallback = None
    for p in ps:
        g.generate_ids([p], 8, batch_size=1, batching="static")
res = {k: [] for k in gens}
outs = {k: [] for k in gens}
for rep in range(rounds):
    for p in ps:
        for k, g in (list(gens.items()) if rep % 2 == 0 else list(gens.items())[::-1]):
            r = g.generate_ids([p], 128, batch_size=1, batching="static")[0]
            res[k].append((r.seconds, r.llm_steps, len(r.token_ids)))
            outs[k].append(r.token_ids)
print("outputs identical:", outs["static"] == outs["inc"] == outs["dynamic"])
for k, v in res.items():
    ms = min(s / n for s, n, t in v) * 1000
    print(f"{k:8s} best {ms:6.2f} ms/step  MAT {sum(t for *_, t in v) / sum(n for _, n, _ in v):.3f}  "
          f"{sum(t for *_, t in v) / sum(s for s, *_ in v):.1f} tok/s")
