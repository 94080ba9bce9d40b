"""The drafter interface: what every drafter kind proposes each step, and its static shape.

A drafter kind is a module (specjax.drafters.ssm, .feature, .recycle, .lookup) of pure functions over its own
loop state, a pytree it alone reads and writes:

    init_state(ctx, cfg) -> state                        host side, after the LLM prefill (InitContext)
    propose(key, params, state, cfg, base, sampling, stochastic) -> (Proposal, state)     jit side
    update(state, cfg, step) -> state                    jit side (step: speculative.StepInfo)
    shard_state(state, cfg, mesh) -> state               places the state on a device mesh
    insert_row(state, row, b, cfg) -> state              continuous batching: row b of the batch's state
                                                         from a one-request state `row` (jit side)
    PER_ROW = True | False                               module constant: every leaf of the state is per
                                                         row (row axis 0, [B, ...]; continuous batching's
                                                         row tiers move it with its row) or the whole
                                                         state is shared by the rows (the recycling
                                                         table) and stays; True when absent

and a frozen, hashable config (`cfg`, part of the loop's static SpecConfig) with `kind`, `name`,
`topology` (the static shape of its proposal, a `Topology`) and `sampled` (whether, under stochastic
decoding, its nodes are drawn from a distribution q: then their selection must not depend on the
drawn tokens, see drafters.merge).

A proposal is a subtree hanging from the root (the last committed token, tokens[b, P]) of n nodes in
topological order, the same static shape every step:

    tokens [B, n] int32     the drafted token of each node
    valid  [B, n] bool      False: nothing proposed here (no n-gram match, an empty recycling row);
                            such a node and its descendants are never verified as candidates
    score  [B, n] float32   the path score, an estimate of P(node and its ancestors are accepted),
                            <= the parent's score (calibrated per drafter and depth, comparable
                            across drafters); the budgeted merge keeps the N best
    q      [B, n, V] | None the distribution each node was drawn from (sampled nodes); None:
                            deterministic, the verifier uses a one-hot on the token
    parents [B, n] | None   per-row parents (local index, -1: the root's child) for a tree whose shape
                            the drafter picks at run time (EAGLE-2's dynamic tree: which nodes of a
                            level get children). Node j's parent must be at depth depth[j] - 1 of the
                            topology (so it precedes j); None: the topology's parents. Only
                            deterministic nodes may move: a sampled node's place must not depend on
                            any draw (see drafters.merge)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import numpy as np


@flax.struct.dataclass
class Proposal:
    tokens: jax.Array
    valid: jax.Array
    score: jax.Array
    q: Any = None
    parents: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """The static shape of a proposal of n nodes (root excluded): parents [n] (-1: the root's child,
    else a local index < j), depth [n] (>= 1) and rank [n] (the node is its parent's rank-th child)."""

    parents: np.ndarray
    depth: np.ndarray
    rank: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if len(self.depth) else 0


def expansion_topology(expansion: tuple[int, ...], frontier: int | None = None) -> Topology:
    """SpecInfer's expansion <k_1..k_m> (every node at depth i-1 gets k_i children), BFS order;
    frontier F: only the first F nodes of each level get children (see tree.ssm_topology)."""
    from specjax.tree import ssm_topology

    t = ssm_topology(expansion, frontier)
    return Topology(parents=(t.parents[1:] - 1).astype(np.int32), depth=t.depth[1:].astype(np.int32),
                    rank=t.children_rank[1:].astype(np.int32))


def chain_topology(length: int) -> Topology:
    return expansion_topology((1,) * length)


@dataclasses.dataclass
class InitContext:
    """What a drafter's init_state may use (host side): the LLM's prefilled DecodeState, the prompt
    bucket, the engine's compile-once runner, the drafter's params, the LLM's top-k successors of
    every prefilled position ([B, bucket, k] or None), the engine's persistent store (a dict kept
    across batches, e.g. the recycling table), the mesh, the LLM's features at every prefilled
    position ([B, bucket, len(feature_taps) * D], the residual streams after feature_taps in layer
    order; None unless a drafter reads them) and max_depth, the merged tree's depth M (the verified
    path has M + 1 nodes)."""

    base: Any
    bucket: int
    run: Callable
    params: Any
    successors: Any
    persistent: dict
    mesh: Any = None
    features: Any = None
    feature_taps: tuple = ()
    max_depth: int = 0


def path_scores(topo: Topology, rates) -> np.ndarray:
    """[n] path score of each node: the product over its path of rates(depth, rank), a conditional
    acceptance estimate in (0, 1]. Children never outscore their parent."""
    out = np.zeros(topo.num_nodes, np.float32)
    for j in range(topo.num_nodes):
        r = float(np.clip(rates(int(topo.depth[j]), int(topo.rank[j])), 1e-6, 1.0))
        out[j] = r * (out[topo.parents[j]] if topo.parents[j] >= 0 else 1.0)
    return out


def put_row(batch, row, b):
    """Every leaf of `batch` ([B, ...]) with row b replaced by `row`'s only row ([1, ...]); b traced."""
    return jax.tree.map(lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y.astype(x.dtype), b, 0), batch, row)
