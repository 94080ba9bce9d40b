"""Token-tree verification: greedy matching and multi-step speculative sampling (MSS).

Tree layout (shared with the tree and draft modules), N nodes, static:
  node 0 is the root (the last verified token); parents[j] < j for j >= 1, parents[0] = -1
  (topological order); valid [B, N] marks real nodes, padding is never accepted;
  tokens [B, N] int32; parents [B, N] or [N] int32.
The LLM has scored the whole tree in one forward: its output at node u is the distribution of the
token after root..u, i.e. over u's children. max_depth (M) is static; a node deeper than M is never
accepted (the tree is cut at depth M).

Output (`VerifyResult`): the accepted path root first, the number of accepted candidates, and one
token of the LLM's own (the bonus / correction token). Each step therefore emits
num_accepted + 1 tokens: tokens[path[1:num_accepted+1]] followed by next_token.

Greedy:  accept child v of u iff tokens[v] == argmax LLM(u); output == greedy decoding.
MSS:     SpecInfer Algorithm 2; the output has exactly the LLM's (warped) distribution
         (Theorem 4.2) provided every valid node's token was drawn from the q it carries.
         Deterministic (top-k) children carry a one-hot q: the same formulas then give the
         point-mass rule (accept with prob p(x); on reject zero p(x) and renormalize).

Merged duplicates (a node with the same parent and token as an earlier node): for greedy and for
one-hot q, dropping the later twin (valid = False, its children re-parented to the earlier one)
changes nothing. For *sampled* siblings it does: MSS would reject the twin for sure, but that
rejection still moves the residual (p <- norm(max(0, p - q_twin))), and skipping it biases the
output. With sampled children, keep the twin valid (it is then a certain, harmless rejection;
greedy never picks it, ties go to the smaller index) and only re-parent its children.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from specjax import sampling


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Outcome of verifying one tree per batch row.

    path:         [B, M+1] int32 node indices of the accepted path, root (0) first, -1 after the
                  last accepted node.
    num_accepted: [B] int32 accepted candidate nodes (0..M; the root is not counted).
    next_token:   [B] int32 the LLM's own token after the accepted path (bonus or correction).
    last_node:    [B] int32 the last accepted node (0 = only the root).
    """

    path: jax.Array
    num_accepted: jax.Array
    next_token: jax.Array
    last_node: jax.Array


def _broadcast_parents(parents: jax.Array, batch: int) -> jax.Array:
    """parents [N] or [B, N] -> [B, N] int32 with the root's -1 replaced by 0 (a self-loop)."""
    parents = jnp.broadcast_to(jnp.asarray(parents, jnp.int32), (batch, parents.shape[-1]))
    return jnp.maximum(parents, 0)


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """Row-wise gather: x [B, N], idx [B, ...] -> [B, ...]."""
    return jax.vmap(lambda xr, ir: xr[ir])(x, idx)


