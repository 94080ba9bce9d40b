"""Cost of one LLM tree verification relative to one incremental step, on the default LLM, B=1.

    python scripts/bench_tree_verify.py [--llm DIR] [--nodes 1,4,8,16,32,64] [--repeats 30]

For each tree size N (root included; N=1 is exactly an incremental step) it times the jitted LLM
forward + LM head over N tokens with a tree mask (a random tree: the cost does not depend on the
shape), at a committed prefix of --prefix tokens in a cache of --slots slots. Sizes are interleaved
round-robin so machine drift hits all alike; it prints the median time and the ratio to N=1.
With --breakdown it also times the decoder without the LM head, to say where the time goes.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from specjax import model, tree as tree_lib


def random_tree(n: int, rng) -> tree_lib.Tree:
    parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, n)], np.int32)
    depth = np.zeros(n, np.int32)
    for j in range(1, n):
        depth[j] = depth[parents[j]] + 1
    return tree_lib.Tree(tokens=jnp.asarray(rng.integers(0, 1000, (1, n)), jnp.int32),
                         parents=jnp.asarray(parents[None]), depth=jnp.asarray(depth[None]),
                         valid=jnp.ones((1, n), bool))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None)
    ap.add_argument("--nodes", default="1,4,8,16,32,64")
    ap.add_argument("--prefix", type=int, default=100)
    ap.add_argument("--slots", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--breakdown", action="store_true")
    args = ap.parse_args()

    from specjax import api

    llm = api.load(args.llm)
    cfg = llm.cfg
    sizes = [int(s) for s in args.nodes.split(",")]
    rng = np.random.default_rng(0)
    S = args.slots
    P = jnp.asarray([args.prefix], jnp.int32)

    @functools.partial(jax.jit, donate_argnums=1)  # the cache is updated in place, as in the loop
    def verify_forward(params, cache, tree):
        N = tree.tokens.shape[1]
        mask = tree_lib.tree_attention_mask(tree, P, S, P)
        hidden, cache = model.forward(params, cfg, tree.tokens, P[:, None] + tree.depth, cache,
                                      P[:, None] + jnp.arange(N)[None], mask)
        return model.lm_head(params, cfg, hidden), cache

    @functools.partial(jax.jit, donate_argnums=1)
    def decoder_only(params, cache, tree):
        N = tree.tokens.shape[1]
        mask = tree_lib.tree_attention_mask(tree, P, S, P)
        hidden, cache = model.forward(params, cfg, tree.tokens, P[:, None] + tree.depth, cache,
                                      P[:, None] + jnp.arange(N)[None], mask)
        return hidden, cache

    cache = model.init_cache(cfg, 1, S)
    trees = {n: random_tree(n, rng) for n in sizes}
    fns = {"full": verify_forward} | ({"decoder": decoder_only} if args.breakdown else {})
    times = {(f, n): [] for f in fns for n in sizes}
    for f, fn in fns.items():
        for n in sizes:
            _, cache = jax.block_until_ready(fn(llm.params, cache, trees[n]))  # compile
    for _ in range(args.repeats):
        for f, fn in fns.items():
            for n in sizes:
                t = time.perf_counter()
                _, cache = jax.block_until_ready(fn(llm.params, cache, trees[n]))
                times[(f, n)].append(time.perf_counter() - t)
    base = statistics.median(times[("full", sizes[0])])
    print(f"{'nodes':>6} {'verify ms':>10} {'x 1 token':>10}" + (f" {'decoder ms':>11} {'head ms':>8}" if args.breakdown else ""))
    for n in sizes:
        t = statistics.median(times[("full", n)])
        line = f"{n:>6} {t * 1e3:>10.1f} {t / base:>10.2f}"
        if args.breakdown:
            d = statistics.median(times[("decoder", n)])
            line += f" {d * 1e3:>11.1f} {(t - d) * 1e3:>8.1f}"
        print(line)


if __name__ == "__main__":
    main()
