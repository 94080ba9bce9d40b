"""Depth-1 agreement: the loop's per-step acceptance vs offline teacher-forced drafter at the same roots."""
import sys, numpy as np, jax, jax.numpy as jnp
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "scripts"))
from specjax import api, model
from specjax.drafters import setup
setup.FEATURE_EXPANSION = (1, 1, 1, 1)
from specjax.drafters import feature
from specjax.engine import Engine
from specjax.sampling import SamplingConfig
from specjax.decode_state import causal_mask
from specjax.feature import data as fdata, model as fm
import measure_acceptance as ma
texts = ma.read_texts(str(ROOT.parent / "shared") + "/data/boost_prompts/chat_prompts.jsonl")[5000:5006] + ma.read_texts(str(ROOT.parent / "shared") + "/data/boost_prompts/context_tasks.jsonl")[5000:5006]
gen = api.Generator.load(mode="incremental"); llm = gen.llm
prompts = [llm.tokenizer.encode(t, chat=True)[-256:] for t in texts]
fs = feature.load("specjax/default_ssms/feature", llm)
eng = Engine(llm, drafters=("feature",), feature_ssm=fs)
print("topology", eng.drafters[0].topology.parents)
res = []
for i in range(0, len(prompts), 4):
    res += eng.generate_spec(prompts[i:i+4], 96, SamplingConfig(), eos_ids=gen.eos_ids())
llm2 = api.load(None)
p, cfg, d2t_ = fm.load("specjax/default_ssms/feature", llm2.cfg)
E = jnp.asarray(llm2.params["embed"])
loop_hits = loop_n = off_hits = off_n = all_hits = all_n = 0
for pr, r in zip(prompts, res):
    seq = np.array(pr + r.token_ids, np.int32)
    T = len(seq)
    feats, ids, probs = fdata.features(llm2.params, llm2.cfg, seq[None], tuple(cfg.taps), 4, rows=1)
    g = fm.fuse(p, jnp.asarray(feats[:, :T-1].astype(np.float32)))
    t = jnp.arange(T-1)[None]
    cache = fm.init_cache(cfg, 1, T)
    o, _ = fm.step(p, cfg, g, jnp.take(E, jnp.asarray(seq[1:])[None], axis=0), t, cache, t, causal_mask(t, T))
    pred = np.asarray(fs.d2t)[np.asarray(jnp.argmax(fm.logits(p, cfg, o), -1))[0]]  # pred[i] predicts seq[i+2]
    root = len(pr) - 1
    for e in r.accepted_per_step[:-1]:
        loop_n += 1; loop_hits += e >= 2
        if root + 1 < T:
            off_n += 1; off_hits += pred[root - 1] == seq[root + 1]
        root += e
    for i in range(len(pr) - 1, T - 1):
        all_n += 1; all_hits += pred[i - 1] == seq[i + 1]
print(f"loop depth-1 acceptance {loop_hits/loop_n:.3f} (n={loop_n}); offline same roots {off_hits/off_n:.3f}; offline all positions {all_hits/all_n:.3f} (n={all_n})")
print("MAT", sum(len(r.token_ids) for r in res) / sum(r.llm_steps for r in res))
