"""Speculative decoding: prefill, then one jitted while_loop over {draft, merge, verify, commit, update}.

One step, for every request b with root slot P = length[b]:

    draft    every drafter proposes a subtree from the root                (drafters.*.propose)
    merge    the proposals become one tree, optionally the N best nodes    (drafters.merge.merge)
    verify   one LLM forward over root + all nodes with the tree mask,     (model.forward, verify.*)
             positions P + depth, K/V at slots P .. P + N - 1 (model.forward_features, which also
             returns the residual streams after the tap layers, when a feature drafter reads them)
    commit   the accepted path's K/V move to slots P + 1 ..; accepted tokens + the bonus are emitted
    update   every drafter updates its own state from the verified tree   (drafters.*.update)
             and the LLM's logits
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp

from specjax import drafters as drafters_lib
from specjax import model, sampling, verify
from specjax.config import ModelConfig
from specjax.decode_state import DecodeState, record_step, step_room
from specjax.drafters.merge import concat_layout, merge


@dataclasses.dataclass(frozen=True)
class SpecConfig:
    """Everything static about a speculative loop (the jit's only static argument besides shapes).

    drafters: the drafter configs (specjax.drafters), merged in this order.
    budget: candidate nodes (root excluded) kept per step, the best by path score; None keeps every
      proposed node.
    """

    llm: ModelConfig
    drafters: tuple
    sampling: sampling.SamplingConfig
    eos_ids: tuple[int, ...] = ()
    sampled_children: bool = True  # stochastic decoding: sample SSM children (True) or take top-k (False)
    budget: int | None = None

    @property
    def stochastic_drafts(self) -> bool:
        return (not self.sampling.is_greedy) and self.sampled_children

    @property
    def topologies(self) -> tuple:
        return tuple(d.topology for d in self.drafters)

    @property
    def num_candidates(self) -> int:
        """A: proposed nodes of all drafters (root excluded)."""
        return sum(t.num_nodes for t in self.topologies)

    @property
    def num_nodes(self) -> int:
        """N: nodes of the verified tree, root included."""
        a = self.num_candidates
        return 1 + (a if self.budget is None else min(a, self.budget))

    @property
    def depth(self) -> int:
        return max(t.max_depth for t in self.topologies)

    @property
    def step_room(self) -> int:
        return step_room(self.num_nodes, self.depth)

    @property
    def ssms(self) -> tuple[ModelConfig, ...]:
        return tuple(d.model for d in self.drafters if d.kind == "ssm")

    @property
    def feature_taps(self) -> tuple[int, ...]:
        """The LLM layers whose residual streams some drafter reads (sorted; () for none)."""
        return feature_taps(self.drafters)


def feature_taps(drafters) -> tuple[int, ...]:
    return tuple(sorted({t for d in drafters if d.kind == "feature" for t in d.taps}))


@flax.struct.dataclass
class SpecState:
    base: DecodeState  # LLM cache, token buffer, stops and metrics
    drafters: tuple  # one state per drafter
    hits: jax.Array  # [B, 1 + A] int32: steps in which each proposed node's sequence was accepted
    credit: jax.Array  # [B, D] int32: accepted tokens each drafter had proposed


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a drafter's update sees of the step: root_slot [B] P, running [B], the verified tree
    (drafters.merge), the LLM's logits at its nodes [B, N, V], its features there [B, N, F] (the
    residual streams after layers `taps`, layer order; None when no drafter reads them), the
    verification's accepted path [B, M + 1] (node indices, root first, -1 padded) and num_accepted
    [B] = k, and new_tokens [B, M + 1] (the k accepted tokens, then the LLM's bonus token)."""

    root_slot: jax.Array
    running: jax.Array
    tree: object
    logits: jax.Array
    features: jax.Array | None = None
    taps: tuple = ()
    path: jax.Array | None = None
    num_accepted: jax.Array | None = None
    new_tokens: jax.Array | None = None


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


def accepted_sequences(res: verify.VerifyResult, rep, N: int):
    """[B, N] bool: node j's sequence was accepted (j or a node with j's representative is on the
    path; a sampled duplicate can be accepted in its representative's place)."""
    B = rep.shape[0]
    M1 = res.path.shape[1]
    on = (jnp.arange(M1)[None, :] <= res.num_accepted[:, None]) & (jnp.arange(M1)[None, :] >= 1)
    node = jnp.maximum(res.path, 0)
    rep_on = jnp.take_along_axis(rep, node, axis=1)  # [B, M1]
    marks = jax.vmap(lambda r, o: jnp.zeros((N,), bool).at[jnp.where(o, r, N)].set(True, mode="drop"))(rep_on, on)
    return jnp.take_along_axis(marks, rep, axis=1)


def spec_step(llm_params, drafter_params: tuple, state: SpecState, cfg: SpecConfig) -> SpecState:
    base = state.base
    B, S = base.tokens.shape
    P = base.length
    running = ~base.done
    M = cfg.depth
    key, *keys = sampling.split_rows(base.key, len(cfg.drafters) + 2)  # per row: [B, 2] each

    # Draft: every drafter proposes a subtree from the root; merge them.
    proposals, dstates = [], []
    for i, dcfg in enumerate(cfg.drafters):
        prop, st = drafters_lib.module(dcfg).propose(keys[i], drafter_params[i], state.drafters[i], dcfg, base,
                                                     cfg.sampling, cfg.stochastic_drafts)
        proposals.append(prop)
        dstates.append(st)
    root = jnp.take_along_axis(base.tokens, P[:, None], axis=1)[:, 0]
    stochastic = not cfg.sampling.is_greedy
    tree, node_q, origin, src, rep = merge(root, proposals, cfg.topologies,
                                           [d.sampled and cfg.stochastic_drafts for d in cfg.drafters],
                                           cfg.llm.vocab_size, stochastic, cfg.budget)
    N = tree.tokens.shape[1]

    # Verify: one LLM forward over the root and every node.
    from specjax import tree as tree_lib

    positions = P[:, None] + tree.depth
    slots = jnp.where(running[:, None], P[:, None] + jnp.arange(N)[None, :], S)
    mask = tree_lib.tree_attention_mask(tree, P, S, P)
    taps = cfg.feature_taps
    if taps:
        hidden, cache, feats = model.forward_features(llm_params, cfg.llm, tree.tokens, positions, base.cache,
                                                      slots, mask, taps)
    else:
        hidden, cache = model.forward(llm_params, cfg.llm, tree.tokens, positions, base.cache, slots, mask)
        feats = None
    logits = model.lm_head(llm_params, cfg.llm, hidden)  # [B, N, V]
    if cfg.sampling.is_greedy:
        res = verify.greedy_verify(logits, tree.tokens, tree.parents, tree.valid, M)
    else:
        p = sampling.probs(logits, cfg.sampling)
        res = verify.mss_verify(keys[-1], p, tree.tokens, tree.parents, tree.valid, node_q, M)

    # Commit: accepted K/V next to the root; emit accepted tokens + the bonus token.
    cache = commit_path(cache, P, res.path, res.num_accepted, running)
    accepted = jnp.take_along_axis(tree.tokens, jnp.maximum(res.path[:, 1:], 0), axis=1)  # [B, M]
    new_tokens = jnp.concatenate([accepted, jnp.zeros((B, 1), jnp.int32)], axis=1)
    new_tokens = new_tokens.at[jnp.arange(B), res.num_accepted].set(res.next_token.astype(jnp.int32))
    base = base.replace(cache=cache, key=key)
    base, n = record_step(base, new_tokens.astype(jnp.int32), res.num_accepted + 1, cfg.eos_ids,
                          cfg.step_room)
    base = base.replace(length=P + n)

    # Which drafters proposed the emitted accepted tokens (statistics only; a stop may cut the step).
    acc = accepted_sequences(res, rep, N) & running[:, None] & (tree.depth <= jnp.minimum(res.num_accepted, n)[:, None])
    hits = jax.vmap(lambda h, s, a: h.at[s].add(a.astype(jnp.int32)))(state.hits, src, acc)
    D = len(cfg.drafters)
    by = (acc[:, None, :, None] & (origin[:, None, :, None] == jnp.arange(D)[None, :, None, None])
          & (tree.depth[:, None, :, None] == jnp.arange(1, M + 1)[None, None, None, :]))  # [B, D, N, M]
    credit = state.credit + by.any(axis=2).sum(-1).astype(jnp.int32)

    # Update: every drafter learns from the verified tree.
    step = StepInfo(root_slot=P, running=running, tree=tree, logits=logits, features=feats, taps=taps,
                    path=res.path, num_accepted=res.num_accepted, new_tokens=new_tokens)
    dstates = tuple(drafters_lib.module(d).update(s, d, step) for d, s in zip(cfg.drafters, dstates))
    return SpecState(base=base, drafters=dstates, hits=hits, credit=credit)


def init_stats(cfg: SpecConfig, batch: int) -> tuple[jax.Array, jax.Array]:
    A = len(concat_layout(cfg.topologies)["parents"])
    return jnp.zeros((batch, A), jnp.int32), jnp.zeros((batch, len(cfg.drafters)), jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("state",))
def spec_loop(llm_params, drafter_params: tuple, state: SpecState, max_steps, cfg: SpecConfig) -> SpecState:
    """Decodes speculatively until every row has stopped or max_steps (a traced int32 scalar: changing
    it does not recompile) steps have run; the host calls it again to go on."""
    state, _ = jax.lax.while_loop(
        lambda c: jnp.any(~c[0].base.done) & (c[1] < max_steps),
        lambda c: (spec_step(llm_params, drafter_params, c[0], cfg), c[1] + 1),
        (state, jnp.zeros((), jnp.int32)),
    )
    return state
