"""T=0.7 MAT, feature + lookup budget 8, Spec-Bench N per category: the feature SSM's q drawn at temperature
scale x 0.7 (scale 1.0 = today's rule). Lossless for any q: only acceptance changes."""
import sys, json, time, types, dataclasses
from pathlib import Path
from collections import defaultdict
from specjax import api, default_model, sampling as S
from specjax.drafters import feature
from specjax.engine import Engine
from specjax.sampling import SamplingConfig
per_cat = int(sys.argv[1]); scales = [float(x) for x in sys.argv[2].split(",")]
qs = [json.loads(l) for l in open(Path(__file__).resolve().parents[4] / "shared/data/eval/spec_bench_questions.jsonl")]
per = defaultdict(list)
for q in qs:
    if len(per[q["category"]]) < per_cat:
        per[q["category"]].append(q)
gen = api.Generator.load(mode="incremental"); llm = gen.llm
fs = feature.load(str(default_model.DEFAULT_SSMS_DIR / "feature"), llm)
for scale in scales:
    shim = types.SimpleNamespace(**{k: getattr(S, k) for k in dir(S) if not k.startswith("__")})
    shim.probs = (lambda s: lambda lg, cfg: S.probs(lg, dataclasses.replace(cfg, temperature=cfg.temperature * s)))(scale)
    feature.sampling = shim
    eng = Engine(llm, drafters=("lookup", "feature"), budget=8, feature_ssm=fs)
    for seed in (0, 1):
        T = St = 0; t0 = time.time()
        for cat, group in per.items():
            prompts = [llm.tokenizer.encode(q["turns"][0], chat=True) for q in group]
            res = eng.generate_spec(prompts, 128, SamplingConfig(temperature=0.7), eos_ids=gen.eos_ids(), seed=seed)
            T += sum(len(r.token_ids) for r in res); St += sum(r.llm_steps for r in res)
        print(f"scale {scale} seed {seed} MAT {T/St:.3f} ({St} steps, {time.time()-t0:.0f}s)", flush=True)
