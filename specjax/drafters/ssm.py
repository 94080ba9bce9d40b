"""The `ssm` drafter: token-tree expansion by one SSM over its own KV cache (SpecInfer's
expansion-based construction).

One step of one SSM, for a static expansion <k_1, ..., k_m>:

  1. catch-up: the SSM reads the tokens the LLM committed since its last step (the previous root, the
     accepted tokens and the new root; at most m + 1), which leaves its cache valid up to the root and
     gives its distribution at the root;
  2. level i = 1..m: every frontier node gets k_i children: its top-k_i tokens (greedy or
     deterministic drafting) or k_i samples (stochastic drafting, recording the distribution q each
     was drawn from); levels 1..m-1 are then run through the SSM with tree attention so their
     children can be drawn. Leaves are never run.

SSM tree node j (BFS order, root = 0) keeps its K/V at SSM cache slot P + j, P = root slot.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from specjax import model, sampling
from specjax import tree as tree_lib
from specjax.config import ModelConfig
from specjax.drafters import acceptance
from specjax.drafters.base import Proposal, Topology, expansion_topology, path_scores
from specjax.tree import SsmTopology

PER_ROW = True  # cache [B, K, S, A] per layer and ssm_len [B] move with their row (specjax.row_tiers)


def catch_up(params, cfg: ModelConfig, cache: model.KVCache, seq, ssm_len, root_slot, width: int):
    """Runs seq[b, ssm_len[b] .. root_slot[b]] (1..width tokens) through the SSM.

    Args:
      seq: [B, S] token buffer; root_slot [B] = P; ssm_len [B] = first slot without valid SSM K/V.
      width: static max count (m + 1).
    Returns (logits at the root [B, V], cache).
    """
    B, S = seq.shape
    t = jnp.arange(width)[None, :]
    pos = ssm_len[:, None] + t  # [B, W]
    real = pos <= root_slot[:, None]
    tokens = jnp.take_along_axis(seq, jnp.minimum(pos, S - 1), axis=1)
    slots = jnp.where(real, pos, S)
    mask = jnp.arange(S)[None, None, :] <= pos[:, :, None]  # [B, W, S]
    hidden, cache = model.forward(params, cfg, tokens, pos, cache, slots, mask)
    last = (root_slot - ssm_len)[:, None, None]  # index of the root among the W tokens
    h_root = jnp.take_along_axis(hidden, last, axis=1)[:, 0]
    return model.lm_head(params, cfg, h_root), cache


def level_mask(topo: SsmTopology, level: int, root_slot, num_slots: int):
    """[B, w, S]: the w frontier nodes of `level` see committed slots <= P (root included) and the
    slots P + i of their tree ancestors-or-self i."""
    start, stop = int(topo.level_start[level]), int(topo.level_stop[level])
    anc = jnp.asarray(topo.ancestors[start:stop])  # [w, n+1]
    n1 = anc.shape[1]
    rel = jnp.arange(num_slots)[None, :] - root_slot[:, None]  # [B, S]: tree node index of slot s
    tree_ok = jnp.moveaxis(anc[:, jnp.clip(rel, 0, n1 - 1)], 0, 1)  # [B, w, S]
    in_tree = ((rel >= 0) & (rel < n1))[:, None, :]
    return (rel <= 0)[:, None, :] | (in_tree & tree_ok)


def draft_tree(key, params, cfg: ModelConfig, cache: model.KVCache, seq, ssm_len, root_slot,
               topo: SsmTopology, sampling_cfg: sampling.SamplingConfig, stochastic: bool):
    """Drafts one SSM's tree. Returns (tokens [B, n+1], q [B, n+1, V] or None, cache).

    tokens[:, 0] is the root. q[:, j] is the distribution node j was drawn from (stochastic) or a
    one-hot on its token (deterministic top-k children); None when `stochastic` is False and the
    caller verifies greedily.
    """
    B, S = seq.shape
    n1 = topo.parents.shape[0]
    m = len(topo.expansion)
    root = jnp.take_along_axis(seq, root_slot[:, None], axis=1)[:, 0]
    logits, cache = catch_up(params, cfg, cache, seq, ssm_len, root_slot, width=m + 1)
    frontier_logits = logits[:, None, :]  # [B, w=1, V]
    tokens = jnp.zeros((B, n1), jnp.int32).at[:, 0].set(root)
    qs = [jnp.zeros((B, 1, cfg.vocab_size), jnp.float32)] if stochastic else None
    for level in range(1, m + 1):
        k = topo.expansion[level - 1]
        start, stop = int(topo.level_start[level]), int(topo.level_stop[level])
        parent_frontier = jnp.asarray(topo.parents[start:stop] - topo.level_start[level - 1])  # [w']
        rank = jnp.asarray(topo.children_rank[start:stop])  # [w']
        if stochastic:
            key, sub = sampling.split_rows(sampling.as_row_keys(key, B), 2)  # one key per row [B, 2]
            probs = sampling.probs(frontier_logits, sampling_cfg)  # [B, w, V]
            draws = sampling.draw_rows(sub, probs, k)  # [B, w, k]
            child = draws[:, parent_frontier, rank]  # [B, w']
            qs.append(probs[:, parent_frontier])  # [B, w', V]
        else:
            _, top = jax.lax.top_k(frontier_logits, k)  # [B, w, k]
            child = top[:, parent_frontier, rank]
        tokens = tokens.at[:, start:stop].set(child.astype(jnp.int32))
        if level == m:
            break
        # Run this level through the SSM so its children can be drawn.
        positions = root_slot[:, None] + jnp.asarray(topo.depth[start:stop])[None, :]
        slots = root_slot[:, None] + jnp.arange(start, stop)[None, :]
        mask = level_mask(topo, level, root_slot, S)
        hidden, cache = model.forward(params, cfg, child.astype(jnp.int32), positions, cache, slots, mask)
        frontier_logits = model.lm_head(params, cfg, hidden)
    q = jnp.concatenate(qs, axis=1) if stochastic else None
    return tokens, q, cache


# ----------------------------------------------------------------------------- the drafter interface


@dataclasses.dataclass(frozen=True)
class Config:
    """One SSM expanding <k_1..k_m> over its own cache; `index` names its params in the engine.
    rates: per depth, per rank conditional acceptance (see drafters.acceptance)."""

    model: ModelConfig
    expansion: tuple[int, ...]
    index: int = 0
    rates: tuple = ()
    kind: str = "ssm"

    @property
    def name(self) -> str:
        return f"ssm{self.index}"

    @property
    def topology(self) -> Topology:
        return expansion_topology(self.expansion)

    @property
    def sampled(self) -> bool:
        return True  # under stochastic decoding with sampled children, nodes are draws from q


@flax.struct.dataclass
class State:
    cache: model.KVCache  # the SSM's own cache, [B, K, S, A] per layer
    ssm_len: jax.Array  # [B]: first slot whose SSM K/V are not valid


def init_state(ctx, cfg: Config) -> State:
    """A fresh SSM cache and its prefill over the prompt (minus the root, as the LLM's)."""
    from specjax import engine, sharding

    base = ctx.base
    B, S = base.tokens.shape
    dtype = jax.tree.leaves(ctx.params)[0].dtype
    cache = sharding.new_cache(cfg.model, B, S, dtype, ctx.mesh, sharding.SSM_SPLIT)
    cache = ctx.run("prefill", engine._prefill, (ctx.params, cache, base.tokens, base.prompt_len),
                    dict(cfg=cfg.model, bucket=ctx.bucket))
    return State(cache=cache, ssm_len=jnp.array(base.length, copy=True))


def propose(key, params, state: State, cfg: Config, base, sampling_cfg, stochastic: bool):
    """The SSM's tree below the root; static path scores (sampled nodes must not be ranked by their
    own draws, and the same scores serve greedy decoding)."""
    topo = tree_lib.ssm_topology(cfg.expansion)
    tokens, q, cache = draft_tree(key, params, cfg.model, state.cache, base.tokens, state.ssm_len,
                                  base.length, topo, sampling_cfg, stochastic)
    B, n = tokens.shape[0], topo.num_candidates
    scores = path_scores(cfg.topology, acceptance.rate_fn(cfg.rates or acceptance.PRIORS[cfg.kind]))
    prop = Proposal(tokens=tokens[:, 1:], valid=jnp.ones((B, n), bool),
                    score=jnp.broadcast_to(jnp.asarray(scores), (B, n)), q=None if q is None else q[:, 1:])
    return prop, state.replace(cache=cache)


def update(state: State, cfg: Config, step) -> State:
    """The catch-up ran the root through the SSM, so its cache is valid up to the root slot P."""
    del cfg
    return state.replace(ssm_len=jnp.where(step.running, step.root_slot + 1, state.ssm_len))


def insert_row(state: State, row: State, b, cfg: Config) -> State:
    """A new request in row b: its freshly prefilled SSM cache and ssm_len replace the old row's."""
    from specjax.drafters.base import put_row

    return put_row(state, row, b)


def shard_state(state: State, cfg: Config, mesh) -> State:
    from specjax import sharding

    if mesh is None:
        return state
    return State(cache=sharding.shard_cache(state.cache, cfg.model, mesh, sharding.SSM_SPLIT),
                 ssm_len=sharding.shard_rows(state.ssm_len, mesh))
