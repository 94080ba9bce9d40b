"""Token trees: static topology, config validation, merge of SSM trees, ancestor and attention masks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specjax.tree import (
    TreeConfig,
    TreeConfigError,
    Tree,
    ancestor_mask,
    concat_topology,
    merge_trees,
    representative,
    sequences,
    ssm_topology,
    tree_attention_mask,
    tree_positions,
)

# ----------------------------------------------------------------------------- static topology


def test_topology_1131():
    t = ssm_topology((1, 1, 3, 1))
    #      0
    #      1
    #      2
    #   3  4  5
    #   6  7  8
    assert t.parents.tolist() == [-1, 0, 1, 2, 2, 2, 3, 4, 5]
    assert t.depth.tolist() == [0, 1, 2, 3, 3, 3, 4, 4, 4]
    assert t.children_rank.tolist() == [-1, 0, 0, 0, 1, 2, 0, 0, 0]
    assert t.level_start.tolist() == [0, 1, 2, 3, 6]
    assert t.level_stop.tolist() == [1, 2, 3, 6, 9]
    assert t.num_candidates == 8
    assert t.ancestors[7].tolist() == [True, True, True, False, True, False, False, True, False]
    assert t.ancestors.sum(axis=1).tolist() == (t.depth + 1).tolist()


def test_topology_branching_children_order():
    t = ssm_topology((2, 3))
    assert t.parents.tolist() == [-1, 0, 0, 1, 1, 1, 2, 2, 2]
    assert t.children_rank.tolist() == [-1, 0, 1, 0, 1, 2, 0, 1, 2]
    # The r-th child of the a-th node of level i-1 is level_start[i] + a * k_i + r.
    assert t.parents[t.level_start[2] + 1 * 3 + 2] == t.level_start[1] + 1


def test_paper_config_counts():
    cfg = TreeConfig()
    assert cfg.expansion == (1, 1, 3, 1, 1, 1, 1, 1)
    assert cfg.depth == 8
    assert cfg.level_widths == (1, 1, 3, 3, 3, 3, 3, 3)
    # sum_i prod_{j<=i} k_j = 1 + 1 + 3 * 6 = 20 (the paper's "24" is 3 sequences x 8 tokens,
    # counted without sharing the 2-token prefix).
    assert cfg.nodes_per_ssm == 20
    assert cfg.num_nodes == 21
    t = ssm_topology(cfg.expansion)
    assert t.num_candidates == 20 and t.depth.max() == 8
    assert TreeConfig(num_ssms=3).num_nodes == 61


def test_topology_cached_and_read_only():
    assert ssm_topology((1, 2)) is ssm_topology([1, 2])
    with pytest.raises(ValueError):
        ssm_topology((1, 2)).parents[0] = 5


def test_concat_topology_indices():
    cfg = TreeConfig(expansion=(1, 2), num_ssms=2)  # n = 3 per SSM
    c = concat_topology(cfg)
    assert c.parents.tolist() == [-1, 0, 1, 1, 0, 4, 4]
    assert c.depth.tolist() == [0, 1, 2, 2, 1, 2, 2]
    assert c.ssm.tolist() == [-1, 0, 0, 0, 1, 1, 1]
    assert c.local.tolist() == [0, 1, 2, 3, 1, 2, 3]
    assert c.children_rank.tolist() == [-1, 0, 0, 1, 0, 0, 1]
    assert [lv.tolist() for lv in c.levels] == [[0], [1, 4], [2, 3, 5, 6]]


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("kwargs, words", [
    (dict(expansion=()), ["empty"]),
    (dict(expansion=(1, 0, 2)), ["k_2=0", ">= 1"]),
    (dict(expansion=(1, 2.5)), ["non-integer"]),
    (dict(expansion="1,2"), ["parse"]),
    (dict(num_ssms=0), ["num_ssms", "0"]),
    (dict(node_budget=0), ["node_budget", "0"]),
    (dict(num_ssms=4), ["80", "node_budget=64", "4 SSM", "20 nodes", "at least 80"]),
    (dict(expansion=(4, 4, 4), node_budget=64), ["84", "node_budget=64"]),
])
def test_config_errors_name_the_problem(kwargs, words):
    with pytest.raises(TreeConfigError) as e:
        TreeConfig(**kwargs)
    assert isinstance(e.value, ValueError)
    for w in words:
        assert w in str(e.value)


def test_config_hashable_and_list_coerced():
    a, b = TreeConfig(expansion=[1, 2], num_ssms=2), TreeConfig(expansion=(1, 2), num_ssms=2)
    assert a == b and hash(a) == hash(b) and a.expansion == (1, 2)


@pytest.mark.parametrize("text, expansion", [
    ("1,1,3,1", (1, 1, 3, 1)), (" 2, 3 ", (2, 3)), ("<1,1,3,1,1,1,1,1>", TreeConfig().expansion),
    ("(4)", (4,)),
])
def test_parse(text, expansion):
    cfg = TreeConfig.parse(text, num_ssms=2, node_budget=100)
    assert cfg.expansion == expansion and cfg.num_ssms == 2 and cfg.node_budget == 100


@pytest.mark.parametrize("text, words", [
    ("", ["empty"]), ("  <>", ["empty"]), ("1,,3", ["item 2", "empty"]),
    ("1,x,3", ["item 2", "'x'"]), ("1.5", ["item 1", "'1.5'"]), ("1,-2", ["k_2=-2"]),
    ("8,8", ["72", "node_budget=64"]),
])
def test_parse_errors(text, words):
    with pytest.raises(TreeConfigError) as e:
        TreeConfig.parse(text)
    for w in words:
        assert w in str(e.value)


# ----------------------------------------------------------------------------- merge: literal cases

_merge = jax.jit(merge_trees, static_argnums=1)
_anc = jax.jit(ancestor_mask)
_rep = jax.jit(representative)
_attn = jax.jit(tree_attention_mask, static_argnums=2)


def test_merge_two_ssms_literal():
    # Expansion (1, 2), 2 SSMs. SSM 0: 7 -> {3, 4}; SSM 1: 7 -> {4, 3}: all of SSM 1 is duplicate.
    # Row 1: SSM 1 is 8 -> {3, 3}: a new branch whose two sampled children collide.
    cfg = TreeConfig(expansion=(1, 2), num_ssms=2)
    tokens = jnp.array([[0, 7, 3, 4, 7, 4, 3],
                        [0, 7, 3, 4, 8, 3, 3]], jnp.int32)
    t = _merge(tokens, cfg)
    assert t.parents.tolist() == [[-1, 0, 1, 1, 0, 1, 1],
                                  [-1, 0, 1, 1, 0, 4, 4]]
    assert t.valid.tolist() == [[True, True, True, True, False, False, False],
                                [True, True, True, True, True, True, False]]
    assert t.depth.tolist() == [[0, 1, 2, 2, 1, 2, 2]] * 2
    assert _rep(t).tolist() == [[0, 1, 2, 3, 1, 3, 2], [0, 1, 2, 3, 4, 5, 5]]
    assert sequences(t.tokens[0], t.parents[0], t.valid[0]) == {(0,), (0, 7), (0, 7, 3), (0, 7, 4)}


def test_merge_reparents_descendants_of_duplicates():
    # Expansion (1, 1), 2 SSMs: 5 -> 6 and 5 -> 9. SSM 1's root child duplicates SSM 0's, its child 9
    # is new and hangs under node 1.
    cfg = TreeConfig(expansion=(1, 1), num_ssms=2)
    t = _merge(jnp.array([[0, 5, 6, 5, 9]]), cfg)
    assert t.parents[0].tolist() == [-1, 0, 1, 0, 1]
    assert t.valid[0].tolist() == [True, True, True, False, True]
    assert _anc(t)[0].astype(int).tolist() == [[1, 0, 0, 0, 0],
                                               [1, 1, 0, 0, 0],
                                               [1, 1, 1, 0, 0],
                                               [0, 0, 0, 0, 0],
                                               [1, 1, 0, 0, 1]]
    assert sequences(t.tokens[0], t.parents[0], t.valid[0]) == {(0,), (0, 5), (0, 5, 6), (0, 5, 9)}


def test_attention_mask_literal():
    # The docstring's example: nodes 1 <- 0, 2 <- 1, 3 <- 1, 4 <- 0 invalid; prefix 3, S = 10.
    t = Tree(tokens=jnp.zeros((1, 5), jnp.int32), parents=jnp.array([[-1, 0, 1, 1, 0]]),
             depth=jnp.array([[0, 1, 2, 2, 1]]), valid=jnp.array([[True, True, True, True, False]]))
    m = _attn(t, jnp.array([3]), 10, jnp.array([3]))
    assert ["".join("x" if v else "." for v in row) for row in np.asarray(m[0])] == [
        "xxxx......",
        "xxxxx.....",
        "xxxxxx....",
        "xxxxx.x...",
        "xxxx......",
    ]
    assert tree_positions(t, jnp.array([3]))[0].tolist() == [3, 4, 5, 5, 4]
    # prefix_len = 0: invalid rows still see the root; tree slots past S drop out.
    m0 = _attn(t, jnp.array([0]), 3, jnp.array([0]))
    assert m0[0].any(axis=-1).all() and m0[0, 3].tolist() == [True, True, False]


# ----------------------------------------------------------------------------- merge: properties


def _host_sequences_per_ssm(tokens: np.ndarray, cfg: TreeConfig) -> set:
    """Union over SSMs of every candidate sequence of the unmerged trees, plus the root's."""
    c = concat_topology(cfg)
    return sequences(tokens, c.parents, np.ones(len(tokens), bool))


