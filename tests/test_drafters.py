"""Drafters (ssm, recycle, lookup) and their merge: greedy speculative output equals incremental for
each drafter alone and all merged (mixed prompt lengths, with and without a budget), drafters that
propose nothing, the budgeted selection's properties, lookup matching and the recycling table's
save/load checks."""

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturbed
from hypothesis import given, settings

from specjax import drafters, model
from specjax.config import ModelConfig
from specjax.drafters import DrafterError, acceptance, lookup, recycle
from specjax.drafters.base import Proposal, expansion_topology
from specjax.drafters.merge import concat_layout, merge
from specjax.engine import Engine, EngineError, LoadedModel
from specjax.sampling import SamplingConfig
from specjax.speculative import SpecConfig
from specjax.tree import TreeConfig

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=512)
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 12, [3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5]]
NEW = 24


@pytest.fixture(scope="module")
def llm():
    return LoadedModel(model.init_params(CFG, jax.random.PRNGKey(0), std=0.3), CFG)


@pytest.fixture(scope="module")
def ssm(llm):
    return LoadedModel(perturbed(llm.params, 0.04, seed=0), CFG)


@pytest.fixture(scope="module")
def incremental(llm):
    return Engine(llm).generate_incremental(PROMPTS, NEW)


@pytest.mark.parametrize("names,budget", [(("recycle",), None), (("lookup",), None),
                                          (("ssm", "recycle", "lookup"), None), (("lookup", "ssm", "recycle"), 5)])
def test_greedy_speculative_equals_incremental(llm, ssm, incremental, names, budget):
    engine = Engine(llm, ssms=[ssm], tree=TreeConfig(expansion=(2, 1, 1)), drafters=names, budget=budget)
    for _ in range(2):  # the second batch starts from the recycling table the first one left
        out = engine.generate_spec(PROMPTS, NEW)
        for inc, spec in zip(incremental, out):
            assert spec.token_ids == inc.token_ids
            assert sum(spec.accepted_per_step) == NEW
            assert set(spec.drafter_tokens) == {d.name for d in engine.drafters}
            # Credit never exceeds the drafted tokens emitted: every step's last token is the LLM's own
            # bonus, except where max_new_tokens cut the final step short.
            assert max(spec.drafter_tokens.values()) <= NEW - spec.llm_steps + 1
    for name in ("recycle", "lookup"):
        if name in names:  # each model-free drafter gets tokens accepted on these prompts
            assert sum(r.drafter_tokens[name] for r in out) > 0
    if budget is not None:  # the verified tree has exactly the budget's slots
        assert SpecConfig(llm=CFG, drafters=engine.drafters, sampling=SamplingConfig(), budget=budget).num_nodes == budget + 1


def test_recycling_table_is_kept_and_saved(llm, tmp_path):
    engine = Engine(llm, drafters=("recycle",))
    engine.generate_spec(PROMPTS[:2], 8)
    table = np.asarray(engine.persistent["recycle_table"])
    assert table.shape == (CFG.vocab_size, recycle.DEFAULT_K)
    for t in PROMPTS[0][:-1] + PROMPTS[1][:-1]:  # written from the prefill (and the loop)
        assert (table[t] >= 0).all()
    logits = model.causal_logits(llm.params, CFG, jnp.asarray([PROMPTS[0]]))[0]
    # Token 1 occurs once, at position 0: its row is the LLM's top-k there.
    np.testing.assert_array_equal(table[1], np.asarray(jax.lax.top_k(logits[0], recycle.DEFAULT_K)[1]))
    path = tmp_path / "table.npz"
    recycle.save(path, table, llm)
    np.testing.assert_array_equal(np.asarray(recycle.load(path, llm)), table)
    again = Engine(llm, drafters=("recycle",), recycle_table=recycle.load(path, llm))
    assert again.generate_spec(PROMPTS[:2], 8)[0].token_ids == engine.generate_spec(PROMPTS[:2], 8)[0].token_ids


def test_recycling_table_from_another_model_is_refused(llm, tmp_path):
    path = tmp_path / "table.npz"
    recycle.save(path, recycle.empty_table(CFG.vocab_size), llm)
    other_vocab = ModelConfig(**{**CFG.__dict__, "vocab_size": 80})
    other = LoadedModel(model.init_params(other_vocab, jax.random.PRNGKey(1)), other_vocab)
    with pytest.raises(recycle.RecycleTableError, match="vocabulary of 64 tokens, this LLM has 80"):
        recycle.load(path, other)
    same_shape = LoadedModel(model.init_params(CFG, jax.random.PRNGKey(5)), CFG)
    with pytest.raises(recycle.RecycleTableError, match="different LLM"):
        recycle.load(path, same_shape)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a table")
    with pytest.raises(recycle.RecycleTableError, match="not a specjax recycling table"):
        recycle.load(bad, llm)


