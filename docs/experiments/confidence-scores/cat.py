"""MAT per Spec-Bench category (first question each), feature+lookup budget 4, old vs new drafter settings.
python runs/dyn/cat.py old|new"""
import sys, json
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from specjax.drafters import setup, acceptance
if sys.argv[1] == "old":
    setup.FEATURE_CONFIDENCE = False
    setup.LOOKUP_LENGTH, setup.LOOKUP_NGRAM = 4, 3
    _r = acceptance.rates
    acceptance.rates = lambda name, kind: ((0.05, 0.2, 0.4, 0.5), (0.2, 0.4, 0.6, 0.7)) if name == "lookup" else _r(name, kind)
    setup.acceptance = acceptance
from specjax import api, default_model
from specjax.drafters import feature
from specjax.engine import Engine
from specjax.sampling import SamplingConfig
qs = [json.loads(l) for l in open(str(ROOT.parent / "shared") + "/data/eval/spec_bench_questions.jsonl")]
seen, picks = set(), []
for q in qs:
    if q["category"] not in seen:
        seen.add(q["category"]); picks.append(q)
gen = api.Generator.load(mode="incremental"); llm = gen.llm
fs = feature.load(str(default_model.DEFAULT_SSMS_DIR / "feature"), llm)
eng = Engine(llm, drafters=("feature", "lookup"), budget=4, feature_ssm=fs)
tot_t = tot_s = 0
for q in picks:
    text = q["turns"][0] if "turns" in q else q["prompt"]
    p = llm.tokenizer.encode(text, chat=True)
    r = eng.generate_spec([p], 128, SamplingConfig(), eos_ids=gen.eos_ids())[0]
    tot_t += len(r.token_ids); tot_s += r.llm_steps
    print(f"{sys.argv[1]} {q['category']:15s} MAT {len(r.token_ids)/r.llm_steps:.2f}", flush=True)
print(f"{sys.argv[1]} overall MAT {tot_t/tot_s:.3f}")
