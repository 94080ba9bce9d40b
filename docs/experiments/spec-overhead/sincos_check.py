"""With rope_sincos.patch applied (`git apply docs/experiments/spec-overhead/rope_sincos.patch`): the
kernel library's sincos vs XLA's jnp.cos / jnp.sin on every RoPE angle of the default LLM (positions
0..8191 x 32 frequencies), counted bitwise.

    python docs/experiments/spec-overhead/sincos_check.py
"""
import jax, jax.numpy as jnp, numpy as np
from specjax import skinny

if not hasattr(skinny, "sincos"):
    raise SystemExit("sincos_check.py: apply rope_sincos.patch first (skinny.sincos is not shipped)")
a = jnp.asarray(np.arange(0, 8192, dtype=np.float32)[:, None] * np.float32(100000.0) ** (-np.arange(0, 64, 2, dtype=np.float32) / 64))
c, s = jax.jit(skinny.sincos)(a)
xc, xs = jax.jit(jnp.cos)(a), jax.jit(jnp.sin)(a)
print("cos differ:", int((np.asarray(c) != np.asarray(xc)).sum()), "sin differ:", int((np.asarray(s) != np.asarray(xs)).sum()), "of", a.size)
