"""The kernel's weight matmuls alone (every layer + the LM head chained in one jitted function, the
default LLM, B=1), tree sizes interleaved: where multi-row cost comes from (docs/benchmarks.md, issue 12).

    python scripts/probe_kernel_matmuls.py [1,4,6,8,12,16,32]

`weight_chain(cfg)` is that function, for other probes (docs/experiments/kernel-zen4/pages_probe.py).
"""
import statistics, time, sys, jax, jax.numpy as jnp
from specjax import api, model, skinny


def weight_chain(cfg):
    """jit(params, x [B, T, D]) -> logits: every layer's packed weight matmuls and the head, no attention."""
    D = cfg.hidden_size

    @jax.jit
    def chain(p, x):
        for lp in p["layers"]:
            x = x + model.dense(model.dense(x, lp["qkv"])[..., :D], lp["o"])
            gu = model.dense(x, lp["gate_up"])
            x = x + model.dense(gu[..., : gu.shape[-1] // 2], lp["down"])
        return model.lm_head(p, cfg, x)
    return chain


if __name__ == "__main__":
    llm = api.load(None); cfg = llm.cfg
    p = skinny.pack_params(llm.params, cfg); D = cfg.hidden_size
    print(skinny.status()[1])
    chain = weight_chain(cfg)
    sizes = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "1,4,6,8,12,16,32").split(",")]
    xs = {T: jnp.ones((1, T, D)) for T in sizes}
    for T in sizes: jax.block_until_ready(chain(p, xs[T]))
    res = {T: [] for T in sizes}
    for _ in range(15):
        for T in sizes:
            t = time.perf_counter(); jax.block_until_ready(chain(p, xs[T])); res[T].append(time.perf_counter() - t)
    base = statistics.median(res[sizes[0]])
    print(" ".join(f"T={T}:{statistics.median(res[T])*1e3:.1f}ms({statistics.median(res[T])/base:.2f}x)" for T in sizes))
