"""A/B of the feature drafter's weight dtype: feature + lookup budget 4 with the drafter packed in bfloat16
(the default) and in float32, beside incremental decoding, in one process, alternating, 3 chat prompts x
3 rounds, 128 tokens (docs/benchmarks.md, 2026-12-06 late night).

    python scripts/ab_draft_dtype.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from specjax import api
from specjax.drafters import feature
inc = api.Generator.load(mode="incremental")
bf = api.Generator.load(drafters="feature,lookup", budget=4)
feature.DRAFT_WEIGHT_DTYPE = "float32"
f32 = api.Generator.load(drafters="feature,lookup", budget=4)
print("dtypes", bf.engine.feature_ssm.params["head"].data.dtype, f32.engine.feature_ssm.params["head"].data.dtype)
gens = {"inc": inc, "bf16": bf, "f32": f32}
tok = inc.llm.tokenizer
ps = [tok.encode(p, chat=True) for p in ["What is speculative decoding?", "Explain how a refrigerator keeps food cold, step by step.", "Write a short poem about the sea."]]
for g in gens.values():
    g.engine.fallback = None
    for p in ps: g.generate_ids([p], 8, batch_size=1, batching="static")
res = {k: [] for k in gens}
outs = {k: [] for k in gens}
for rep in range(3):
    for p in ps:
        for k, g in (list(gens.items()) if rep % 2 == 0 else list(gens.items())[::-1]):
            r = g.generate_ids([p], 128, batch_size=1, batching="static")[0]
            res[k].append((r.seconds, r.llm_steps, len(r.token_ids)))
            outs[k].append(r.token_ids)
print("outputs identical:", outs["bf16"] == outs["inc"] == outs["f32"])
for k, v in res.items():
    ms = min(s / n for s, n, t in v) * 1000
    print(f"{k:6s} best {ms:6.2f} ms/step  MAT {sum(t for *_, t in v)/sum(n for _, n, _ in v):.3f}  {sum(t for *_, t in v) / sum(s for s, *_ in v):.1f} tok/s")
