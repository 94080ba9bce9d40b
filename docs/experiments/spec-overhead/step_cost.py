"""Steady-state cost of one loop step, speculative vs incremental, on one prompt, in one process: each
side generates 32 and then 160 new tokens (greedy, ignore EOS is not available, so a prompt that
stops early says so), and (t_160 - t_32) / (steps_160 - steps_32) leaves prefill and per-call costs
out. Rounds alternate. The default prompt is the README's; --context N takes held-out context task N.

    python docs/experiments/spec-overhead/step_cost.py [--context N | --specbench-longest N] [--rounds 3]
                                                       [--drafters feature,lookup --budget 4]
"""
import argparse, statistics, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
from specjax import api
from measure_acceptance import read_texts

ap = argparse.ArgumentParser()
ap.add_argument("--context", type=int, default=None)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--drafters", default=None)
ap.add_argument("--budget", type=int, default=None)
ap.add_argument("--specbench-longest", type=int, default=None, help="Spec-Bench's N-th longest first turn (0: the longest)")
args = ap.parse_args()
prompt = "What is speculative decoding?"
if args.specbench_longest is not None:
    import json
    rows = [json.loads(l) for l in open(ROOT.parent / "shared/data/eval/spec_bench_questions.jsonl")]
    prompt = sorted(rows, key=lambda r: -len(r["turns"][0]))[args.specbench_longest]["turns"][0]
elif args.context is not None:
    prompt = read_texts(str(ROOT.parent / "shared/data/boost_prompts/context_tasks.jsonl"))[5000 + args.context]
gs = {"inc": api.Generator.load(mode="incremental"),
      "spec": api.Generator.load(drafters=args.drafters, budget=args.budget)}
def gen(g, n):
    t = time.perf_counter(); r = g.generate([prompt], max_new_tokens=n, chat=True)[0]
    return time.perf_counter() - t, r["llm_steps"], len(r["token_ids"]), r["mean_accepted"]
for g in gs.values(): gen(g, 32); gen(g, 160)
res = {n: [] for n in gs}
for rnd in range(args.rounds):
    for name, g in gs.items():
        t1, s1, _, _ = gen(g, 32); t2, s2, n2, mat = gen(g, 160)
        if n2 < 160: print(f"{name}: stopped at {n2} tokens")
        res[name].append((t2 - t1) / (s2 - s1))
        print(f"round {rnd} {name}: {res[name][-1]*1e3:.2f} ms/step (MAT {mat:.2f} over 160)", flush=True)
i, s = statistics.median(res["inc"]), statistics.median(res["spec"])
print(f"median: spec step {s*1e3:.2f} ms, incremental step {i*1e3:.2f} ms, ratio {s/i:.3f}")