def _accepted_chain(ok: jax.Array, parents: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Which nodes have ok on themselves and every ancestor, and every node's depth.

    ok [B, N] bool (ok[:, 0] is ignored: the root is always accepted), parents [B, N] with the root
    pointing to itself. Pointer doubling: ceil(log2 N) rounds of gathers, exact for any depth.
    Returns (chain_ok [B, N] bool, depth [B, N] int32).
    """
    n = ok.shape[-1]
    is_root = jnp.arange(n) == 0
    chain_ok = ok | is_root
    depth = jnp.broadcast_to(~is_root, ok.shape).astype(jnp.int32)  # steps to `ptr`
    ptr = parents
    for _ in range(max(1, math.ceil(math.log2(n)))):
        chain_ok = chain_ok & _gather(chain_ok, ptr)
        depth = depth + _gather(depth, ptr)
        ptr = _gather(ptr, ptr)
    return chain_ok, depth


def _path_to(last: jax.Array, num_accepted: jax.Array, parents: jax.Array,
             max_depth: int) -> jax.Array:
    """Root-first path to `last`, -1 padded. last, num_accepted [B], parents [B, N] (root -> 0).

    Returns [B, M+1] int32.
    """
    ancestors = [last]  # ancestors[i] = the ancestor of `last` at depth num_accepted - i
    for _ in range(max_depth):
        ancestors.append(_gather(parents, ancestors[-1]))
    ancestors = jnp.stack(ancestors, axis=-1)  # [B, M+1]
    k = jnp.arange(max_depth + 1)  # [M+1] depth along the path
    idx = jnp.clip(num_accepted[:, None] - k, 0, max_depth)  # [B, M+1]
    path = jnp.take_along_axis(ancestors, idx, axis=-1)
    return jnp.where(k <= num_accepted[:, None], path, -1).astype(jnp.int32)


def greedy_verify(logits: jax.Array, tokens: jax.Array, parents: jax.Array, valid: jax.Array,
                  max_depth: int) -> VerifyResult:
    """Longest path of children that match the LLM's argmax at their parent.

    logits [B, N, V] (the LLM's output at every node), tokens [B, N] int32, parents [B, N] or [N]
    int32, valid [B, N] bool; max_depth static. A node is accepted iff it and all its ancestors are
    valid and match; the deepest accepted node wins (ties -> smallest index) and next_token is the
    LLM's argmax there.
    """
    b, n = tokens.shape
    parents = _broadcast_parents(parents, b)
    target = sampling.argmax(logits)  # [B, N] argmax at every node
    match = valid & (tokens == _gather(target, parents))  # [B, N] (row 0 ignored)
    chain_ok, depth = _accepted_chain(match, parents)
    score = jnp.where(chain_ok & (depth <= max_depth), depth, -1)  # [B, N]
    last = jnp.argmax(score, axis=-1).astype(jnp.int32)  # deepest, first index among ties
    num_accepted = _gather(depth, last)
    return VerifyResult(
        path=_path_to(last, num_accepted, parents, max_depth),
        num_accepted=num_accepted,
        next_token=_gather(target, last),
        last_node=last,
    )


def _mss_row(r: jax.Array, p: jax.Array, tokens: jax.Array, parents: jax.Array,
             valid: jax.Array, q: jax.Array, max_depth: int):
    """Algorithm 2 on one tree, siblings tried in index order. Returns (last, depth, residual [V]).

    r [N] uniforms in [0, 1), p [N, V] LLM probabilities, tokens/parents/valid [N], q [N, V].
    One scan over j = 1..N-1 with carry (u, depth(u), residual over V): j is tried iff valid,
    parents[j] == u and depth(u) < max_depth. Children of an accepted node come later in the scan,
    and siblings after it no longer have parent u, so one pass visits exactly Algorithm 2's nodes.
    """

    def step(carry, x):
        u, depth, res = carry
        j, r_j, tok, par, ok, p_j, q_j = x
        tried = ok & (par == u) & (depth < max_depth)
        # Accept with probability min(1, res(x) / q(x)): r < res/q, written without dividing.
        # r in [0, 1) makes this exact (res(x) = 0 never accepts); q(x) = 0 < res(x) (a token the
        # drafter could not have drawn) accepts, the min(1, inf) limit.
        accept = tried & (r_j * q_j[tok] < res[tok])
        rejected = jnp.maximum(res - q_j, 0.0)
        total = rejected.sum()
        # total == 0 needs res <= q everywhere, i.e. res == q up to rounding, where a rejection has
        # probability ~0: keep res rather than divide by zero.
        rejected = jnp.where(total > 0, rejected / jnp.where(total > 0, total, 1.0), res)
        res = jnp.where(accept, p_j, jnp.where(tried, rejected, res))
        u = jnp.where(accept, j, u)
        depth = depth + accept.astype(jnp.int32)
        return (u, depth, res), None

    n = tokens.shape[0]
    xs = (jnp.arange(1, n, dtype=jnp.int32), r[1:], tokens[1:], parents[1:], valid[1:],
          p[1:], q[1:])
    init = (jnp.int32(0), jnp.int32(0), p[0])
    (last, depth, res), _ = jax.lax.scan(step, init, xs)
    return last, depth, res


def mss_verify(key: jax.Array, p: jax.Array, tokens: jax.Array, parents: jax.Array,
               valid: jax.Array, q: jax.Array, max_depth: int) -> VerifyResult:
    """Multi-step speculative sampling (SpecInfer Algorithm 2) over a padded token tree.

    key: one PRNG key per row [B, 2] (a row's draws depend on its key alone), or one key [2] split over the rows.
    p [B, N, V] float: the LLM's warped probabilities at every node (`sampling.probs`).
    tokens [B, N] int32, parents [B, N] or [N] int32, valid [B, N] bool.
    q [B, N, V] float: for node j, the distribution its token was drawn from (the drafter's warped
      distribution at j's parent); one-hot on tokens[j] for deterministic (top-k) children.
    max_depth: static M.
    Lossless (Theorem 4.2): tokens[path[1:]] then next_token are distributed as the LLM's.
    With greedy `p` (one-hot) the result equals `greedy_verify` on trees without valid duplicates.
    """
    b, n, _ = p.shape
    parents = _broadcast_parents(parents, b)
    p = p.astype(jnp.float32)
    q = q.astype(jnp.float32)
    key_r, key_x = sampling.split_rows(sampling.as_row_keys(key, b), 2)  # a row's draws are its own
    r = sampling.uniform_rows(key_r, (n,))  # one uniform per node, [0, 1)
    row = jax.vmap(functools.partial(_mss_row, max_depth=max_depth))
    last, num_accepted, res = row(r, p, tokens, parents, valid, q)
    next_token = sampling.draw_rows(key_x, res)  # [B]: res need not be normalised
    return VerifyResult(
        path=_path_to(last, num_accepted, parents, max_depth),
        num_accepted=num_accepted,
        next_token=next_token,
        last_node=last,
    )
