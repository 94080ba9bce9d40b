"""Where a one-token decode step of the default LLM spends its time, B=1.

    python scripts/profile_step.py [--llm DIR] [--repeats 20]

Times, interleaved in one process: (a) only the weight matmuls of every layer and the LM head,
chained in one jitted function (the floor XLA:CPU's GEMV gives), (b) the full step
(model.forward + lm_head with a 256-slot cache), and (c) a streaming read of the same number of
bytes (the memory roofline). (b) - (a) is everything that is not a weight matmul.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    from specjax import api, model

    llm = api.load(args.llm)
    cfg, p = llm.cfg, llm.params
    D, H, K, A = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    @jax.jit
    def matmuls(p, x):  # x [1, D]; each layer's weight matmuls, data-dependent so none is skipped
        for lp in p["layers"]:
            q, k, v = x @ lp["q"].reshape(D, H * A), x @ lp["k"].reshape(D, K * A), x @ lp["v"].reshape(D, K * A)
            x = x + (q + jnp.tile(k + v, H // K)) @ lp["o"].reshape(H * A, D)
            up = x @ lp["up"]
            up = up * (x @ lp["gate"]) if "gate" in lp else up
            x = x + up @ lp["down"]
        return model.lm_head(p, cfg, x)

    S, pos = 256, jnp.full((1, 1), 100)
    mask = jnp.arange(S)[None, None, :] <= pos[:, :, None]

    @functools.partial(jax.jit, donate_argnums=1)
    def step(p, cache):
        h, cache = model.forward(p, cfg, jnp.ones((1, 1), jnp.int32), pos, cache, pos, mask)
        return model.lm_head(p, cfg, h), cache

    nbytes = sum(x.nbytes for x in jax.tree.leaves(p))
    buf = jnp.ones((nbytes // 4,), jnp.float32)
    read = jax.jit(jnp.sum)
    x, cache = jnp.ones((1, D)), model.init_cache(cfg, 1, S)
    jax.block_until_ready((matmuls(p, x), read(buf)))
    _, cache = step(p, cache)
    t_mm, t_step, t_read = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter(); jax.block_until_ready(matmuls(p, x)); t_mm.append(time.perf_counter() - t)
        t = time.perf_counter(); _, cache = jax.block_until_ready(step(p, cache)); t_step.append(time.perf_counter() - t)
        t = time.perf_counter(); jax.block_until_ready(read(buf)); t_read.append(time.perf_counter() - t)
    mm, st, rd = (statistics.median(v) * 1e3 for v in (t_mm, t_step, t_read))
    print(f"weights {nbytes / 1e6:.0f} MB; streaming read {rd:.1f} ms ({nbytes / rd / 1e6:.1f} GB/s)")
    print(f"weight matmuls only {mm:.1f} ms = {mm / rd:.2f} x read; full step {st:.1f} ms = {st / rd:.2f} x read")
    print(f"not weight matmuls: {st - mm:.1f} ms ({(st - mm) / st:.0%} of the step)")


if __name__ == "__main__":
    main()
