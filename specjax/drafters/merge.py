"""Merging any mix of drafters' proposals into one token tree of static size, optionally budgeted.

    proposals (one per drafter, static local shapes) -> concatenation, root shared        [B, A]
      -> closure: a node without a proposal (valid False) takes its descendants with it
      -> budget (optional): keep the root and the N - 1 best nodes by path score            [B, N]
      -> dedup: a node repeating an earlier node's token under the same (representative) parent
         is a duplicate; its children move under the representative
    -> tree_lib.Tree, q [B, N, V] (stochastic), origin [B, N] (which drafter proposed each node),
       src [B, N] (each node's index in the concatenation)

Parents are the drafters' static topologies', or per row where a drafter picks its tree's shape at run
time (Proposal.parents: a parent stays at the level above, so the levels, the closure and the order
below are the same).

Budget (EAGLE-2's observation): a node's path score never exceeds its parent's, and ties go to the
lower index (a parent's index is lower than its children's), so the top-N set under (score desc,
index asc) contains every kept node's parent: it is a tree, and sorting the kept indices keeps the
topological order. N is static, so the loop's shapes never change. Unproposed nodes score -inf and
are kept (invalid) only when fewer than N - 1 nodes were proposed.

Losslessness under stochastic verification (see verify.py): a sampled node's score must not depend
on its drawn token (drafters give sampled nodes static path scores), so which nodes the budget keeps
is independent of the draws. Duplicates: a *deterministic* (one-hot) duplicate is dropped; it comes
after its representative, which has tried its token already, and dropping a later deterministic
candidate whatever the earlier draws were leaves each residual step exact. A *sampled* duplicate must
stay a valid (childless) candidate: its rejection still moves the residual by its own q.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from specjax import tree as tree_lib


def concat_layout(topologies) -> dict:
    """Static layout of the concatenation, root at 0, drafter d's local node j at off[d] + j:
    parents [A] (-1 at the root), depth [A], origin [A] (-1 at the root), off [D]."""
    parents, depth, origin, off = [-1], [0], [-1], []
    for d, t in enumerate(topologies):
        o = len(parents)
        off.append(o)
        parents += [0 if p < 0 else o + int(p) for p in t.parents]
        depth += [int(x) for x in t.depth]
        origin += [d] * t.num_nodes
    return dict(parents=np.asarray(parents, np.int32), depth=np.asarray(depth, np.int32),
                origin=np.asarray(origin, np.int32), off=tuple(off))


def concat_parents(lay: dict, proposals, batch: int):
    """[B, A] parents in the concatenation (-1 at the root): the static layout's, with the per-row
    parents of proposals that give their own (Proposal.parents, local -> off + local; the root's
    children -> 0)."""
    out = jnp.broadcast_to(jnp.asarray(lay["parents"]), (batch, len(lay["parents"])))
    for o, p in zip(lay["off"], proposals):
        if p.parents is not None:
            n = p.parents.shape[1]
            out = out.at[:, o:o + n].set(jnp.where(p.parents >= 0, o + p.parents, 0).astype(jnp.int32))
    return out


def _rowgather(x, idx):
    """x [B, A, ...], idx [B, N] -> [B, N, ...]."""
    return jax.vmap(lambda a, i: a[i])(x, idx)


def select_budget(score, parents, budget: int):
    """Indices [B, budget + 1] (ascending, root first) of the root and the `budget` best nodes.

    score [B, A] with the root at +inf and children <= parents; parents [A] static."""
    _, top = jax.lax.top_k(score, budget + 1)  # ties: lower index first
    return jnp.sort(top, axis=-1).astype(jnp.int32)


def dedup(tokens, parents, valid, sampled, max_depth: int):
    """Representatives and the re-pointed tree of a topologically ordered tree of dynamic shape.

    tokens, parents [B, N] (-1 at the root), valid, sampled [B, N] bool. Node j's representative is
    the smallest valid i with j's token under the same representative parent (j itself when none);
    max_depth rounds of [B, N, N] comparisons settle one depth each.
    Returns (parents re-pointed to representatives, valid with deterministic duplicates dropped, rep).
    """
    B, N = tokens.shape
    ids = jnp.arange(N, dtype=jnp.int32)
    lower = jnp.tril(jnp.ones((N, N), bool))  # (j, i): i <= j
    par = jnp.maximum(parents, 0)
    rep = jnp.broadcast_to(ids, (B, N))
    same_tok = (tokens[:, :, None] == tokens[:, None, :]) & lower & valid[:, None, :] & valid[:, :, None]
    same_tok &= (ids[None, :, None] > 0) & (ids[None, None, :] > 0)
    for _ in range(max_depth):
        rp = jnp.where(parents >= 0, jnp.take_along_axis(rep, par, axis=1), -1)  # [B, N]
        same = same_tok & (rp[:, :, None] == rp[:, None, :])
        rep = jnp.where(same.any(-1), jnp.argmax(same, axis=-1), ids).astype(jnp.int32)
    new_parents = jnp.where(parents >= 0, jnp.take_along_axis(rep, par, axis=1), -1)
    is_dup = rep != ids
    return new_parents.astype(jnp.int32), valid & (~is_dup | sampled), rep


def merge(root, proposals, topologies, sampled_kinds, vocab: int, stochastic: bool,
          budget: int | None):
    """One tree from every drafter's proposal.

    root [B] the root tokens; proposals: one drafters.base.Proposal per drafter (static topologies
    alongside); sampled_kinds: per drafter, whether its nodes carry a sampled q; stochastic: static,
    build q [B, N, V] (one-hot for deterministic nodes); budget: None keeps every node (N = A).
    Returns (Tree, q or None, origin [B, N], src [B, N], rep [B, N]).
    """
    lay = concat_layout(topologies)
    A = len(lay["parents"])
    B = root.shape[0]
    tokens = jnp.concatenate([root[:, None].astype(jnp.int32)] + [p.tokens.astype(jnp.int32) for p in proposals], 1)
    valid = jnp.concatenate([jnp.ones((B, 1), bool)] + [p.valid for p in proposals], 1)
    score = jnp.concatenate([jnp.full((B, 1), jnp.inf)] + [p.score.astype(jnp.float32) for p in proposals], 1)
    all_parents = concat_parents(lay, proposals, B)  # [B, A]
    # Closure over the static levels: unproposed nodes take their descendants with them.
    for d in range(1, int(lay["depth"].max()) + 1):
        idx = np.flatnonzero(lay["depth"] == d)
        par = all_parents[:, idx]  # [B, w]
        valid = valid.at[:, idx].set(valid[:, idx] & jnp.take_along_axis(valid, par, axis=1))
        score = score.at[:, idx].set(jnp.minimum(score[:, idx], jnp.take_along_axis(score, par, axis=1)))
    score = jnp.where(valid, score, -jnp.inf)
    sampled_static = np.zeros(A, bool)
    for d, s in enumerate(sampled_kinds):
        if s and stochastic:
            sampled_static[lay["off"][d]: lay["off"][d] + topologies[d].num_nodes] = True
    if budget is None or budget + 1 >= A:
        src = jnp.broadcast_to(jnp.arange(A, dtype=jnp.int32), (B, A))
    else:
        src = select_budget(score, lay["parents"], budget)
    N = src.shape[1]
    # Re-index parents into the kept set (every kept node's parent is kept, see the docstring).
    pos = jax.vmap(lambda s: jnp.full((A,), -1, jnp.int32).at[s].set(jnp.arange(N, dtype=jnp.int32)))(src)
    par_src = jnp.take_along_axis(all_parents, src, axis=1)  # [B, N] parent in the concatenation
    parents = jnp.where(par_src >= 0, jnp.take_along_axis(pos, jnp.maximum(par_src, 0), axis=1), -1)
    k_tokens = jnp.take_along_axis(tokens, src, axis=1)
    k_valid = jnp.take_along_axis(valid, src, axis=1)
    k_sampled = jnp.asarray(sampled_static)[src]
    depth = jnp.asarray(lay["depth"])[src]
    origin = jnp.asarray(lay["origin"])[src]
    max_depth = int(lay["depth"].max())
    parents, k_valid, rep = dedup(k_tokens, parents, k_valid, k_sampled, max_depth)
    tree = tree_lib.Tree(tokens=k_tokens, parents=parents, depth=depth.astype(jnp.int32), valid=k_valid)
    q = None
    if stochastic:  # one-hot for deterministic kept nodes; only sampled proposals' q are gathered
        q = jax.nn.one_hot(k_tokens, vocab, dtype=jnp.float32)  # [B, N, V]
        with_q = [(o, p) for o, p in zip(lay["off"], proposals) if p.q is not None]
        if with_q:
            where = np.full(A, -1, np.int32)  # concatenation index -> row of the sampled q's
            row = 0
            for o, p in with_q:
                n = p.tokens.shape[1]
                where[o:o + n] = np.arange(row, row + n)
                row += n
            qi = jnp.asarray(where)[src]  # [B, N]
            sq = _rowgather(jnp.concatenate([p.q.astype(jnp.float32) for _, p in with_q], 1), jnp.maximum(qi, 0))
            q = jnp.where((qi >= 0)[:, :, None], sq, q)
    return tree, q, origin, src, rep