def _host_ancestors(parents: np.ndarray, valid: np.ndarray) -> np.ndarray:
    N = len(parents)
    m = np.zeros((N, N), bool)
    for j in range(N):
        if not valid[j]:
            continue
        u = j
        while u >= 0:
            m[j, u] = valid[u]
            u = parents[u]
    return m


@st.composite
def trees(draw):
    expansion = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    cfg = TreeConfig(expansion=expansion, num_ssms=draw(st.integers(1, 3)), node_budget=200)
    vocab = draw(st.integers(1, 4))  # small vocab: duplicates are frequent
    B = 2
    tokens = draw(st.lists(st.integers(0, vocab - 1), min_size=B * cfg.num_nodes,
                           max_size=B * cfg.num_nodes))
    prefix_len = draw(st.lists(st.integers(0, 4), min_size=B, max_size=B))
    return cfg, np.array(tokens, np.int32).reshape(B, cfg.num_nodes), np.array(prefix_len, np.int32)


_prop = settings(max_examples=60, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=None)
def _jitted(cfg: TreeConfig):
    """One compiled merge + masks per static config (hypothesis repeats configs a lot)."""
    S = cfg.num_nodes + 6

    @jax.jit
    def run(tokens, prefix_len):
        t = merge_trees(tokens, cfg)
        return t, ancestor_mask(t), representative(t), tree_attention_mask(t, prefix_len, S)

    return run, S


