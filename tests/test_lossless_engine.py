"""End-to-end losslessness of stochastic speculative decoding through the real engine: the joint
distribution of the first two generated tokens, over 20,000 requests, must match the LLM's own
(computed exactly from its logits), for sampled and deterministic trees and 1 and 2 SSMs.
verify.py's own tests check the rule in isolation (and that a wrong rule fails); this checks the
whole loop: drafting, q bookkeeping, merge, tree masks and commit."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturbed
from scipy import stats

from specjax import model, sampling
from specjax.config import ModelConfig
from specjax.engine import Engine, LoadedModel
from specjax.sampling import SamplingConfig
from specjax.tree import TreeConfig

V = 6
CFG = ModelConfig(family="llama", vocab_size=V, hidden_size=16, intermediate_size=32, num_layers=1,
                  num_heads=2, num_kv_heads=1, head_dim=8, max_position_embeddings=128)
PROMPT = [1, 4, 2]
ROWS = 20_000


@pytest.fixture(scope="module")
def llm():
    return LoadedModel(model.init_params(CFG, jax.random.PRNGKey(3), std=0.8), CFG)


def exact_two_token_distribution(llm, s: SamplingConfig, prompt=PROMPT) -> np.ndarray:
    """[V, V]: P(t1, t2) under the LLM's warped distribution."""
    seqs = jnp.asarray([prompt + [t] for t in range(V)])
    logits = model.causal_logits(llm.params, CFG, seqs)  # [V, T, V]
    p1 = np.asarray(sampling.probs(logits[0, len(prompt) - 1], s), np.float64)
    p2 = np.asarray(sampling.probs(logits[:, len(prompt)], s), np.float64)  # [V(t1), V]
    return p1[:, None] * p2


def chi_square_p(counts: np.ndarray, expected_p: np.ndarray) -> float:
    counts, expected = counts.ravel(), expected_p.ravel() * counts.sum()
    big = expected >= 5  # pool the rare cells so the chi-square approximation holds
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    assert obs[~keep].sum() == 0, "a token pair the LLM cannot produce was generated"
    obs, exp = obs[keep], exp[keep]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


CASES = [  # (temperature, top_p, sampled children, number of SSMs, expansion)
    (1.0, 1.0, True, 1, (2, 2)),
    (0.7, 1.0, True, 2, (2, 1)),
    (1.0, 0.9, False, 1, (2, 2)),
    (0.7, 0.9, False, 2, (1, 2)),
    (1.0, 0.9, True, 2, (2, 2)),
]


@pytest.mark.parametrize("temperature,top_p,sampled,num_ssms,expansion", CASES)
def test_speculative_sampling_matches_llm_distribution(llm, temperature, top_p, sampled, num_ssms, expansion):
    s = SamplingConfig(temperature=temperature, top_p=top_p)
    ssms = [LoadedModel(perturbed(llm.params, 0.4, seed=10 + i), CFG) for i in range(num_ssms)]
    engine = Engine(llm, ssms=ssms, tree=TreeConfig(expansion=expansion, num_ssms=num_ssms))
    out = engine.generate_spec([PROMPT] * ROWS, 2, s, seed=7, sampled_children=sampled)
    counts = np.zeros((V, V))
    for r in out:
        counts[r.token_ids[0], r.token_ids[1]] += 1
    expected = exact_two_token_distribution(llm, s)
    assert chi_square_p(counts, expected) > 1e-3
    # The drafters are good enough that trees do get accepted (the test exercises acceptance).
    assert np.mean([r.llm_steps == 1 for r in out]) > 0.1


def test_the_engine_test_can_fail(llm):
    """Sampling from the SSM alone (what a wrong rule that accepts every drafted token would output)
    is detected by the same statistic."""
    s = SamplingConfig(temperature=1.0)
    ssm = LoadedModel(perturbed(llm.params, 0.6, seed=10), CFG)
    out = Engine(ssm).generate_incremental([PROMPT] * ROWS, 2, s, seed=7)
    counts = np.zeros((V, V))
    for r in out:
        counts[r.token_ids[0], r.token_ids[1]] += 1
    assert chi_square_p(counts, exact_two_token_distribution(llm, s)) < 1e-6


REPEATING = [1, 4, 2, 5, 1, 4, 2]  # its suffix 1,4,2 occurs earlier: lookup proposes 5, 1, 4, 2


def merged_counts(llm, s: SamplingConfig, budget):
    ssm = LoadedModel(perturbed(llm.params, 0.4, seed=10), CFG)
    engine = Engine(llm, ssms=[ssm], tree=TreeConfig(expansion=(2, 1)), drafters=("ssm", "recycle", "lookup"),
                    budget=budget)
    engine.generate_spec([REPEATING] * 64, 4, s, seed=1)  # fills the recycling table: it drafts from step 1 on
    out = engine.generate_spec([REPEATING] * ROWS, 2, s, seed=7)
    counts = np.zeros((V, V))
    for r in out:
        counts[r.token_ids[0], r.token_ids[1]] += 1
    return counts, out


@pytest.mark.parametrize("temperature,budget", [(0.7, None), (1.0, 4)])
def test_merged_drafters_match_llm_distribution(llm, temperature, budget):
    """Sampled SSM nodes (their q), deterministic recycling and lookup nodes (one-hot) in one tree,
    with and without a budget."""
    s = SamplingConfig(temperature=temperature)
    counts, out = merged_counts(llm, s, budget)
    assert chi_square_p(counts, exact_two_token_distribution(llm, s, REPEATING)) > 1e-3
    for name in ("ssm0", "recycle", "lookup"):  # every drafter's nodes get accepted
        assert sum(r.drafter_tokens[name] for r in out) > 100


def test_the_merged_test_can_fail(llm, monkeypatch):
    """A wrong rule through the same merged loop: the nodes' q lost on the way to the verifier (zeros:
    every candidate the LLM could produce is accepted) is caught by the same statistic."""
    from specjax import speculative

    real = speculative.merge

    def lost_q(*args, **kw):
        tree, q, origin, src, rep = real(*args, **kw)
        return tree, jnp.zeros_like(q), origin, src, rep

    monkeypatch.setattr(speculative, "merge", lost_q)
    jax.clear_caches()  # the loop must be traced again with the wrong rule
    try:
        s = SamplingConfig(temperature=1.0)
        counts, _ = merged_counts(llm, s, None)
    finally:
        jax.clear_caches()
    assert chi_square_p(counts, exact_two_token_distribution(llm, s, REPEATING)) < 1e-6
