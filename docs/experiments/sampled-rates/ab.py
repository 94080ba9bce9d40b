"""Sampled decoding's MAT with lookup's nodes scored by greedy vs sampled rates, one process, the same
prompts and seeds: feature + lookup at BUDGET, T, held-out prompts [5100, 5100 + COUNT/2) of the chat
and context files (not the 16 acceptance.json is measured on), 96 new tokens.

    python docs/experiments/sampled-rates/ab.py [BUDGET=8] [T=0.7] [COUNT=32] [SEEDS=2]

Runs at commit c955fc6 (`git worktree add /tmp/sr c955fc6`), where the drafters had `sampled_rates`;
they were not kept (no gain), so at later commits it stops at the assert below."""
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from measure_acceptance import read_texts  # noqa: E402

from specjax import api, default_model  # noqa: E402
from specjax.drafters import feature, setup  # noqa: E402
from specjax.engine import Engine  # noqa: E402
from specjax.sampling import SamplingConfig  # noqa: E402

budget, temp, count, seeds = (int(sys.argv[1]) if len(sys.argv) > 1 else 8, float(sys.argv[2]) if len(sys.argv) > 2 else 0.7,
                              int(sys.argv[3]) if len(sys.argv) > 3 else 32, int(sys.argv[4]) if len(sys.argv) > 4 else 2)
data = ROOT.parent / "shared" / "data" / "boost_prompts"
per = [read_texts(str(data / f))[5100: 5100 + count // 2] for f in ("chat_prompts.jsonl", "context_tasks.jsonl")]
texts = [t for pair in zip(*per) for t in pair]
gen = api.Generator.load(mode="incremental")
llm = gen.llm
prompts = [llm.tokenizer.encode(t, chat=True)[-256:] for t in texts]
fs = feature.load(str(default_model.DEFAULT_SSMS_DIR / "feature"), llm)
new = setup.build_drafters(("feature", "lookup"), llm.cfg, (), None, fs.cfg)
assert new[1].sampled_rates, "no sampled lookup rates shipped"
old = (new[0], dataclasses.replace(new[1], sampled_rates=()))
engines = {"greedy rates": Engine(llm, drafters=old, budget=budget, feature_ssm=fs),
           "sampled rates": Engine(llm, drafters=new, budget=budget, feature_ssm=fs)}
print(f"feature + lookup budget {budget}, T = {temp}, {len(prompts)} prompts, seeds {seeds}", flush=True)
totals = {k: [0, 0] for k in engines}
for seed in range(seeds):
    for name, eng in engines.items():
        t = s = 0
        for i in range(0, len(prompts), 8):
            res = eng.generate_spec(prompts[i: i + 8], 96, SamplingConfig(temperature=temp), seed=1000 * seed + i,
                                    eos_ids=gen.eos_ids())
            t += sum(len(r.token_ids) for r in res)
            s += sum(r.llm_steps for r in res)
        totals[name][0] += t
        totals[name][1] += s
        print(f"seed {seed} {name}: MAT {t / s:.3f} ({s} steps)", flush=True)
for name, (t, s) in totals.items():
    print(f"all seeds {name}: MAT {t / s:.3f} ({s} steps)", flush=True)
