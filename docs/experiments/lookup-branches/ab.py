"""A/B (needs two_chains.patch applied: git apply docs/experiments/lookup-branches/two_chains.patch): prompt lookup with one chain vs two (lookup.Config.branches), merged with the feature SSM under
budgets, greedy MAT on the measure_acceptance prompts (held-out chat + context lines from 5000,
interleaved), 96 tokens. The second chain's rates are measured first (lookup.measure_rates(branch=2)) on
the LLM's greedy continuations of other held-out prompts (a feature data directory's chunks 1.., i.e.
held-out prompts 32..; the A/B's prompts are the first COUNT <= 32).

    python docs/experiments/lookup-branches/ab.py [BUDGETS [COUNT [DATA]]]   e.g. 4,8 16 runs/heldout/data
"""
import glob, sys, time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
import measure_acceptance as ma  # noqa: E402
from specjax import api, default_model  # noqa: E402
from specjax.drafters import acceptance, feature, lookup, setup  # noqa: E402
from specjax.engine import Engine  # noqa: E402
from specjax.sampling import SamplingConfig  # noqa: E402

budgets = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "4,8").split(",")]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 16
data = sys.argv[3] if len(sys.argv) > 3 else "runs/heldout/data"
base = lookup.Config(length=setup.LOOKUP_LENGTH, max_ngram=setup.LOOKUP_NGRAM, rates=acceptance.rates("lookup", "lookup"))
seqs, firsts = [], []
for part in sorted(glob.glob(f"{data}/tokens/part-*.npz"))[1:]:
    f = np.load(part)
    for toks, m in zip(f["tokens"], f["mask"]):
        idx = np.flatnonzero(m)
        if len(idx):
            start = int(np.flatnonzero(toks)[0])
            seqs.append(toks[start: idx[-1] + 1]); firsts.append(int(idx[0] - start - 1))
second = lookup.measure_rates(seqs, firsts, base, branch=2)
print(f"second chain's rates from {len(seqs)} continuations: depth 1 {second[0]}")
two = lookup.Config(length=base.length, max_ngram=base.max_ngram, rates=base.rates, branches=2,
                    second_rates=tuple(map(tuple, second)))

D = ROOT.parent / "shared" / "data" / "boost_prompts"
per = [ma.read_texts(str(D / f))[5000:5000 + count // 2] for f in ("chat_prompts.jsonl", "context_tasks.jsonl")]
texts = [t for g in zip(*per) for t in g]
gen = api.Generator.load(mode="incremental")
llm = gen.llm
prompts = [llm.tokenizer.encode(t, chat=True)[-256:] for t in texts]
fs = feature.load(str(default_model.DEFAULT_SSMS_DIR / "feature"), llm)
outs = {}
for n in budgets:
    for name, lk in (("one chain", base), ("two chains", two)):
        t0 = time.time()
        eng = Engine(llm, drafters=("feature", lk), budget=n, feature_ssm=fs)
        steps = toks = 0
        for i in range(0, len(prompts), 4):
            res = eng.generate_spec(prompts[i:i + 4], 96, SamplingConfig(), eos_ids=gen.eos_ids(), seed=0)
            steps += sum(r.llm_steps for r in res); toks += sum(len(r.token_ids) for r in res)
            outs.setdefault(i, set()).add(tuple(tuple(r.token_ids) for r in res))
        print(f"feature+lookup ({name}) budget {n}: MAT {toks / steps:.3f} ({len(prompts)} prompts, "
              f"{time.time() - t0:.0f} s)", flush=True)
print("outputs identical across runs:", all(len(v) == 1 for v in outs.values()))
