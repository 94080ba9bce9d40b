"""Feature + lookup at a fixed budget with the feature SSM's chain cut at different depths: MAT and
tokens/s side by side (engines built once, rounds alternating), B = 1, greedy, measure_acceptance's
held-out chat / context prompts, incremental decoding as the reference.

    python docs/experiments/spec-overhead/depth_ab.py [--budget 4] [--count 16] [--rounds 2] [--shapes 3,1,1,1 3,1,1 3,1]
"""
import argparse, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
import numpy as np
from specjax import api, default_model
from specjax.drafters import feature, setup
from specjax.engine import Engine
from specjax.sampling import SamplingConfig
from measure_acceptance import read_texts

ap = argparse.ArgumentParser()
ap.add_argument("--budget", type=int, default=4)
ap.add_argument("--count", type=int, default=16)
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--max-new-tokens", type=int, default=96)
ap.add_argument("--shapes", nargs="+", default=["3,1,1,1", "3,1,1", "3,1"])
ap.add_argument("--drafters", default="feature,lookup")
args = ap.parse_args()
data = ROOT.parent / "shared" / "data" / "boost_prompts"
files = [data / "chat_prompts.jsonl", data / "context_tasks.jsonl"]
per = [read_texts(str(f))[5000: 5000 + -(-args.count // 2)] for f in files]
texts = [t for g in zip(*per) for t in g][: args.count]
gen = api.Generator.load(mode="incremental")
llm = gen.llm; eos = gen.eos_ids()
prompts = [llm.tokenizer.encode(t, chat=True)[-256:] for t in texts]
fs = feature.load(default_model.DEFAULT_SSMS_DIR / "feature", llm)
engines = {}
for s in args.shapes:
    setup.FEATURE_EXPANSION = tuple(int(x) for x in s.split(","))
    engines[s] = Engine(llm, drafters=tuple(args.drafters.split(",")), budget=args.budget, feature_ssm=fs)
inc = Engine(llm)
def run(name, e):
    t0 = time.perf_counter(); toks = steps = 0; outs = []
    for p in prompts:
        r = (e.generate_incremental if e is inc else e.generate_spec)([p], args.max_new_tokens, SamplingConfig(), eos_ids=eos)[0]
        toks += len(r.token_ids); steps += r.llm_steps; outs.append(tuple(r.token_ids))
    return toks, steps, time.perf_counter() - t0, outs
for name, e in list(engines.items()) + [("inc", inc)]:  # compile
    (e.generate_incremental if e is inc else e.generate_spec)([prompts[0]], 8, SamplingConfig(), eos_ids=eos)
tot = {n: [0, 0, 0.0] for n in list(engines) + ["inc"]}; ref = None
for rnd in range(args.rounds):
    for name, e in [("inc", inc)] + list(engines.items()):
        toks, steps, t, outs = run(name, e)
        if ref is None: ref = outs
        assert outs == ref, f"{name}: output differs from incremental"
        tot[name][0] += toks; tot[name][1] += steps; tot[name][2] += t
        print(f"round {rnd} {name:10s} MAT {toks/steps:.3f} {toks/t:6.1f} tok/s {t/steps*1e3:6.2f} ms/step", flush=True)
base = tot["inc"][0] / tot["inc"][2]
for n, (toks, steps, t) in tot.items():
    print(f"{n:10s} MAT {toks/steps:.3f}  {toks/t:6.1f} tok/s  {t/steps*1e3:6.2f} ms/step  {toks/t/base:.3f}x incremental")
