"""The default LLM's logits after a 32-token prefill and a 16-token step: XLA (unpacked) vs the kernel's
matmuls with XLA attention vs the kernel's matmuls and attention (max |difference|, argmax agreement).

    python scripts/check_kernel_logits.py
"""
import jax, jax.numpy as jnp, numpy as np
from specjax import api, model, skinny
llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg)
orig = model.attend
rng = np.random.default_rng(0)
toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, 48)))
S = 64
def run(params, kernel, T=16):
    # prefill 32 tokens, then one step of T tokens
    cache = model.init_cache(cfg, 1, S)
    model.attend = (lambda *a, cpu_kernel=False: orig(*a, cpu_kernel=kernel and cpu_kernel))
    try:
        P = 32
        pos = jnp.arange(P)[None]; mask = jnp.arange(S)[None, None, :] <= pos[:, :, None]
        _, cache = model.forward(params, cfg, toks[:, :P], pos, cache, pos, mask)
        pos = jnp.arange(P, P + T)[None]; mask = jnp.arange(S)[None, None, :] <= pos[:, :, None]
        h, _ = model.forward(params, cfg, toks[:, P:P + T], pos, cache, pos, mask)
        return np.asarray(model.lm_head(params, cfg, h), np.float64)
    finally:
        model.attend = orig
a = run(llm.params, False); b = run(p, False); c = run(p, True)
scale = np.abs(a).max()
print("max|logit|", scale, "packed+xla attn vs xla:", np.abs(b - a).max(), "packed+kernel attn vs xla:", np.abs(c - a).max(), "kernel vs packed-xla:", np.abs(c-b).max())
print("argmax same:", (a.argmax(-1) == c.argmax(-1)).all(), (a.argmax(-1) == b.argmax(-1)).all())
