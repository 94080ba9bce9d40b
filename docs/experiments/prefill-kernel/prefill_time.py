"""Two-token calls (prefill + 2 tokens) of prompts of N tokens (ids 1000..), min of 3, for the default
speculative generator and incremental decoding; run from two trees alternately to compare them:

    for t in /tmp/wt_old .; do (cd $t && PYTHONPATH=$t python /work/main/docs/experiments/prefill-kernel/prefill_time.py); done
"""
import sys, time
import specjax
from specjax import api

sizes = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "300,500,1000,1500").split(",")]
line = []
for mode in (None, "incremental"):
    g = api.Generator.load(mode=mode) if mode else api.Generator.load()
    for n in sizes:
        ids = list(range(1000, 1000 + n))
        g.generate_rows([{"prompt_ids": ids}], max_new_tokens=2)
        ts = []
        for _ in range(3):
            t = time.perf_counter(); r = g.generate_rows([{"prompt_ids": ids}], max_new_tokens=2)[0]; ts.append(time.perf_counter() - t)
        line.append(f"{mode or 'spec'} {n}: {min(ts) * 1e3:.0f} ms")
print(specjax.__file__.split("/specjax/")[0], " | ".join(line))