@_prop
@given(trees())
def test_merge_properties(case):
    cfg, tokens, prefix_len = case
    run, S = _jitted(cfg)
    t, anc, rep, attn = jax.tree.map(np.asarray, run(tokens, prefix_len))
    N = cfg.num_nodes
    for b in range(tokens.shape[0]):
        par, val, dep = t.parents[b], t.valid[b], t.depth[b]
        # Structure: root, topological order, consistent depths, parents are valid.
        assert par[0] == -1 and dep[0] == 0 and val[0]
        assert (par[1:] < np.arange(1, N)).all() and (par[1:] >= 0).all()
        assert (dep[1:] == dep[par[1:]] + 1).all()
        assert val[par[1:]].all()
        assert (dep == concat_topology(cfg).depth).all()
        # Union of candidate sequences, each stored once.
        seqs = sequences(tokens[b], par, val)
        assert seqs == _host_sequences_per_ssm(tokens[b], cfg)
        assert len(seqs) == val.sum()
        # Duplicates map to a valid node with the same token and parent.
        assert val[rep[b]].all() and (rep[b] <= np.arange(N)).all()
        assert (tokens[b][rep[b]] == tokens[b]).all() and (par[rep[b]] == par).all()
        assert (rep[b][val] == np.flatnonzero(val)).all()
        # Ancestor mask = reachability by walking parents.
        host = _host_ancestors(par, val)
        assert (anc[b] == host).all()
        # Attention mask, brute force.
        want = np.zeros((N, S), bool)
        for j in range(N):
            for s in range(S):
                i = s - prefix_len[b]
                if s < prefix_len[b]:
                    want[j, s] = True
                elif i < N:
                    want[j, s] = host[j, i] if val[j] else i == 0
        assert (attn[b] == want).all()
        assert attn[b].any(axis=-1).all()
