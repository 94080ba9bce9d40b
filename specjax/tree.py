"""Token trees: the static topology of an expansion <k_1..k_m>, the merge of several SSMs' trees,
ancestor masks and the tree attention mask.

Conventions (every module that touches a tree relies on them):
  * A tree has N nodes; node 0 is the root (the last verified token). Nodes are in topological order:
    parents[j] < j for j >= 1, parents[0] = -1. depth[0] = 0, a root child has depth 1.
  * One SSM's tree of n = cfg.nodes_per_ssm candidates is in BFS order (SsmTopology).
  * Several SSMs' trees are concatenated in SSM order, root shared: SSM s's node j >= 1 has merged index
    1 + s * n + (j - 1). Every per-node array a drafter produces (tokens, the q each token was drawn
    from) concatenates the same way and stays index-aligned with the merged Tree.
  * merge_trees() keeps the static shape N: a node whose token and (representative) parent repeat an
    earlier node's is a *duplicate*, marked invalid; its descendants are re-parented under the earlier
    node (its *representative*), so the valid nodes hold the union of all candidate sequences, each once.

Host side (numpy, static): TreeConfig, SsmTopology / ssm_topology(), ConcatTopology / concat_topology(),
sequences(). Jit side (pure jnp, static shapes, cfg the only static argument): merge_trees(),
ancestor_mask(), representative(), tree_positions(), tree_attention_mask().
"""

from __future__ import annotations

import dataclasses
import functools
import re

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax.config import ConfigError


class TreeConfigError(ConfigError):
    """A token-tree configuration that cannot be built (a ValueError)."""


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TreeConfig:
    """The static shape of a speculation step (hashable: the only static jit argument).

    expansion:   <k_1..k_m>: at speculative step i every frontier node gets k_i children.
    num_ssms:    number of SSMs whose trees are merged.
    node_budget: max candidate nodes (root excluded) over all SSMs together.
    """

    expansion: tuple[int, ...] = (1, 1, 3, 1, 1, 1, 1, 1)
    num_ssms: int = 1
    node_budget: int = 64

    def __post_init__(self):
        exp = self.expansion
        if isinstance(exp, str):
            raise TreeConfigError(f"expansion must be a tuple of ints, got the string {exp!r}; "
                                  "use TreeConfig.parse() for strings such as '1,1,3,1'")
        try:
            exp = tuple(exp)
        except TypeError:
            raise TreeConfigError(f"expansion must be a tuple of ints, got {exp!r}") from None
        if not exp:
            raise TreeConfigError("expansion is empty: need at least one step, e.g. (1, 1, 3, 1)")
        bad = [k for k in exp if not _is_int(k)]
        if bad:
            raise TreeConfigError(f"expansion {exp!r} has non-integer entries {bad!r}")
        exp = tuple(int(k) for k in exp)
        small = [(i + 1, k) for i, k in enumerate(exp) if k < 1]
        if small:
            where = ", ".join(f"k_{i}={k}" for i, k in small)
            raise TreeConfigError(f"expansion {exp} has {where}: every k_i must be >= 1 "
                                  "(each frontier node gets k_i children)")
        object.__setattr__(self, "expansion", exp)  # a list given by the caller becomes a tuple
        if not _is_int(self.num_ssms) or self.num_ssms < 1:
            raise TreeConfigError(f"num_ssms must be an integer >= 1, got {self.num_ssms!r}")
        if not _is_int(self.node_budget) or self.node_budget < 1:
            raise TreeConfigError(f"node_budget must be an integer >= 1, got {self.node_budget!r}")
        total = self.num_ssms * self.nodes_per_ssm
        if total > self.node_budget:
            raise TreeConfigError(
                f"tree too large: {self.num_ssms} SSM(s) x {self.nodes_per_ssm} nodes per SSM "
                f"(expansion {exp}) = {total} candidate nodes > node_budget={self.node_budget}; "
                f"raise node_budget to at least {total}, use fewer SSMs or a smaller expansion")

    @classmethod
    def parse(cls, text: str, *, num_ssms: int = 1, node_budget: int = 64) -> "TreeConfig":
        """'1,1,3,1' (optionally in <>, () or []) -> TreeConfig(expansion=(1, 1, 3, 1), ...)."""
        if not isinstance(text, str):
            raise TreeConfigError(f"expected an expansion string such as '1,1,3,1', got {text!r}")
        s = text.strip()
        if len(s) >= 2 and s[0] + s[-1] in ("<>", "()", "[]"):
            s = s[1:-1].strip()
        if not s:
            raise TreeConfigError(f"empty expansion string {text!r}: expected comma-separated "
                                  "positive integers such as '1,1,3,1'")
        ks = []
        for pos, item in enumerate(s.split(","), start=1):
            item = item.strip()
            if not re.fullmatch(r"[+-]?\d+", item):
                what = "is empty" if not item else f"is {item!r}, not an integer"
                raise TreeConfigError(f"bad expansion string {text!r}: item {pos} {what}; "
                                      "expected comma-separated positive integers such as '1,1,3,1'")
            ks.append(int(item))
        return cls(expansion=tuple(ks), num_ssms=num_ssms, node_budget=node_budget)

    @property
    def depth(self) -> int:
        """m: speculative steps, the depth of the deepest node."""
        return len(self.expansion)

    @property
    def level_widths(self) -> tuple[int, ...]:
        """Nodes of ONE SSM's tree at depths 1..m (prod_{j<=i} k_j); sums to nodes_per_ssm."""
        widths, w = [], 1
        for k in self.expansion:
            w *= k
            widths.append(w)
        return tuple(widths)

    @property
    def nodes_per_ssm(self) -> int:
        """n: candidate nodes (root excluded) of one SSM's tree = sum_i prod_{j<=i} k_j."""
        return sum(self.level_widths)

    @property
    def num_nodes(self) -> int:
        """N: nodes of the merged tree, root included = 1 + num_ssms * nodes_per_ssm."""
        return 1 + self.num_ssms * self.nodes_per_ssm


