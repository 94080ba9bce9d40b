"""Where a long prompt's speculative call spends its time: every executable the engine runs, timed
(blocking after each), with the loop's steps per call; the default speculative generator and
incremental on Spec-Bench's N-th longest first turn, 128 new tokens, third of three calls.

    python docs/experiments/long-context/call_trace.py [N] [max_new_tokens]
NOWINDOW=1: the feature SSM attends to every position (setup.FEATURE_WINDOW None).
"""
import json, os, sys, time
import jax
import numpy as np
from specjax import api, chunked, sharding
from specjax.drafters import setup
if os.environ.get("NOWINDOW"):
    setup.FEATURE_WINDOW = None

rows = [json.loads(l) for l in open("/work/shared/data/eval/spec_bench_questions.jsonl")]
idx = int(sys.argv[1]) if len(sys.argv) > 1 else 0
new = int(sys.argv[2]) if len(sys.argv) > 2 else 128
prompt = sorted(rows, key=lambda r: -len(r["turns"][0]))[idx]["turns"][0]
for mode in (None, "incremental"):
    g = api.Generator.load(mode=mode) if mode else api.Generator.load()
    eng = g.engine
    orig = eng._run
    log = []

    def run(name, fn, args, static, orig=orig, log=log):
        t = time.perf_counter(); out = orig(name, fn, args, static); jax.block_until_ready(out)
        log.append((name, time.perf_counter() - t)); return out
    eng._run = run
    orig_ex = eng._executable

    def executable(name, fn, args, static, orig_ex=orig_ex, log=log):
        exe = orig_ex(name, fn, args, static)
        def timed(*a):
            t = time.perf_counter(); out = exe(*a); jax.block_until_ready(out)
            n = int(a[-1]) if getattr(a[-1], "ndim", 1) == 0 else "-"
            log.append((f"{name}[{n}]", time.perf_counter() - t)); return out
        return timed
    eng._executable = executable
    for _ in range(3):
        log.clear(); t = time.perf_counter()
        res = g.generate_rows([{"prompt": prompt}], max_new_tokens=new, chat=True)[0]
        wall = time.perf_counter() - t
    n = len(res["token_ids"]) if "token_ids" in res else new
    steps = res.get("llm_steps")
    print(f"{mode or 'spec'}: wall {wall*1e3:.0f} ms, {n} tokens, steps {steps}, "
          f"prompt {len(res.get('prompt_ids', []))} ids")
    agg = {}
    for name, s in log:
        key = name.split("[")[0]
        agg.setdefault(key, [0, 0.0]); agg[key][0] += 1; agg[key][1] += s
    print("  ", {k: f"{c}x {s*1e3:.0f} ms" for k, (c, s) in agg.items()},
          f"unaccounted {(wall - sum(s for _, s in log))*1e3:.0f} ms")
    print("  ", [(nm, round(s * 1e3)) for nm, s in log])
