"""Where a decode step with the CPU kernel spends its time, default LLM, B=1.

    python scripts/profile_kernel_step.py [--sizes 1,4,8,16] [--repeats 15]

Prints, per tree size T (interleaved in one process): (a) the kernel's weight matmuls of every layer
and the LM head chained in one jitted function, (b) the full step (model.forward + lm_head, 320-slot
cache), so (b) - (a) is everything that is not a weight matmul; then the number of HLO copies of
whole per-layer K/V cache buffers in the compiled incremental loop (docs/benchmarks.md, issue 12).
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import time

import jax
import jax.numpy as jnp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,8,16")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    from specjax import api, model, skinny
    from specjax.engine import _STEPS, Engine
    from specjax.incremental import incremental_loop
    from specjax.sampling import SamplingConfig

    llm = api.load(None)
    cfg = llm.cfg
    p = skinny.pack_params(llm.params, cfg)
    D, S = cfg.hidden_size, 320

    @jax.jit
    def chain(p, x):  # x [1, T, D]; every packed weight matmul, data-dependent so none is skipped
        for lp in p["layers"]:
            x = x + model.dense(model.dense(x, lp["qkv"])[..., :D], lp["o"])
            gu = model.dense(x, lp["gate_up"])
            x = x + model.dense(gu[..., : gu.shape[-1] // 2], lp["down"])
        return model.lm_head(p, cfg, x)

    def make_step(T):
        pos = jnp.arange(100, 100 + T)[None]
        mask = jnp.arange(S)[None, None, :] <= pos[:, :, None]

        @functools.partial(jax.jit, donate_argnums=1)
        def step(p, cache):
            h, cache = model.forward(p, cfg, jnp.ones((1, T), jnp.int32), pos, cache, pos, mask)
            return model.lm_head(p, cfg, h), cache
        return step

    for T in (int(t) for t in args.sizes.split(",")):
        x, step, cache = jnp.ones((1, T, D)), make_step(T), model.init_cache(cfg, 1, S)
        jax.block_until_ready(chain(p, x))
        _, cache = step(p, cache)
        a, b = [], []
        for _ in range(args.repeats):
            t = time.perf_counter(); jax.block_until_ready(chain(p, x)); a.append(time.perf_counter() - t)
            t = time.perf_counter(); _, cache = jax.block_until_ready(step(p, cache)); b.append(time.perf_counter() - t)
        mm, st = statistics.median(a) * 1e3, statistics.median(b) * 1e3
        print(f"T={T}: weight matmuls {mm:.1f} ms, full step {st:.1f} ms, not matmuls {st - mm:.1f} ms", flush=True)

    e = Engine(llm)
    state, _ = e.init_state([[1, 2, 3, 4]], 400, 0, 2, 16)  # S > 2 attention blocks
    txt = incremental_loop.lower(e.llm.params, state, _STEPS, cfg=e.llm.cfg, sampling_cfg=SamplingConfig(),
                                 eos_ids=()).compile().as_text()
    K, A = cfg.num_kv_heads, cfg.head_dim
    S_loop = state.tokens.shape[1]
    copies = len(re.findall(rf"f32\[1,{K},{S_loop},{A}\]\{{3,2,1,0\}} copy\(", txt))
    print(f"compiled incremental loop: {copies} copies of whole K/V cache buffers "
          f"({2 * cfg.num_layers} cache arrays)")


if __name__ == "__main__":
    main()
