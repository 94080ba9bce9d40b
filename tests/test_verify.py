"""Greedy verification on literal trees, and the losslessness of multi-step speculative sampling.

The statistical tests draw a fresh token tree per batch row from synthetic SSMs, verify it against
a synthetic LLM with `mss_verify`, and compare the distribution of the first output tokens with the
LLM's exact joint distribution (chi-square goodness of fit). Rules known to be wrong, run through
the same harness, must fail it.
"""

import itertools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from scipy import stats

from specjax.sampling import SamplingConfig, probs
from specjax.verify import VerifyResult, greedy_verify, mss_verify

greedy_jit = jax.jit(greedy_verify, static_argnames="max_depth")
mss_jit = jax.jit(mss_verify, static_argnames="max_depth")


def logits_for(argmax_per_node, vocab=8):
    """[B, N] argmax tokens -> [B, N, V] logits with exactly that argmax."""
    return 3.0 * jax.nn.one_hot(jnp.asarray(argmax_per_node), vocab)


def check(res: VerifyResult, path, num_accepted, next_token):
    np.testing.assert_array_equal(res.path, path)
    np.testing.assert_array_equal(res.num_accepted, num_accepted)
    np.testing.assert_array_equal(res.next_token, next_token)
    last = [p[n] for p, n in zip(path, num_accepted)]
    np.testing.assert_array_equal(res.last_node, last)


# --------------------------------------------------------------------------------------------
# Greedy on literal trees
# --------------------------------------------------------------------------------------------

def test_greedy_chain():
    # root -> 1 -> 2 -> 3; LLM argmax at nodes 0..3 = 4, 5, 9(miss), 1.
    tokens = jnp.array([[7, 4, 5, 6], [7, 4, 5, 6]])
    parents = jnp.array([-1, 0, 1, 2])
    valid = jnp.ones((2, 4), bool)
    argmax = jnp.array([[4, 5, 6, 1], [4, 5, 2, 1]])  # row 0 accepts all, row 1 stops at node 2
    res = greedy_jit(logits_for(argmax), tokens, parents, valid, max_depth=3)
    check(res, [[0, 1, 2, 3], [0, 1, 2, -1]], [3, 2], [1, 2])
    assert res.path.dtype == res.num_accepted.dtype == res.next_token.dtype == jnp.int32


def test_greedy_all_rejected_gives_argmax_at_root():
    tokens = jnp.array([[7, 4, 5, 6]])
    parents = jnp.array([[-1, 0, 0, 1]])
    valid = jnp.ones((1, 4), bool)
    res = greedy_jit(logits_for([[3, 4, 4, 4]]), tokens, parents, valid, max_depth=2)
    check(res, [[0, -1, -1]], [0], [3])


def test_greedy_branching():
    #        0
    #      / | \
    #     1  2  3        tokens 1, 2, 3; argmax at root = 2 -> node 2
    #     |  |\
    #     4  5 6         tokens 5, 6, 7; argmax at node 2 = 7 -> node 6
    #          |
    #          7         token 1; argmax at node 6 = 0 -> rejected, bonus 0
    tokens = jnp.array([[0, 1, 2, 3, 5, 6, 7, 1]])
    parents = jnp.array([-1, 0, 0, 0, 1, 2, 2, 6])
    valid = jnp.ones((1, 8), bool)
    argmax = [[2, 5, 7, 0, 0, 0, 0, 0]]
    res = greedy_jit(logits_for(argmax), tokens, parents, valid, max_depth=3)
    check(res, [[0, 2, 6, -1]], [2], [0])
    # Full depth: node 7 matches too; the bonus is the argmax at the leaf.
    argmax = [[2, 5, 7, 0, 0, 0, 1, 4]]
    res = greedy_jit(logits_for(argmax), tokens, parents, valid, max_depth=3)
    check(res, [[0, 2, 6, 7]], [3], [4])
    # max_depth cuts the tree: node 7 (depth 3) is never accepted with max_depth=2.
    res = greedy_jit(logits_for(argmax), tokens, parents, valid, max_depth=2)
    check(res, [[0, 2, 6]], [2], [1])


