"""The prefill of a 300-token prompt (token ids 1000..1299) padded to prompt_bucket (512) vs multiples of 64
(320), incremental (chunked prefill) and the default speculative decoding (one-shot prefill with the
feature SSM's features), two-token calls, min of 3, two rounds.

    python docs/experiments/spec-overhead/bucket_probe.py
"""
import time, statistics, sys
from specjax import api, engine
orig = engine.prompt_bucket  # what the prefill padded to before (and the cache still does)
fine = engine.prefill_bucket  # multiples of 64 between 64 and 512
prompt_ids = list(range(1000, 1300))  # 300 tokens
res = {}
for mode in ("incremental", None):
    g = api.Generator.load(mode=mode) if mode else api.Generator.load(drafters="feature,lookup", budget=4)
    for name, fn in (("pow2", orig), ("x64", fine), ("pow2", orig), ("x64", fine)):
        engine.prefill_bucket = fn
        g.generate_rows([{"prompt_ids": prompt_ids}], max_new_tokens=2)
        ts = []
        for _ in range(3):
            t = time.perf_counter(); r = g.generate_rows([{"prompt_ids": prompt_ids}], max_new_tokens=2)[0]; ts.append(time.perf_counter() - t)
        res.setdefault((mode or "spec", name), []).append(min(ts))
for k, v in res.items(): print(k, [f"{x*1e3:.0f} ms" for x in v])
engine.prefill_bucket = fine