def test_bad_drafter_settings(llm, ssm):
    with pytest.raises(DrafterError, match="unknown drafter 'eagle'"):
        drafters.parse_names("ssm,eagle")
    with pytest.raises(DrafterError, match="unknown drafter 'eagle'"):
        Engine(llm, drafters=("eagle",))
    with pytest.raises(DrafterError, match="needs at least one SSM"):
        Engine(llm, drafters=("ssm",))
    for bad in (0, -3):
        with pytest.raises(DrafterError, match="--budget must be an integer >= 1"):
            Engine(llm, drafters=("lookup",), budget=bad)
    with pytest.raises(DrafterError, match="--budget 40 needs 41 cache slots.*max_len=32"):
        Engine(llm, drafters=("lookup",), budget=40, max_len=32)
    with pytest.raises(EngineError, match="at least one drafter"):
        Engine(llm).generate_spec(PROMPTS, 4)


def test_lookup_finds_the_most_recent_longest_match():
    toks = jnp.asarray([[5, 6, 7, 8, 5, 6, 7, 0, 0], [1, 2, 9, 1, 2, 8, 1, 2, 0], [1, 2, 3, 4, 0, 0, 0, 0, 0]])
    start, n = lookup.find(toks, jnp.asarray([6, 7, 3]), max_ngram=3)
    np.testing.assert_array_equal(n, [3, 2, 0])
    np.testing.assert_array_equal(start[:2], [3, 5])
    from specjax.decode_state import DecodeState

    base = DecodeState(cache=None, tokens=toks, length=jnp.asarray([6, 7, 3]), prompt_len=None, max_new=None,
                       num_new=None, finish=None, steps=None, emitted=None, key=None)
    prop, _ = lookup.propose(None, None, lookup.State(), lookup.Config(length=4), base, None, False)
    np.testing.assert_array_equal(prop.tokens[0], [8, 5, 6, 7])
    np.testing.assert_array_equal(prop.valid, [[True] * 4, [True, True, True, False], [False] * 4])
    assert float(prop.score[0, 0]) > float(prop.score[1, 0])  # a 3-gram match outranks a 2-gram one


def test_lookup_rates_are_measured_on_the_chains_find_proposes():
    rng = np.random.RandomState(0)
    toks = rng.randint(0, 4, size=(16, 40)).astype(np.int32)  # a small alphabet: matches of every length
    roots = rng.randint(0, 40, size=16).astype(np.int32)
    start, n = lookup.find(jnp.asarray(toks), jnp.asarray(roots), max_ngram=6)
    host = [lookup.match_host(t, int(p), 6) for t, p in zip(toks, roots)]
    np.testing.assert_array_equal(np.asarray(n), [m for _, m in host])
    np.testing.assert_array_equal(np.where(np.asarray(n) > 0, np.asarray(start), 0), [s for s, _ in host])
    # seq 7 8 7 8 7 8 9, roots 1..5 (root 1 has no earlier 8): root 2 matches n = 1 (7 at 0) -> 8, 7:
    # both what the LLM wrote; root 3, n = 2 ("7 8" at 0..1) -> 7, 8: both right; root 4, n = 3 ("7 8 7"
    # at 0..2) -> 8 right, 7 wrong (9); root 5, n = 3 ("8 7 8" at 1..3) -> 7 wrong, one token left to check
    seq = [7, 8, 7, 8, 7, 8, 9]
    rates = lookup.measure_rates([seq], [1], lookup.Config(length=2, max_ngram=3), min_tried=1)
    assert rates == [[1.0, 1.0, 0.5], [1.0, 1.0, 0.0]]
    assert lookup.measure_rates([seq], [1], lookup.Config(length=2, max_ngram=3), min_tried=5)[0][0] == \
        acceptance.rate_fn(acceptance.PRIORS["lookup"])(1, 0)  # too few tries: the prior