def test_greedy_never_accepts_invalid_nodes():
    # Node 3 duplicates node 1 (same parent, same token) and was merged: invalid. Its child 4 was
    # re-parented to 1 by the merge, but the row also has padding node 5 that would match.
    tokens = jnp.array([[0, 2, 3, 2, 6, 2], [0, 2, 3, 2, 6, 2]])
    parents = jnp.array([[-1, 0, 0, 0, 1, 0], [-1, 0, 0, 0, 3, 0]])
    valid = jnp.array([[1, 1, 1, 0, 1, 0], [1, 0, 1, 1, 1, 0]], bool)
    argmax = [[2, 6, 0, 6, 9, 0], [2, 6, 0, 6, 9, 0]]
    res = greedy_jit(logits_for(argmax, 10), tokens, parents, valid, max_depth=2)
    # Second row: node 1 is the invalid twin, node 3 the kept one, its child 4 matches.
    check(res, [[0, 1, 4], [0, 3, 4]], [2, 2], [9, 9])
    # An invalid node that matches is not accepted even if it is the only match.
    valid = jnp.array([[1, 0, 1, 0, 1, 0]], bool)
    res = greedy_jit(logits_for(argmax[:1], 10), tokens[:1], parents[:1], valid, max_depth=2)
    check(res, [[0, -1, -1]], [0], [2])


def test_greedy_valid_twins_pick_smallest_index():
    # Two valid siblings with the same token (a sampled twin kept valid); neither has children.
    tokens = jnp.array([[0, 4, 4]])
    res = greedy_jit(logits_for([[4, 1, 2]]), tokens, jnp.array([-1, 0, 0]),
                     jnp.ones((1, 3), bool), max_depth=1)
    check(res, [[0, 1]], [1], [1])


# --------------------------------------------------------------------------------------------
# Random trees: greedy vs a plain-Python walk; MSS with greedy probabilities == greedy
# --------------------------------------------------------------------------------------------

N_H, V_H, M_H = 10, 4, 3


@st.composite
def random_tree(draw):
    parents = [-1] + [draw(st.integers(0, j - 1)) for j in range(1, N_H)]
    tokens = draw(st.lists(st.integers(0, V_H - 1), min_size=N_H, max_size=N_H))
    valid = [True] + draw(st.lists(st.booleans(), min_size=N_H - 1, max_size=N_H - 1))
    argmax = draw(st.lists(st.integers(0, V_H - 1), min_size=N_H, max_size=N_H))
    return parents, tokens, valid, argmax


def reference_greedy(parents, tokens, valid, argmax, max_depth):
    """Python walk: from u, follow the matching valid child (unique: twins are made invalid)."""
    u, path = 0, [0]
    while len(path) <= max_depth:
        kids = [v for v in range(1, len(parents))
                if parents[v] == u and valid[v] and tokens[v] == argmax[u]]
        if not kids:
            break
        u = kids[0]
        path.append(u)
    return path, argmax[u]


def drop_twins(parents, tokens, valid):
    """Make a later valid sibling with the same token invalid (merge semantics)."""
    valid = list(valid)
    for j in range(1, len(parents)):
        for i in range(1, j):
            if valid[i] and valid[j] and parents[i] == parents[j] and tokens[i] == tokens[j]:
                valid[j] = False
    return valid


@settings(max_examples=60, deadline=None)
@given(random_tree())
def test_greedy_and_greedy_mss_match_reference(tree):
    parents, tokens, valid, argmax = tree
    valid = drop_twins(parents, tokens, valid)
    path, bonus = reference_greedy(parents, tokens, valid, argmax, M_H)
    want_path = path + [-1] * (M_H + 1 - len(path))
    args = (jnp.array([tokens]), jnp.array(parents), jnp.array([valid]))
    logits = logits_for([argmax], V_H)
    check(greedy_jit(logits, *args, max_depth=M_H), [want_path], [len(path) - 1], [bonus])
    # MSS with the greedy (one-hot) LLM distribution, for one-hot and for sampled-style q.
    p = probs(logits, SamplingConfig())
    q_onehot = jax.nn.one_hot(args[0], V_H)
    q_soft = jnp.full((1, N_H, V_H), 1.0 / V_H)
    for q in (q_onehot, q_soft):
        res = mss_jit(jax.random.key(0), p, *args, q, max_depth=M_H)
        check(res, [want_path], [len(path) - 1], [bonus])


