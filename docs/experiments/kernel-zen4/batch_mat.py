import sys, time
sys.path.insert(0, "scripts")
from bench_bf16 import PROMPTS
from specjax import api
g = api.Generator.load(log=lambda s: print(s, file=sys.stderr)); g.engine.progress = lambda s: print(s, file=sys.stderr)
P = PROMPTS[:8]
t = time.perf_counter(); rs = g.generate(P, max_new_tokens=128, chat=True); tb = time.perf_counter() - t
print("batched: tokens", sum(len(r["token_ids"]) for r in rs), "steps", sum(r["llm_steps"] for r in rs),
      "MATs", [round(r["mean_accepted"], 2) for r in rs], f"{tb:.1f}s", "fallback:", getattr(g.engine, "last_fallback", None))
t = time.perf_counter(); rs1 = [g.generate([p], max_new_tokens=128, chat=True)[0] for p in P]; t1 = time.perf_counter() - t
print("one by one: tokens", sum(len(r["token_ids"]) for r in rs1), "steps", sum(r["llm_steps"] for r in rs1),
      "MATs", [round(r["mean_accepted"], 2) for r in rs1], f"{t1:.1f}s")
print("same outputs:", all(a["token_ids"] == b["token_ids"] for a, b in zip(rs, rs1)))
