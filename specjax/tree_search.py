"""Choosing a tree shape for a machine: expected tokens per step over the measured cost of a step.

A Sequoia-style search, over SpecInfer's expansion configs <k_1..k_m> (every node at depth i-1 gets k_i
children). Two measurements go in:

  * coverage c[k], k = 1..K: the probability that the LLM's next token is among the drafters' top-k
    (the union over the SSMs of the ensemble), measured teacher-forced on held-out LLM text. Under
    greedy verification a path survives depth i when the LLM's token is among the k_i children there,
    so with depths taken as independent:

        E[tokens per step] = 1 + sum_{d=1..m} prod_{i=1..d} c[k_i]          (1: the LLM's bonus token)

  * costs, in seconds: draft(W), one SSM forward over W frontier tokens, and verify(N), one LLM forward
    over N tree tokens (root included; verify(1) is an incremental step). A step drafts m levels with
    every SSM (a catch-up read of m+1 tokens, then levels 1..m-1 of prod_{i<=d} k_i nodes) and verifies 1 + n_ssms * nodes tokens:

        cost = n_ssms * (draft(m+1) + sum_{d=1..m-1} draft(prod_{i<=d} k_i)) + verify(1 + n_ssms * nodes)

The speedup estimate is E / cost * verify(1). Two approximations make the ranking a shortlist, to be
measured with the engine before choosing: depths are taken as independent (which underestimates long
runs of easy tokens), and with several SSMs the union coverage is applied at every depth, although
below depth 1 each SSM only extends its own path (which overstates what an ensemble adds).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Costs:
    """Measured step costs, interpolated linearly in the number of tokens (extrapolated from the last two
    points): an SSM forward + LM head over W tokens (draft), the same without the LM head (draft_body:
    the catch-up read needs the head at the root only; empty = charge the head on every token), and an
    LLM forward + LM head over N tree tokens (verify)."""

    draft_tokens: tuple[int, ...]
    draft_seconds: tuple[float, ...]
    verify_tokens: tuple[int, ...]
    verify_seconds: tuple[float, ...]
    draft_body_seconds: tuple[float, ...] = ()  # at draft_tokens

    def __post_init__(self):
        for name in ("draft", "verify"):
            xs, ys = getattr(self, f"{name}_tokens"), getattr(self, f"{name}_seconds")
            if not xs or len(xs) != len(ys) or list(xs) != sorted(set(xs)):
                raise ValueError(f"Costs: {name}_tokens must be increasing and match {name}_seconds")
        if self.draft_body_seconds and len(self.draft_body_seconds) != len(self.draft_tokens):
            raise ValueError("Costs: draft_body_seconds must match draft_tokens")

    @staticmethod
    def _interp(xs, ys, x: float) -> float:
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        if x <= xs[-1]:
            return float(np.interp(x, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else ys[-1] / xs[-1]
        return float(ys[-1] + slope * (x - xs[-1]))

    def draft(self, tokens: int) -> float:
        return self._interp(self.draft_tokens, self.draft_seconds, tokens)

    def catch_up(self, tokens: int) -> float:
        """An SSM forward over `tokens` with the LM head at one of them."""
        if not self.draft_body_seconds:
            return self.draft(tokens)
        body = lambda w: self._interp(self.draft_tokens, self.draft_body_seconds, w)
        return body(tokens) + self.draft(1) - body(1)

    def verify(self, tokens: int) -> float:
        return self._interp(self.verify_tokens, self.verify_seconds, tokens)


def level_widths(expansion: Sequence[int]) -> list[int]:
    """Nodes per depth 1..m: prod_{i<=d} k_i."""
    return [int(np.prod(expansion[: d + 1])) for d in range(len(expansion))]


def expected_tokens(expansion: Sequence[int], coverage: Sequence[float]) -> float:
    """E[tokens emitted per step] (bonus included); coverage[k-1] = P(LLM token in the top-k)."""
    total, p = 1.0, 1.0
    for k in expansion:
        p *= coverage[min(k, len(coverage)) - 1]
        total += p
    return total


def step_seconds(expansion: Sequence[int], num_ssms: int, costs: Costs) -> float:
    widths = level_widths(expansion)
    draft = costs.catch_up(len(expansion) + 1) + sum(costs.draft(w) for w in widths[:-1])  # levels 1..m-1
    return num_ssms * draft + costs.verify(1 + num_ssms * sum(widths))


def search(coverage: Sequence[float], costs: Costs, num_ssms: int = 1, max_depth: int = 8,
           max_branch: int = 3, node_budget: int = 64) -> list[dict]:
    """Every expansion of depth 1..max_depth with k_i in 1..max_branch and num_ssms * nodes <=
    node_budget, ranked by estimated speedup over incremental decoding (best first)."""
    if not coverage or any(not 0 <= c <= 1 for c in coverage):
        raise ValueError(f"coverage must be probabilities of the top-1..top-K, got {list(coverage)}")
    base = costs.verify(1)
    rows = []
    for m in range(1, max_depth + 1):
        for exp in itertools.product(range(1, max_branch + 1), repeat=m):
            nodes = sum(level_widths(exp))
            if num_ssms * nodes > node_budget:
                continue
            e = expected_tokens(exp, coverage)
            t = step_seconds(exp, num_ssms, costs)
            rows.append({"expansion": exp, "nodes": nodes, "expected_tokens": e, "step_seconds": t,
                         "speedup": e / t * base})
    return sorted(rows, key=lambda r: -r["speedup"])


def random_tree(n: int, rng):
    """A random tree of n nodes (root included), batch 1: a forward's cost does not depend on its shape."""
    import jax.numpy as jnp

    from specjax import tree as tree_lib

    parents = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, n)], np.int32)
    depth = np.zeros(n, np.int32)
    for j in range(1, n):
        depth[j] = depth[parents[j]] + 1
    return tree_lib.Tree(tokens=jnp.asarray(rng.integers(0, 1000, (1, n)), jnp.int32),
                         parents=jnp.asarray(parents[None]), depth=jnp.asarray(depth[None]),
                         valid=jnp.ones((1, n), bool))


