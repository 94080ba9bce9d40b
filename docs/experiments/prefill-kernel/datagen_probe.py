"""Where the feature SSM's data generation (specjax.feature.data._generate, batch 32) spends its step:
the whole generate call vs its parts timed alone, jitted (B = 32, one token a row, cache of 384 slots).

    python docs/experiments/prefill-kernel/datagen_probe.py [B]
"""
import sys, time
import jax, jax.numpy as jnp, numpy as np
from specjax import api, model, skinny
from specjax.feature import data as fdata

B = int(sys.argv[1]) if len(sys.argv) > 1 else 32
llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg)
import json; taps = tuple(json.load(open("specjax/default_ssms/feature/feature_config.json"))["taps"])
T, k = 384, 16


def best(f, *a, n=5):
    jax.block_until_ready(f(*a)); ts = []
    for _ in range(n):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
    return min(ts) * 1e3


cache = model.init_cache(cfg, B, T, jnp.float32)
pos = jnp.full((B, 1), 200, jnp.int32)
tok = jnp.ones((B, 1), jnp.int32)
mask = jnp.arange(T)[None, None, :] <= pos[:, :, None]
fwd = jax.jit(lambda p, c: model.forward_features(p, cfg, tok, pos, c, pos, mask, taps)[0])
h = jnp.ones((B, cfg.hidden_size))
head = jax.jit(lambda p, h: model.lm_head(p, cfg, h))
logits = head(p, h)
topk = jax.jit(lambda l: jax.lax.top_k(jax.nn.log_softmax(l, axis=-1), k))
amax = jax.jit(lambda l: jnp.argmax(l, axis=-1))
if "--parts" in sys.argv: print(f"B={B}: forward_features one token {best(fwd, p, cache):.1f} ms (head excluded), lm_head {best(head, p, h):.1f} ms, "
      f"log_softmax+top_k {best(topk, logits):.1f} ms, argmax {best(amax, logits):.1f} ms")
prompts = [list(range(1000 + b, 1100 + b)) for b in range(B)]
eos = tuple(cfg.eos_token_ids)
fdata.generate(p, cfg, prompts, 16, taps, k, eos, 384)
res = {}
for new in (16, 64, 16, 64):
    t = time.perf_counter(); fdata.generate(p, cfg, prompts, new, taps, k, eos, 384); dt = time.perf_counter() - t
    res[new] = min(res.get(new, 1e9), dt)
step = (res[64] - res[16]) / 48
print(f"generate {B} x 100-token prompts: 16 new {res[16]:.2f} s, 64 new {res[64]:.2f} s; a step {step * 1e3:.0f} ms "
      f"({B / step:.0f} tokens/s), the prompts {res[16] - 16 * step:.2f} s; 128 new -> {B * 128 / (res[16] + 112 * step):.0f} tokens/s")