# --------------------------------------------------------------------------------------------
# Statistical losslessness of MSS
# --------------------------------------------------------------------------------------------

V = 5  # vocabulary
M = 3  # tree depth
K = 3  # output tokens compared (the joint of the first K tokens, V**K cells)
ROWS = 20_000
ROOT, ROOT_PREV = 0, 1  # the last verified token and the one before it
POS = M + K + 1  # positions covered by the tables


def model_tables(seed: int):
    """Next-token logits indexed [position, previous token, last token] -> [V]: LLM and 2 SSMs.

    The SSMs half agree with the LLM (so some drafts are accepted, many are not).
    """
    rng = np.random.default_rng(seed)
    llm = rng.normal(0.0, 1.5, (POS, V, V, V))
    ssm1 = 0.5 * llm + rng.normal(0.0, 1.2, llm.shape)
    ssm2 = 0.3 * llm + rng.normal(0.0, 1.5, llm.shape)
    return llm.astype(np.float32), ssm1.astype(np.float32), ssm2.astype(np.float32)


def as_probs(table, cfg):
    return np.asarray(probs(jnp.asarray(table), cfg), np.float64)


def draw(rng, dist):
    """One categorical sample per row. dist [B, V] -> [B]."""
    cdf = np.cumsum(dist / dist.sum(-1, keepdims=True), -1)
    return np.minimum((cdf < rng.random((dist.shape[0], 1))).sum(-1), dist.shape[-1] - 1)


def build_trees(rng, ssm_probs, expansions, sampled, drop_sampled_twins=False):
    """One tree per row: each SSM expands its own subtree under the root, <k_1, .., k_m> children
    per frontier node (sampled i.i.d. from q, or q's top-k with one-hot q); the subtrees are
    concatenated and merged: a node with the same parent and token as an earlier valid node is a
    twin, its children are re-parented to the earlier node. Deterministic twins are made invalid
    (contract of the tree module); sampled twins stay valid (see verify.py) unless
    drop_sampled_twins. Returns tokens [B, N], parents [B, N], valid [B, N], q [B, N, V],
    depth [B, N], prev [B, N] (the token before each node's token).
    """
    tok, par, dep, prv, qs = [np.full(ROWS, ROOT)], [-1], [0], [np.full(ROWS, ROOT_PREV)], \
        [np.zeros((ROWS, V))]
    for table, ks in zip(ssm_probs, expansions):
        frontier = [0]
        for k in ks:
            new = []
            for f in frontier:
                q = table[dep[f], prv[f], tok[f]]  # [B, V] the SSM at node f
                if sampled:
                    kids = [(draw(rng, q), q) for _ in range(k)]
                else:
                    order = np.argsort(-q, axis=-1, kind="stable")
                    kids = [(order[:, i], np.eye(V)[order[:, i]]) for i in range(k)]
                for t, qq in kids:
                    new.append(len(tok))
                    tok.append(t), par.append(f), dep.append(dep[f] + 1), prv.append(tok[f])
                    qs.append(qq)
            frontier = new
    n = len(tok)
    tokens, prev = np.stack(tok, 1), np.stack(prv, 1)
    depth = np.broadcast_to(np.array(dep), (ROWS, n)).copy()
    parents = np.broadcast_to(np.array(par), (ROWS, n)).copy()
    valid, keep = np.ones((ROWS, n), bool), np.ones((ROWS, n), bool)  # keep: not a twin
    for j in range(1, n):
        same = keep[:, :j] & (parents[:, :j] == parents[:, j:j + 1]) & \
            (tokens[:, :j] == tokens[:, j:j + 1])
        twin, first = same.any(1), same.argmax(1)
        keep[:, j] = ~twin
        if not sampled or drop_sampled_twins:
            valid[:, j] = ~twin
        moved = twin[:, None] & (parents == j)
        parents = np.where(moved, first[:, None], parents)
    assert (parents[:, 1:] < np.arange(1, n)).all() and (depth <= M).all()
    return tokens, parents, valid, np.stack(qs, 1), depth, prev


