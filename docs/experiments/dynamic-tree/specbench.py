"""MAT on Spec-Bench (3 per category, 128 tokens, turn 1, chat): all shipped drafters merged at budget 16
(the bench's spec-merged-b16 row without timing), greedy and T = 0.7 (seed 0), with the feature SSM's
tree EXPANSION / FRONTIER (0: every node expanded).

    python docs/experiments/dynamic-tree/specbench.py [EXPANSION FRONTIER]   (default: the shipped tree)"""
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from specjax.drafters import setup  # noqa: E402

if len(sys.argv) > 2:
    setup.FEATURE_EXPANSION = tuple(int(x) for x in sys.argv[1].split(","))
    setup.FEATURE_FRONTIER = int(sys.argv[2]) or None
from specjax import api, default_model  # noqa: E402
from specjax.drafters import feature  # noqa: E402
from specjax.drafters.setup import AUTO_SSM_EXPANSION  # noqa: E402
from specjax.engine import Engine  # noqa: E402
from specjax.sampling import SamplingConfig  # noqa: E402
from specjax.tree import TreeConfig  # noqa: E402

qs = [json.loads(line) for line in open(ROOT.parent / "shared" / "data" / "eval" / "spec_bench_questions.jsonl")]
per = defaultdict(list)
for q in qs:
    if len(per[q["category"]]) < 3:
        per[q["category"]].append(q)
gen = api.Generator.load(mode="incremental")
llm = gen.llm
ssms = [api.load(str(p)) for p in default_model.default_ssm_dirs()]
fs = feature.load(str(default_model.DEFAULT_SSMS_DIR / "feature"), llm)
eng = Engine(llm, ssms, TreeConfig(expansion=AUTO_SSM_EXPANSION, num_ssms=len(ssms)),
             drafters=("ssm", "recycle", "lookup", "feature"), budget=16, feature_ssm=fs)
print("feature tree", setup.FEATURE_EXPANSION, "frontier", setup.FEATURE_FRONTIER, flush=True)
for name, samp in (("greedy", SamplingConfig()), ("T0.7", SamplingConfig(temperature=0.7))):
    T = S = 0
    for cat, group in per.items():
        prompts = [llm.tokenizer.encode(q["turns"][0], chat=True) for q in group]
        res = eng.generate_spec(prompts, 128, samp, eos_ids=gen.eos_ids(), seed=0)
        t = sum(len(r.token_ids) for r in res)
        s = sum(r.llm_steps for r in res)
        T += t
        S += s
        print(f"{name} {cat:15s} MAT {t / s:.2f}", flush=True)
    print(f"{name} overall MAT {T / S:.3f} ({S} steps)", flush=True)