def test_empty_recycling_rows_propose_nothing():
    cfg = recycle.Config(vocab_size=10, expansion=(2, 1))
    table = recycle.empty_table(10).at[4].set(jnp.asarray([6, -1, -1, -1, -1, -1, -1, -1]))
    from specjax.decode_state import DecodeState

    base = DecodeState(cache=None, tokens=jnp.asarray([[3, 4, 0], [3, 5, 0]]), length=jnp.asarray([1, 1]),
                       prompt_len=None, max_new=None, num_new=None, finish=None, steps=None, emitted=None, key=None)
    prop, _ = recycle.propose(None, None, recycle.State(table=table), cfg, base, None, False)
    # Row 0: root 4 -> child 6 (rank 0) whose own row is empty; rank 1 empty. Row 1: root 5 empty.
    np.testing.assert_array_equal(prop.valid, [[True, False, False, False], [False] * 4])
    tree, _, _, _, _ = merge(jnp.asarray([4, 5]), [prop], [cfg.topology], [False], 10, False, None)
    np.testing.assert_array_equal(tree.valid[:, 1:], prop.valid)


# ----------------------------------------------------------------------------- budgeted merge properties


TOPOS = [expansion_topology((2, 2)), expansion_topology((1, 1, 1)), expansion_topology((3, 1))]


@functools.lru_cache(maxsize=None)
def _merge(budget):
    """merge over TOPOS jitted (as the loop runs it) once per budget: op by op, each example compiled
    dozens of small programs."""
    return jax.jit(lambda root, props: merge(root, props, TOPOS, [False] * 3, 8, False, budget))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_budgeted_merge_is_a_tree_of_the_best_nodes(data):
    B = 2
    props = []
    for t in TOPOS:
        n = t.num_nodes
        tokens = np.array(data.draw(st.lists(st.integers(0, 2), min_size=B * n, max_size=B * n))).reshape(B, n)
        valid = np.array(data.draw(st.lists(st.booleans(), min_size=B * n, max_size=B * n))).reshape(B, n)
        rates = np.array(data.draw(st.lists(st.floats(0.05, 1.0), min_size=B * n, max_size=B * n))).reshape(B, n)
        score = np.ones((B, n), np.float32)
        for j in range(n):  # path scores: parent * rate
            score[:, j] = rates[:, j] * (score[:, t.parents[j]] if t.parents[j] >= 0 else 1.0)
        props.append(Proposal(tokens=jnp.asarray(tokens), valid=jnp.asarray(valid), score=jnp.asarray(score)))
    A = sum(t.num_nodes for t in TOPOS)
    budget = data.draw(st.integers(1, A))
    root = jnp.asarray([7, 7])
    tree, _, _, src, _ = _merge(budget)(root, props)
    full, _, _, _, _ = _merge(None)(root, props)
    assert tree.tokens.shape == (B, budget + 1)  # exactly N slots
    lay = concat_layout(TOPOS)
    for b in range(B):
        par, val, dep = np.asarray(tree.parents[b]), np.asarray(tree.valid[b]), np.asarray(tree.depth[b])
        assert par[0] == -1 and val[0]
        for j in range(1, budget + 1):
            assert 0 <= par[j] < j  # topological, every kept node's parent kept
            assert dep[j] == dep[par[j]] + 1
            if val[j]:
                assert val[par[j]]  # a valid node's parent is valid
        seqs = [s for s in _sequences(tree, b)]
        assert len(seqs) == len(set(seqs))  # no duplicate sequence among valid nodes
        # The kept valid sequences are the best: none dropped outscores a kept one, and a kept
        # sequence is one of the full tree's.
        assert set(seqs) <= set(_sequences(full, b))
        all_scores = np.concatenate([[np.inf]] + [np.where(p.valid[b], p.score[b], -np.inf) for p in props])
        for j in range(1, A + 1):  # closure: a node is proposed only if its ancestors are
            if lay["parents"][j] > 0:
                all_scores[j] = min(all_scores[j], all_scores[lay["parents"][j]]) if np.isfinite(all_scores[lay["parents"][j]]) else -np.inf
        kept = np.asarray(src[b])
        dropped = np.setdiff1d(np.arange(A + 1), kept)
        if len(dropped):
            assert all_scores[kept].min() >= all_scores[dropped].max()


def _sequences(tree, b):
    out = []
    for j in np.flatnonzero(np.asarray(tree.valid[b])):
        seq, u = [], int(j)
        while u >= 0:
            seq.append(int(tree.tokens[b, u]))
            u = int(tree.parents[b, u])
        out.append(tuple(reversed(seq)))
    return out