def tree_forward(cfg, prefix: int = 100, slots: int = 320, head: bool = True, model_module=None):
    """fn(params, cache, tree) -> (logits [1, N, V], or the hidden states without the head, cache): the
    forward of a model over a tree's N tokens with the tree mask, batch 1, after `prefix` committed
    tokens in a cache of `slots` slots (unjitted: callers jit it, or run it inside a loop).
    model_module: a specjax.model-like module to run (an older model.py, for A/B probes)."""
    import jax.numpy as jnp

    from specjax import model
    from specjax import tree as tree_lib

    m = model if model_module is None else model_module
    P = jnp.asarray([prefix], jnp.int32)

    def fwd(params, cache, tree):
        N = tree.tokens.shape[1]
        mask = tree_lib.tree_attention_mask(tree, P, slots, P)
        hidden, cache = m.forward(params, cfg, tree.tokens, P[:, None] + tree.depth, cache,
                                  P[:, None] + jnp.arange(N)[None], mask)
        return (m.lm_head(params, cfg, hidden) if head else hidden), cache

    return fwd


def tree_forward_seconds(params, cfg, sizes: Sequence[int], prefix: int = 100, slots: int = 320,
                         repeats: int = 10, head: bool = True, stat=np.median) -> dict[int, float]:
    """Median (or `stat`) seconds of one jitted forward (+ LM head) of a model over N tree tokens with the tree
    mask, batch 1, after `prefix` committed tokens in a cache of `slots` slots, for each N in sizes
    (N = 1 is an incremental step). Sizes are interleaved round-robin so drift hits all alike."""
    return tree_forward_seconds_by({"": params}, cfg, sizes, prefix, slots, repeats, head, stat)[""]


def tree_forward_seconds_by(variants: dict, cfg, sizes: Sequence[int], prefix: int = 100, slots: int = 320,
                            repeats: int = 10, head: bool = True, stat=np.median,
                            others: dict | None = None) -> dict[str, dict[int, float]]:
    """tree_forward_seconds for several params of one model (e.g. packed for the CPU kernel and not),
    every (variant, size) interleaved round-robin in one run. Returns {variant: {N: seconds}}.
    others: {name: fn()} timed in the same rounds (e.g. a read of the weights' bytes, so that a
    roofline and the steps see the same machine), returned as {name: {0: seconds}}."""
    import time

    import jax

    from specjax import model

    fwd = jax.jit(tree_forward(cfg, prefix, slots, head), donate_argnums=1)  # the cache in place, as in the loop

    rng = np.random.default_rng(0)
    caches = {v: model.init_cache(cfg, 1, slots, model.compute_dtype(p)) for v, p in variants.items()}
    trees = {n: random_tree(n, rng) for n in sizes}
    for v, params in variants.items():
        for n in sizes:
            _, caches[v] = jax.block_until_ready(fwd(params, caches[v], trees[n]))  # compile
    others = others or {}
    for fn in others.values():
        jax.block_until_ready(fn())  # compile
    times = {v: {n: [] for n in sizes} for v in variants} | {name: {0: []} for name in others}
    for _ in range(repeats):
        for v, params in variants.items():
            for n in sizes:
                t = time.perf_counter()
                _, caches[v] = jax.block_until_ready(fwd(params, caches[v], trees[n]))
                times[v][n].append(time.perf_counter() - t)
        for name, fn in others.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times[name][0].append(time.perf_counter() - t)
    return {v: {n: float(stat(t)) for n, t in tv.items()} for v, tv in times.items()}