def exact_joint(llm):
    """P(t_1..t_K) of the LLM from the root, flattened to [V**K]."""
    out = np.zeros([V] * K)
    for seq in itertools.product(range(V), repeat=K):
        pr, prev, last = 1.0, ROOT_PREV, ROOT
        for pos, t in enumerate(seq):
            pr *= llm[pos, prev, last, t]
            prev, last = last, t
        out[seq] = pr
    return out.ravel()


def first_k_tokens(rng, llm, tokens, path, num_accepted, next_token):
    """The verified output (accepted tokens, then next_token) continued by the true LLM up to K."""
    rows = np.arange(ROWS)
    acc = tokens[rows[:, None], np.maximum(path[:, 1:], 0)]  # [B, M]
    out = np.zeros((ROWS, K), np.int64)
    prev, last = np.full(ROWS, ROOT_PREV), np.full(ROWS, ROOT)
    for pos in range(K):
        cont = draw(rng, llm[pos, prev, last])
        t = np.where(pos < num_accepted, acc[:, min(pos, M - 1)],
                     np.where(pos == num_accepted, next_token, cont))
        out[:, pos] = t
        prev, last = last, t
    return np.ravel_multi_index(out.T, [V] * K)


def gof_pvalue(cells, joint):
    counts = np.bincount(cells, minlength=V ** K).astype(np.float64)
    expected = joint * ROWS
    small = expected < 5  # pool sparse cells into one
    f_obs = np.append(counts[~small], counts[small].sum())
    f_exp = np.append(expected[~small], expected[small].sum())
    if f_exp[-1] == 0:
        assert f_obs[-1] == 0, "tokens the LLM cannot produce"
        f_obs, f_exp = f_obs[:-1], f_exp[:-1]
    return stats.chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue


def numpy_mss(rng, p, tokens, parents, valid, q, rule):
    """Algorithm 2 in numpy, batch-vectorised, with deliberately wrong variants.

    rule: 'correct' (a second, independent implementation: checks the harness itself),
    'accept_valid' (accept every valid child: no test at all) or 'no_residual' (the right
    acceptance test, but p is not replaced by the residual after a rejection).
    """
    u, depth = np.zeros(ROWS, np.int64), np.zeros(ROWS, np.int64)
    res = p[:, 0].copy()
    rows = np.arange(ROWS)
    for j in range(1, tokens.shape[1]):
        tried = valid[:, j] & (parents[:, j] == u) & (depth < M)
        x = tokens[:, j]
        if rule == "accept_valid":
            accept = tried
        else:
            accept = tried & (rng.random(ROWS) * q[rows, j, x] < res[rows, x])
        if rule == "correct":
            rejected = np.maximum(res - q[:, j], 0.0)
            total = rejected.sum(-1, keepdims=True)
            rejected = np.where(total > 0, rejected / np.where(total > 0, total, 1.0), res)
            res = np.where((tried & ~accept)[:, None], rejected, res)
        res = np.where(accept[:, None], p[:, j], res)
        u, depth = np.where(accept, j, u), depth + accept
    path = np.full((ROWS, M + 1), -1)  # walk back from u
    node = u.copy()
    for step in range(M + 1):
        d = depth - step
        ok = d >= 0
        path[rows[ok], d[ok]] = node[ok]
        node = np.maximum(parents[rows, node], 0)
    return path, depth, draw(rng, res)


