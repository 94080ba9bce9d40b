"""The engine's executables timed one by one (blocking after each) in a 2-token default generate of
Spec-Bench's longest first turn, third of three calls, ms.   python docs/experiments/prefill-kernel/call_parts.py"""
import json, time, jax
from specjax import api
from specjax.engine import Engine
rows = [json.loads(l) for l in open("/work/shared/data/eval/spec_bench_questions.jsonl")]
prompt = sorted(rows, key=lambda r: -len(r["turns"][0]))[0]["turns"][0]
g = api.Generator.load()
eng = g.engine
orig = eng._run
times = {}
def timed(name, fn, args, static):
    out = orig(name, fn, args, static); jax.block_until_ready(out)
    return out
def run(name, fn, args, static):
    t = time.perf_counter(); out = timed(name, fn, args, static); times.setdefault(name, []).append(time.perf_counter() - t); return out
eng._run = run
for _ in range(3):
    times.clear(); g.generate([prompt], max_new_tokens=2, chat=True)
print({k: [round(x * 1e3) for x in v] for k, v in times.items()})
