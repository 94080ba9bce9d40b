"""A/B of the feature drafter's scores: MAT alone and merged with lookup at budgets, greedy, the
measure_acceptance prompts (16 held-out, 96 tokens).  python runs/dyn/ab.py CONF EXPANSION MIXES BUDGETS"""
import sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
from specjax.drafters import setup
setup.FEATURE_CONFIDENCE = bool(int(sys.argv[1]))
setup.FEATURE_EXPANSION = tuple(int(x) for x in sys.argv[2].split(","))
import os
if os.environ.get("LOOK"):
    setup.LOOKUP_LENGTH, setup.LOOKUP_NGRAM = 8, 8
    from specjax.drafters import acceptance
    acceptance.PRIORS["lookup"] = ((.22, .53, .66, .71, .74, .77, .82, .94), (.59, .66, .71, .76, .78, .85, .87, .94),
                                   (.69, .71, .78, .78, .85, .88, .86, .95), (.72, .79, .78, .85, .87, .85, .90, .95))
from specjax import api, default_model
from specjax.drafters import feature
from specjax.engine import Engine
from specjax.sampling import SamplingConfig
import measure_acceptance as ma
D = str(ROOT.parent / "shared" / "data" / "boost_prompts") + "/"
per = [ma.read_texts(D + f)[5000:5008] for f in ("chat_prompts.jsonl", "context_tasks.jsonl")]
texts = [t for g in zip(*per) for t in g]
gen = api.Generator.load(mode="incremental"); llm = gen.llm
prompts = [llm.tokenizer.encode(t, chat=True)[-256:] for t in texts]
fs = feature.load(str(default_model.DEFAULT_SSMS_DIR / "feature"), llm)
for mix in sys.argv[3].split(","):
    for n in [int(x) for x in sys.argv[4].split(",")]:
        eng = Engine(llm, drafters=tuple(mix.split("+")), budget=n, feature_ssm=fs)
        steps = toks = 0
        outs = []
        for i in range(0, len(prompts), 4):
            res = eng.generate_spec(prompts[i:i+4], 96, SamplingConfig(), eos_ids=gen.eos_ids())
            steps += sum(r.llm_steps for r in res); toks += sum(len(r.token_ids) for r in res)
        print(f"look={os.environ.get('LOOK')} conf={sys.argv[1]} exp={sys.argv[2]} {mix} budget {n} MAT {toks/steps:.3f}", flush=True)
