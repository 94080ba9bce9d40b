"""A/B of the feature SSM training step: training-time-test passes 2-3 over all 256 positions (first=0)
vs the loss window only (first=127), B = 8, shipped drafter shapes, same process, best of 5.

    python scripts/ab_ttt_window.py
"""
import sys, time
from pathlib import Path; sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import jax, jax.numpy as jnp, numpy as np
from specjax import api
from specjax.feature import model as fm
llm = api.load(None)
params, cfg, d2t = fm.load(str(Path(__file__).resolve().parent.parent / "specjax" / "default_ssms" / "feature"), llm.cfg)
B, C, W = 8, 256, 128
feats = jax.random.normal(jax.random.PRNGKey(0), (B, C, cfg.feature_width)).astype(jnp.float16)
emb = jax.random.normal(jax.random.PRNGKey(1), (B, C, 576))
valid = jnp.ones((B, C), bool)
def make(first):
    def loss(p):
        outs = fm.ttt_outputs(p, cfg, feats, emb, 3, first=first, valid=valid)
        return sum(fm.logits(p, cfg, o[:, -W:]).mean() for o in outs)
    return jax.jit(jax.grad(loss))
fs = {0: make(0), 127: make(127)}
for f in fs.values(): jax.block_until_ready(f(params))
t = {0: [], 127: []}
for r in range(5):
    for k, f in fs.items():
        s = time.perf_counter(); jax.block_until_ready(f(params)); t[k].append(time.perf_counter() - s)
print({k: round(min(v), 3) for k, v in t.items()})
