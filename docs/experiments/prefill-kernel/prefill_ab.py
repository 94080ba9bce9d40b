"""Two-token calls (prefill + 2 tokens) of prompts of N tokens (ids 1000..), the many-row matmuls in the
kernel vs XLA's dot over unpacked weights (what the prefill ran before), alternating, min of 3, two
rounds; the default speculative generator and incremental decoding.

    python docs/experiments/prefill-kernel/prefill_ab.py [100,300,500,1000]
"""
import sys, time
import jax
from specjax import api, skinny

kernel = skinny.max_rows
xla = lambda: skinny.GENERIC_MAX_ROWS  # the old rule: > 64 rows to XLA's dot
sizes = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "100,300,500,1000").split(",")]
res, outs = {}, {}
for mode in ("incremental", None):
    g = api.Generator.load(mode=mode) if mode else api.Generator.load()
    for n in sizes:
        ids = list(range(1000, 1000 + n))
        for rnd in range(2):
            for name, fn in (("xla", xla), ("kernel", kernel)):
                skinny.max_rows = fn
                jax.clear_caches(); g.engine._compiled.clear()  # the rule is read when a function is traced
                g.generate_rows([{"prompt_ids": ids}], max_new_tokens=2)
                ts = []
                for _ in range(3):
                    t = time.perf_counter(); r = g.generate_rows([{"prompt_ids": ids}], max_new_tokens=2)[0]; ts.append(time.perf_counter() - t)
                outs.setdefault((mode or "spec", n), set()).add(r["text"])
                res.setdefault((mode or "spec", n, name), []).append(min(ts))
skinny.max_rows = kernel
for (mode, n, name), v in res.items():
    print(f"{mode:12s} {n:5d} tokens {name:6s}", " ".join(f"{x*1e3:7.0f} ms" for x in v))
for k, v in outs.items(): print(k, "same output" if len(v) == 1 else "OUTPUTS DIFFER")