WARPS = {
    "T0.7": SamplingConfig(temperature=0.7),
    "T1.0": SamplingConfig(temperature=1.0),
    "T1.0-top_p0.9": SamplingConfig(temperature=1.0, top_p=0.9),
}
# SSM 1 drafts <2, 2, 1>, SSM 2 drafts <2, 1, 1>: 11 nodes with one SSM, 17 with two.
EXPANSIONS = [(2, 2, 1), (2, 1, 1)]
SSM_CFG = SamplingConfig(temperature=1.0)


def run_mss(seed, warp, n_ssms, sampled, rule=None, drop_sampled_twins=False):
    llm_t, ssm1_t, ssm2_t = model_tables(seed)
    llm = as_probs(llm_t, WARPS[warp])
    ssms = [as_probs(t, SSM_CFG) for t in (ssm1_t, ssm2_t)][:n_ssms]
    rng = np.random.default_rng(seed + 1)
    tokens, parents, valid, q, depth, prev = build_trees(
        rng, ssms, EXPANSIONS[:n_ssms], sampled, drop_sampled_twins)
    p = llm[depth, prev, tokens]  # [B, N, V] the LLM at every node
    if rule is None:
        res = mss_jit(jax.random.key(seed), jnp.asarray(p, jnp.float32), jnp.asarray(tokens),
                      jnp.asarray(parents), jnp.asarray(valid), jnp.asarray(q, jnp.float32),
                      max_depth=M)
        path, num_acc, nxt = (np.asarray(a) for a in (res.path, res.num_accepted, res.next_token))
    else:
        path, num_acc, nxt = numpy_mss(rng, p, tokens, parents, valid, q, rule)
    cells = first_k_tokens(rng, llm, tokens, path, num_acc, nxt)
    return gof_pvalue(cells, exact_joint(llm)), num_acc


@pytest.mark.parametrize("sampled", [False, True], ids=["topk", "sampled"])
@pytest.mark.parametrize("n_ssms", [1, 2])
@pytest.mark.parametrize("warp", list(WARPS))
def test_mss_is_lossless(warp, n_ssms, sampled):
    pvalue, num_acc = run_mss(11, warp, n_ssms, sampled)
    assert pvalue > 1e-3
    # The trees are neither useless nor always accepted: rejections do happen.
    assert 0.1 < num_acc.mean() < 0.9 * M


def test_harness_passes_an_independent_correct_rule():
    pvalue, _ = run_mss(11, "T1.0", 2, True, rule="correct")
    assert pvalue > 1e-3


@pytest.mark.parametrize("rule", ["accept_valid", "no_residual"])
def test_wrong_rules_are_detected(rule):
    pvalue, _ = run_mss(11, "T1.0", 2, True, rule=rule)
    assert pvalue < 1e-6


def test_dropping_sampled_twins_is_lossy():
    """Why sampled twins must stay valid (see verify.py): dropping them biases the output.

    The bias depends on p and q (with seed 11 the first token alone is off by TV 0.044; some
    tables show none), so this is a demonstration on one table, not a property of all.
    """
    pvalue, _ = run_mss(11, "T1.0", 2, True, drop_sampled_twins=True)
    assert pvalue < 1e-6


def test_mss_accepts_everything_when_ssm_equals_llm():
    cfg = WARPS["T1.0-top_p0.9"]
    llm = as_probs(model_tables(5)[0], cfg)
    rng = np.random.default_rng(0)
    tokens, parents, valid, q, depth, prev = build_trees(rng, [llm], [(1, 1, 1)], sampled=True)
    p = llm[depth, prev, tokens]
    np.testing.assert_array_equal(q[:, 1:], p[:, :-1])  # the chain's q is the LLM at the parent
    res = mss_jit(jax.random.key(0), jnp.asarray(p, jnp.float32), jnp.asarray(tokens),
                  jnp.asarray(parents), jnp.asarray(valid), jnp.asarray(q, jnp.float32),
                  max_depth=M)
    np.testing.assert_array_equal(res.num_accepted, M)
    np.testing.assert_array_equal(res.path, np.broadcast_to(np.arange(M + 1), (ROWS, M + 1)))