# ----------------------------------------------------------------------------- static topology


def _frozen(a) -> np.ndarray:
    a = np.asarray(a)
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class SsmTopology:
    """ONE SSM's tree for an expansion, BFS order, n candidates + root (arrays of length n + 1).

    parents [n+1] int32      parents[0] = -1
    depth [n+1] int32        depth[0] = 0
    children_rank [n+1]      0..k_i-1: node j is its parent's r-th child (r-th top-k token / r-th
                             sample); -1 at the root
    ancestors [n+1, n+1]     bool, ancestors[j, i] = i is ancestor-or-self of j
    level_start, level_stop  [m+1]: level i (depth i) is nodes level_start[i]:level_stop[i];
                             level 0 is the root. The r-th child of the a-th node of level i-1 is
                             node level_start[i] + a * k_i + r (with a frontier F: a < F, the
                             level's first F nodes).
    """

    expansion: tuple[int, ...]
    parents: np.ndarray
    depth: np.ndarray
    children_rank: np.ndarray
    ancestors: np.ndarray
    level_start: np.ndarray
    level_stop: np.ndarray

    @property
    def num_candidates(self) -> int:
        """n, root excluded."""
        return len(self.parents) - 1


def ssm_topology(expansion, frontier: int | None = None) -> SsmTopology:
    """The (cached) topology of one SSM's tree for expansion <k_1..k_m>.

    frontier F (EAGLE-2's dynamic tree): only F nodes of each level get children, so level i has
    min(F, w_{i-1}) * k_i nodes. This static shape takes each level's first F nodes; a drafter that
    picks its frontier at run time (drafters.feature) keeps the shape and gives its own parents.
    None: every node of a level gets children (SpecInfer's expansion)."""
    expansion = TreeConfig(expansion=tuple(expansion), node_budget=2**62).expansion  # validates
    if frontier is not None and (not _is_int(frontier) or frontier < 1):
        raise TreeConfigError(f"frontier must be an integer >= 1 (nodes expanded per level), got {frontier!r}")
    return _ssm_topology(expansion, None if frontier is None else int(frontier))


