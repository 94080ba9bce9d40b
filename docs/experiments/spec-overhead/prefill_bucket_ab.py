"""A 300-token prompt (token ids 1000..1299) generating 128 tokens, default speculative vs incremental,
with the prefill padded to the cache's bucket (512, as before) and to prefill_bucket's (320), one process,
alternating: wall seconds of each call (prefill included), best of 3.

    python docs/experiments/spec-overhead/prefill_bucket_ab.py
"""
import time
from specjax import api, engine

new = engine.prefill_bucket
old = engine.prompt_bucket
ids = list(range(1000, 1300))
gens = {"spec": api.Generator.load(), "inc": api.Generator.load(mode="incremental")}
res = {}


def seconds(g) -> float:
    t = time.perf_counter()
    g.generate_rows([{"prompt_ids": ids}], max_new_tokens=128)
    return time.perf_counter() - t


for rnd in range(2):
    for mode, g in gens.items():
        for name, fn in (("512", old), ("320", new)):
            engine.prefill_bucket = fn
            seconds(g)  # compiles
            res.setdefault((mode, name), []).append(min(seconds(g) for _ in range(3)))
engine.prefill_bucket = new
for (mode, name), v in res.items():
    print(f"{mode:4s} prefill over {name}: " + ", ".join(f"{x:.3f} s" for x in v) + f"  ({128 / min(v):.1f} tokens/s)")
