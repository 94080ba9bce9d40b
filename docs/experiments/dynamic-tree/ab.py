"""A/B of the feature drafter's tree shape (EAGLE-2's dynamic tree: a frontier of F nodes per level
expanded by path probability): greedy MAT of the feature SSM alone and merged with lookup at budgets,
the measure_acceptance prompts (held-out chat + context lines from 5000, interleaved), 96 tokens.

    python docs/experiments/dynamic-tree/ab.py EXPANSION FRONTIER MIXES BUDGETS [COUNT [TEMPERATURE]]
    e.g. ... 3,1,1,1 0 feature,feature+lookup 0,4,8,16 16        (FRONTIER 0: every node expanded;
                                                                   budget 0: no budget)"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from specjax.drafters import setup  # noqa: E402

setup.FEATURE_EXPANSION = tuple(int(x) for x in sys.argv[1].split(","))
setup.FEATURE_FRONTIER = int(sys.argv[2]) or None
import measure_acceptance as ma  # noqa: E402

from specjax import api, default_model  # noqa: E402
from specjax.drafters import feature  # noqa: E402
from specjax.engine import Engine  # noqa: E402
from specjax.sampling import SamplingConfig  # noqa: E402

count = int(sys.argv[5]) if len(sys.argv) > 5 else 16
temperature = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0  # > 0: sampling (seed 0), else greedy
D = ROOT.parent / "shared" / "data" / "boost_prompts"
per = [ma.read_texts(str(D / f))[5000:5000 + count // 2] for f in ("chat_prompts.jsonl", "context_tasks.jsonl")]
texts = [t for g in zip(*per) for t in g]
gen = api.Generator.load(mode="incremental")
llm = gen.llm
prompts = [llm.tokenizer.encode(t, chat=True)[-256:] for t in texts]
fs = feature.load(str(default_model.DEFAULT_SSMS_DIR / "feature"), llm)
for mix in sys.argv[3].split(","):
    for n in [int(x) for x in sys.argv[4].split(",")]:
        t0 = time.time()
        eng = Engine(llm, drafters=tuple(mix.split("+")), budget=n or None, feature_ssm=fs)
        steps = toks = 0
        for i in range(0, len(prompts), 4):
            res = eng.generate_spec(prompts[i:i + 4], 96, SamplingConfig(temperature=temperature),
                                    eos_ids=gen.eos_ids(), seed=0)
            steps += sum(r.llm_steps for r in res)
            toks += sum(len(r.token_ids) for r in res)
        print(f"exp={sys.argv[1]} frontier={sys.argv[2]} T={temperature} {mix} budget {n} MAT {toks / steps:.3f} "
              f"({len(prompts)} prompts, {time.time() - t0:.0f} s)", flush=True)
