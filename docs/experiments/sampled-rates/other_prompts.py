"""MAT of the automatic choice's mix (feature + lookup) at BUDGET on held-out prompts other than the 16
acceptance.json is measured on ([5100, 5100 + COUNT/2) of the chat and context files), greedy (T = 0)
or sampled at T over SEEDS seeds, 96 new tokens: is the 16-prompt table representative?

    python docs/experiments/sampled-rates/other_prompts.py [BUDGET=8] [T=0] [COUNT=32] [SEEDS=1]"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from measure_acceptance import read_texts  # noqa: E402

from specjax import api, default_model  # noqa: E402
from specjax.drafters import feature  # noqa: E402
from specjax.engine import Engine  # noqa: E402
from specjax.sampling import SamplingConfig  # noqa: E402

budget, temp, count, seeds = (int(sys.argv[1]) if len(sys.argv) > 1 else 8, float(sys.argv[2]) if len(sys.argv) > 2 else 0.0,
                              int(sys.argv[3]) if len(sys.argv) > 3 else 32, int(sys.argv[4]) if len(sys.argv) > 4 else 1)
data = ROOT.parent / "shared" / "data" / "boost_prompts"
per = [read_texts(str(data / f))[5100: 5100 + count // 2] for f in ("chat_prompts.jsonl", "context_tasks.jsonl")]
texts = [t for pair in zip(*per) for t in pair]
gen = api.Generator.load(mode="incremental")
llm = gen.llm
prompts = [llm.tokenizer.encode(t, chat=True)[-256:] for t in texts]
fs = feature.load(str(default_model.DEFAULT_SSMS_DIR / "feature"), llm)
eng = Engine(llm, drafters=("feature", "lookup"), budget=budget, feature_ssm=fs)
T = S = 0
for seed in range(seeds):
    t = s = 0
    for i in range(0, len(prompts), 8):
        res = eng.generate_spec(prompts[i: i + 8], 96, SamplingConfig(temperature=temp), seed=1000 * seed + i,
                                eos_ids=gen.eos_ids())
        t += sum(len(r.token_ids) for r in res)
        s += sum(r.llm_steps for r in res)
    T, S = T + t, S + s
    print(f"feature + lookup budget {budget}, T = {temp}, {len(prompts)} prompts, seed {seed}: MAT {t / s:.3f}", flush=True)
print(f"all: MAT {T / S:.3f} ({S} steps)", flush=True)