@functools.lru_cache(maxsize=None)
def _ssm_topology(expansion: tuple[int, ...], frontier: int | None = None) -> SsmTopology:
    parents, depth, rank = [-1], [0], [-1]
    level_start, level_stop = [0], [1]
    for i, k in enumerate(expansion, start=1):
        start = len(parents)
        stop = level_stop[-1] if frontier is None else min(level_stop[-1], level_start[-1] + frontier)
        for f in range(level_start[-1], stop):  # frontier, in order
            for r in range(k):
                parents.append(f)
                depth.append(i)
                rank.append(r)
        level_start.append(start)
        level_stop.append(len(parents))
    n1 = len(parents)
    anc = np.eye(n1, dtype=bool)
    for j in range(1, n1):
        anc[j] |= anc[parents[j]]  # parents[j] < j: its row is complete
    return SsmTopology(
        expansion=expansion,
        parents=_frozen(np.array(parents, np.int32)),
        depth=_frozen(np.array(depth, np.int32)),
        children_rank=_frozen(np.array(rank, np.int32)),
        ancestors=_frozen(anc),
        level_start=_frozen(np.array(level_start, np.int32)),
        level_stop=_frozen(np.array(level_stop, np.int32)),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class ConcatTopology:
    """The static concatenation of num_ssms copies of one SSM's tree, root shared (before dedup).

    parents, depth, children_rank [N]: as in SsmTopology, in merged indices.
    ssm [N]:    which SSM drafted node j (-1 at the root).
    local [N]:  node j's index in its SSM's tree (0 at the root).
    levels:     levels[d] = ascending merged indices of all nodes at depth d (levels[0] = [0]).
    """

    parents: np.ndarray
    depth: np.ndarray
    children_rank: np.ndarray
    ssm: np.ndarray
    local: np.ndarray
    levels: tuple[np.ndarray, ...]


@functools.lru_cache(maxsize=None)
def concat_topology(cfg: TreeConfig) -> ConcatTopology:
    """Merged index of SSM s's node j >= 1 is 1 + s * n + (j - 1); see the module docstring."""
    t = ssm_topology(cfg.expansion)
    n = t.num_candidates
    s = np.repeat(np.arange(cfg.num_ssms, dtype=np.int32), n)  # [num_ssms * n]
    local = np.tile(np.arange(1, n + 1, dtype=np.int32), cfg.num_ssms)
    p = t.parents[local]
    parents = np.where(p == 0, 0, 1 + s * n + (p - 1))
    depth = np.concatenate([[0], t.depth[local]]).astype(np.int32)
    return ConcatTopology(
        parents=_frozen(np.concatenate([[-1], parents]).astype(np.int32)),
        depth=_frozen(depth),
        children_rank=_frozen(np.concatenate([[-1], t.children_rank[local]]).astype(np.int32)),
        ssm=_frozen(np.concatenate([[-1], s]).astype(np.int32)),
        local=_frozen(np.concatenate([[0], local]).astype(np.int32)),
        levels=tuple(_frozen(np.flatnonzero(depth == d).astype(np.int32))
                     for d in range(cfg.depth + 1)),
    )


# ----------------------------------------------------------------------------- merged tree (jit side)


@flax.struct.dataclass
class Tree:
    """A merged token tree of static size N (a pytree; B rows, one tree each).

    tokens [B, N]   token of each node, root token at 0
    parents [B, N]  int32, re-pointed to representatives; -1 at the root. Duplicates keep a parent
                    too (their representative's parent), so they still sit among its siblings.
    depth [B, N]    int32, depth[:, 0] = 0
    valid [B, N]    bool, False for duplicates (their sequence is held by an earlier valid node)
    """

    tokens: jax.Array
    parents: jax.Array
    depth: jax.Array
    valid: jax.Array

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]

    def ancestor_mask(self) -> jax.Array:
        """[B, N, N] bool; see ancestor_mask()."""
        return ancestor_mask(self)


def merge_trees(tokens, cfg: TreeConfig, keep_duplicates: bool = False) -> Tree:
    """Merge num_ssms concatenated SSM trees, storing shared prefixes once.

    tokens: [B, N] the drafted tokens in merged order (root token at 0), N = cfg.num_nodes.
    keep_duplicates: static. With *sampled* children a duplicate must stay a valid (childless)
      candidate: multi-step speculative sampling rejects it for sure, but that rejection still moves
      the residual by the duplicate's own q, and skipping it would bias the output (see verify.py).
      Its descendants are re-parented under the representative either way.

    Node j is a duplicate iff an earlier node i < j has the same token and the same representative
    parent; its representative is the smallest such i (itself valid). Duplicates are invalid; every
    node's parent is re-pointed to the parent's representative, so a duplicate's descendants hang
    under the representative. Depth is unchanged (a representative has its duplicate's depth) and
    the order stays topological. Done level by level over the static topology: O(m) small
    [B, W, W] comparisons, W the width of a level over all SSMs.
    """
    topo = concat_topology(cfg)
    B, N = tokens.shape
    if N != cfg.num_nodes:
        raise ValueError(f"tokens has {N} nodes, TreeConfig {cfg} has num_nodes={cfg.num_nodes}")
    rep = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N))  # [B, N] representative of j
    for idx in topo.levels[1:]:  # static: one step per tree level, parents' reps already final
        W = len(idx)
        tok = tokens[:, idx]  # [B, W]
        rp = rep[:, topo.parents[idx]]  # [B, W] representatives of the parents
        same = (tok[:, :, None] == tok[:, None, :]) & (rp[:, :, None] == rp[:, None, :])  # [B, W, W]
        same &= np.tril(np.ones((W, W), bool))  # (j, i): i <= j; the diagonal is always True
        first = jnp.argmax(same, axis=-1)  # [B, W] smallest matching i (local index)
        rep = rep.at[:, idx].set(jnp.asarray(idx)[first])
    is_root = topo.parents < 0  # [N] static
    parents = jnp.where(is_root, -1, rep[:, np.maximum(topo.parents, 0)])  # [B, N]
    return Tree(
        tokens=tokens,
        parents=parents.astype(jnp.int32),
        depth=jnp.broadcast_to(jnp.asarray(topo.depth), (B, N)),
        valid=(rep == jnp.arange(N, dtype=jnp.int32)) | keep_duplicates,
    )


