"""Speculative decoding: prefill, then one jitted while_loop over {draft, merge, verify, commit}.

One step, for every request b with root slot P = length[b]:

    draft    each SSM expands its own token tree over its own cache     (draft.draft_tree)
    merge    the SSM trees become one padded tree, shared prefixes once  (tree.merge_trees)
    verify   one LLM forward over root + all nodes with the tree mask,   (model.forward, verify.*)
             positions P + depth, K/V at slots P .. P + N - 1
    commit   the accepted path's K/V move to slots P + 1 ..; accepted tokens + the bonus are emitted
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp

from specjax import model, sampling, tree as tree_lib, verify
from specjax.config import ModelConfig
from specjax.decode_state import DecodeState, record_step, step_room
from specjax.draft import draft_tree


@dataclasses.dataclass(frozen=True)
class SpecConfig:
    """Everything static about a speculative loop (the jit's only static argument besides shapes)."""

    llm: ModelConfig
    ssms: tuple[ModelConfig, ...]
    tree: tree_lib.TreeConfig
    sampling: sampling.SamplingConfig
    eos_ids: tuple[int, ...] = ()
    sampled_children: bool = True  # stochastic decoding: sample children (True) or take top-k (False)

    @property
    def stochastic_drafts(self) -> bool:
        return (not self.sampling.is_greedy) and self.sampled_children

    @property
    def step_room(self) -> int:
        return step_room(self.tree.num_nodes, self.tree.depth)


@flax.struct.dataclass
class SpecState:
    base: DecodeState  # LLM cache, token buffer, stops and metrics
    ssm_caches: tuple  # one KVCache per SSM
    ssm_len: jax.Array  # [B]: first slot whose SSM K/V are not valid (same for every SSM)


def commit_path(cache: model.KVCache, root_slot, path, num_accepted, running):
    """Moves the accepted nodes' K/V to the slots right after the root.

    Args:
      root_slot: [B] P; tree node i's K/V are at slot P + i.
      path: [B, M + 1] node indices, root first, -1 padded; num_accepted [B] = k.
    The node at depth d (1..k) moves from slot P + path[d] to slot P + d (read all, then write all).
    """
    B, M1 = path.shape
    S = cache.num_slots
    d = jnp.arange(1, M1)[None, :]
    src = jnp.minimum(root_slot[:, None] + jnp.maximum(path[:, 1:], 0), S - 1)  # [B, M]
    keep = (d <= num_accepted[:, None]) & running[:, None]
    dst = jnp.where(keep, root_slot[:, None] + d, S)  # S: dropped

    def move(c):  # c [B, K, S, A]; per row: gather all sources, then scatter (vmapped, as write_cache)
        return jax.vmap(lambda c, s, t: c.at[:, t].set(c[:, s], mode="drop"))(c, src, dst)

    return model.KVCache(k=tuple(map(move, cache.k)), v=tuple(map(move, cache.v)))


def spec_step(llm_params, ssm_params: tuple, state: SpecState, cfg: SpecConfig) -> SpecState:
    base = state.base
    B, S = base.tokens.shape
    P = base.length
    running = ~base.done
    topo = tree_lib.ssm_topology(cfg.tree.expansion)
    M = cfg.tree.depth
    key, *keys = jax.random.split(base.key, len(cfg.ssms) + 2)

    # Draft: each SSM expands its own tree; concatenate (root shared) and merge.
    node_tokens, node_q, ssm_caches = [], [], []
    for i, (params, scfg) in enumerate(zip(ssm_params, cfg.ssms)):
        tokens_i, q_i, cache_i = draft_tree(keys[i], params, scfg, state.ssm_caches[i], base.tokens,
                                            state.ssm_len, P, topo, cfg.sampling, cfg.stochastic_drafts)
        node_tokens.append(tokens_i if i == 0 else tokens_i[:, 1:])
        if q_i is not None:
            node_q.append(q_i if i == 0 else q_i[:, 1:])
        ssm_caches.append(cache_i)
    tree = tree_lib.merge_trees(jnp.concatenate(node_tokens, axis=1), cfg.tree,
                                keep_duplicates=cfg.stochastic_drafts)
    N = tree.tokens.shape[1]

    # Verify: one LLM forward over the root and every node.
    positions = P[:, None] + tree.depth
    slots = jnp.where(running[:, None], P[:, None] + jnp.arange(N)[None, :], S)
    mask = tree_lib.tree_attention_mask(tree, P, S, P)
    hidden, cache = model.forward(llm_params, cfg.llm, tree.tokens, positions, base.cache, slots, mask)
    logits = model.lm_head(llm_params, cfg.llm, hidden)  # [B, N, V]
    if cfg.sampling.is_greedy:
        res = verify.greedy_verify(logits, tree.tokens, tree.parents, tree.valid, M)
    else:
        p = sampling.probs(logits, cfg.sampling)
        q = (jnp.concatenate(node_q, axis=1) if cfg.stochastic_drafts
             else jax.nn.one_hot(tree.tokens, logits.shape[-1], dtype=jnp.float32))
        res = verify.mss_verify(keys[-1], p, tree.tokens, tree.parents, tree.valid, q, M)

    # Commit: accepted K/V next to the root; emit accepted tokens + the bonus token.
    cache = commit_path(cache, P, res.path, res.num_accepted, running)
    accepted = jnp.take_along_axis(tree.tokens, jnp.maximum(res.path[:, 1:], 0), axis=1)  # [B, M]
    new_tokens = jnp.concatenate([accepted, jnp.zeros((B, 1), jnp.int32)], axis=1)
    new_tokens = new_tokens.at[jnp.arange(B), res.num_accepted].set(res.next_token.astype(jnp.int32))
    base = base.replace(cache=cache, key=key)
    base, n = record_step(base, new_tokens.astype(jnp.int32), res.num_accepted + 1, cfg.eos_ids,
                          cfg.step_room)
    base = base.replace(length=P + n)
    return SpecState(base=base, ssm_caches=tuple(ssm_caches), ssm_len=jnp.where(running, P + 1, state.ssm_len))


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("state",))
def spec_loop(llm_params, ssm_params: tuple, state: SpecState, max_steps, cfg: SpecConfig) -> SpecState:
    """Decodes speculatively until every row has stopped or max_steps (a traced int32 scalar: changing
    it does not recompile) steps have run; the host calls it again to go on."""
    state, _ = jax.lax.while_loop(
        lambda c: jnp.any(~c[0].base.done) & (c[1] < max_steps),
        lambda c: (spec_step(llm_params, ssm_params, c[0], cfg), c[1] + 1),
        (state, jnp.zeros((), jnp.int32)),
    )
    return state
