"""Decoding speed on Spec-Bench's longest prompts (rag and summarization first turns; evaluation data,
nothing tuned on it): the default speculative generator and incremental, 128 new tokens each, best of 2,
tokens/s of the whole call (prefill included) and of the decode (tokens / (call - a 1-token call)).
Run from two trees alternately to compare them:

    for t in /tmp/wt_old .; do (cd $t && PYTHONPATH=$t python /work/main/docs/experiments/prefill-kernel/long_ab.py); done
"""
import json, sys, time
from pathlib import Path
import specjax
from specjax import api

Q = Path("/work/shared/data/eval/spec_bench_questions.jsonl")
rows = [json.loads(l) for l in Q.open()]
count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
rows = sorted(rows, key=lambda r: -len(r["turns"][0]))[:count]
out = []
for mode in (None, "incremental"):
    g = api.Generator.load(mode=mode) if mode else api.Generator.load()
    toks = call = dec = 0.0
    for r in rows:
        req = [{"prompt": r["turns"][0]}]
        g.generate_rows(req, max_new_tokens=128, chat=True)
        best, one = 1e9, 1e9
        for _ in range(2):
            t = time.perf_counter(); res = g.generate_rows(req, max_new_tokens=128, chat=True)[0]; best = min(best, time.perf_counter() - t)
            t = time.perf_counter(); g.generate_rows(req, max_new_tokens=1, chat=True); one = min(one, time.perf_counter() - t)
        n = len(res["token_ids"]) if "token_ids" in res else 128
        toks += n; call += best; dec += best - one
    out.append(f"{mode or 'spec'}: {toks / call:.1f} tok/s (call), {toks / dec:.1f} (decode)")
print(specjax.__file__.split("/specjax/")[0], f"{count} longest prompts |", " | ".join(out))