def ancestor_mask(tree: Tree) -> jax.Array:
    """[B, N, N] bool: mask[b, j, i] = i is ancestor-or-self of j; False on invalid rows and columns.

    Follows parent pointers max(depth) times, one [B, N] gather per step.
    """
    B, N = tree.parents.shape
    ids = jnp.arange(N, dtype=jnp.int32)

    def up(_, carry):
        cur, mask = carry  # cur [B, N]: the ancestor reached so far (-1 past the root)
        cur = jnp.where(cur >= 0, jnp.take_along_axis(tree.parents, jnp.maximum(cur, 0), axis=1), -1)
        return cur, mask | (cur[:, :, None] == ids)

    cur = jnp.broadcast_to(ids, (B, N))
    mask = cur[:, :, None] == ids  # [B, N, N] self
    _, mask = jax.lax.fori_loop(0, jnp.max(tree.depth), up, (cur, mask))
    return mask & tree.valid[:, :, None] & tree.valid[:, None, :]


def representative(tree: Tree) -> jax.Array:
    """[B, N] int32: the valid node holding node j's sequence (j itself when j is valid).

    Lets a stochastic verifier account for a duplicate sibling's draw (its own q) at its
    representative.
    """
    same = ((tree.tokens[:, :, None] == tree.tokens[:, None, :])
            & (tree.parents[:, :, None] == tree.parents[:, None, :])
            & tree.valid[:, None, :])  # [B, N, N] (j, i)
    return jnp.argmax(same, axis=-1).astype(jnp.int32)


def tree_positions(tree: Tree, prefix_len) -> jax.Array:
    """[B, N] position of each node: prefix_len [B] + depth (the root sits at position prefix_len)."""
    return prefix_len[:, None] + tree.depth


def tree_attention_mask(tree: Tree, prefix_len, num_slots: int, tree_start=None) -> jax.Array:
    """[B, N, S] bool: which cache slots each tree node (query) may attend to.

    prefix_len [B]: committed slots 0..prefix_len-1, seen by every query.
    tree_start [B]: tree node i's K/V live at slot tree_start + i (default prefix_len: the root at slot
                    prefix_len). Query j sees slot tree_start + i iff i is ancestor-or-self of j.
    Invalid (duplicate) rows see the committed prefix and the root, so no row is all-False even when
    prefix_len = 0. Slots past S drop out.

    Example: prefix_len = tree_start = 3, S = 10, nodes 1 <- 0, 2 <- 1, 3 <- 1, 4 <- 0 (4 invalid):

                     committed    tree nodes 0..4   free
            slot:    0  1  2  |  3  4  5  6  7   |  8  9
        query 0:     x  x  x  |  x  .  .  .  .   |  .  .     root
        query 1:     x  x  x  |  x  x  .  .  .   |  .  .
        query 2:     x  x  x  |  x  x  x  .  .   |  .  .
        query 3:     x  x  x  |  x  x  .  x  .   |  .  .
        query 4:     x  x  x  |  x  .  .  .  .   |  .  .     invalid: prefix + root
    """
    B, N = tree.tokens.shape
    if tree_start is None:
        tree_start = prefix_len
    slots = jnp.arange(num_slots)
    committed = slots[None, :] < prefix_len[:, None]  # [B, S]
    rel = slots[None, :] - tree_start[:, None]  # [B, S] tree node held by each slot
    in_tree = (rel >= 0) & (rel < N)  # [B, S]
    anc = ancestor_mask(tree)  # [B, N, N]
    anc = anc | (~tree.valid[:, :, None] & (jnp.arange(N) == 0))  # invalid rows see the root
    idx = jnp.broadcast_to(jnp.clip(rel, 0, N - 1)[:, None, :], (B, N, num_slots))
    tree_part = jnp.take_along_axis(anc, idx, axis=2) & in_tree[:, None, :]  # [B, N, S]
    return committed[:, None, :] | tree_part


# ----------------------------------------------------------------------------- host helpers


def sequences(tokens, parents, valid) -> set[tuple[int, ...]]:
    """Root-to-node token sequences (root token first) of the valid nodes of ONE tree row [N]."""
    tokens, parents, valid = (np.asarray(a) for a in (tokens, parents, valid))
    out = set()
    for j in np.flatnonzero(valid):
        seq, u = [], int(j)
        while u >= 0:
            seq.append(int(tokens[u]))
            u = int(parents[u])
        out.add(tuple(reversed(seq)))
    return out
