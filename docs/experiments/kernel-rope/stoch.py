"""T=0.7 MAT on Spec-Bench (N per category, 128 tokens): sampled children vs top-k children (one-hot q)."""
import sys, json, time
from collections import defaultdict
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from specjax import api, default_model
from specjax.drafters import feature
from specjax.drafters.setup import AUTO_SSM_EXPANSION
from specjax.engine import Engine
from specjax.sampling import SamplingConfig
from specjax.tree import TreeConfig
per_cat = int(sys.argv[1]); which = sys.argv[2]  # merged16 | fl8 | fl4
qs = [json.loads(l) for l in open(ROOT.parent / "shared/data/eval/spec_bench_questions.jsonl")]
per = defaultdict(list)
for q in qs:
    if len(per[q["category"]]) < per_cat:
        per[q["category"]].append(q)
gen = api.Generator.load(mode="incremental"); llm = gen.llm
fs = feature.load(str(default_model.DEFAULT_SSMS_DIR / "feature"), llm)
if which == "merged16":
    ssms = [api.load(str(p)) for p in default_model.default_ssm_dirs()]
    eng = Engine(llm, ssms, TreeConfig(expansion=AUTO_SSM_EXPANSION, num_ssms=len(ssms)),
                 drafters=("ssm", "recycle", "lookup", "feature"), budget=16, feature_ssm=fs)
else:
    b = int(which[2:])
    eng = Engine(llm, drafters=("lookup", "feature"), budget=b, feature_ssm=fs)
for seed in (0, 1):
  for sc in (True, False):
    T = S = 0; t0 = time.time()
    for cat, group in per.items():
        prompts = [llm.tokenizer.encode(q["turns"][0], chat=True) for q in group]
        res = eng.generate_spec(prompts, 128, SamplingConfig(temperature=0.7), eos_ids=gen.eos_ids(), seed=seed,
                                sampled_children=sc)
        t = sum(len(r.token_ids) for r in res); s = sum(r.llm_steps for r in res)
        T += t; S += s
    print(f"{which} seed {seed} sampled_children={sc} MAT {T/S:.3f} ({S} steps, {time.time()-t0:.0f}s)", flush=True)
