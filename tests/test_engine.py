"""The decode loops on tiny random models: incremental vs full forward, speculative vs incremental
(greedy, token for token), batch invariance, stops, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturbed

from specjax import model
from specjax.config import ModelConfig
from specjax.engine import Engine, EngineError, LoadedModel
from specjax.sampling import SamplingConfig
from specjax.tree import TreeConfig, TreeConfigError

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=512)
SSM_CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=8, max_position_embeddings=512)
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 12]


@pytest.fixture(scope="module")
def llm():
    return LoadedModel(model.init_params(CFG, jax.random.PRNGKey(0), std=0.3), CFG)


@pytest.fixture(scope="module")
def incremental(llm):
    return Engine(llm).generate_incremental(PROMPTS, 24)


def test_incremental_greedy_equals_full_forward_argmax(llm, incremental):
    for r in incremental:
        seq = list(r.prompt_ids)
        logits = model.causal_logits(llm.params, CFG, jnp.asarray([seq + r.token_ids]))[0]
        expected = np.asarray(jnp.argmax(logits, -1))[len(seq) - 1: -1]
        assert r.token_ids == expected.tolist()
        assert r.finish_reason == "max_new_tokens" and len(r.token_ids) == 24
        assert r.llm_steps == 24 and r.accepted_per_step == [1] * 24


@pytest.mark.parametrize("expansion,num_ssms", [((1, 1, 1, 1), 1), ((1, 1, 3, 1, 1), 1), ((2, 2, 1), 2),
                                                ((1, 2, 1), 3)])
def test_speculative_greedy_equals_incremental(llm, incremental, expansion, num_ssms):
    ssms = [LoadedModel(perturbed(llm.params, 0.04 * (i + 1), seed=i), CFG) for i in range(num_ssms - 1)]
    ssms.append(LoadedModel(model.init_params(SSM_CFG, jax.random.PRNGKey(9)), SSM_CFG))  # a bad drafter
    engine = Engine(llm, ssms=ssms, tree=TreeConfig(expansion=expansion, num_ssms=num_ssms))
    out = engine.generate_spec(PROMPTS, 24)
    for inc, spec in zip(incremental, out):
        assert spec.token_ids == inc.token_ids
        assert sum(spec.accepted_per_step) == 24 and spec.llm_steps == len(spec.accepted_per_step)
    if num_ssms > 1:  # the perturbed drafters get tokens accepted
        assert max(r.mean_accepted for r in out) > 1.2


def test_llm_as_its_own_ssm_accepts_full_depth(llm, incremental):
    tree = TreeConfig(expansion=(1, 1, 2, 1), num_ssms=1)
    out = Engine(llm, ssms=[llm], tree=tree).generate_spec(PROMPTS, 24)
    for inc, spec in zip(incremental, out):
        assert spec.token_ids == inc.token_ids
        assert spec.accepted_per_step[:-1] == [5] * (len(spec.accepted_per_step) - 1)  # m + 1 per step
        assert spec.accepted_per_step[-1] == 24 - 5 * (len(spec.accepted_per_step) - 1)


def test_batch_invariance(llm):
    rng = np.random.RandomState(0)
    prompts = [rng.randint(0, 64, size=n).tolist() for n in (3, 17, 5, 9, 1, 30, 12, 7)]
    ssm = LoadedModel(perturbed(llm.params, 0.05, seed=5), CFG)
    engine = Engine(llm, ssms=[ssm], tree=TreeConfig(expansion=(1, 2, 1), num_ssms=1))
    batched = engine.generate_spec(prompts, 16)
    for i in (0, 5):
        alone = engine.generate_spec([prompts[i]], 16)[0]
        assert alone.token_ids == batched[i].token_ids
    inc = Engine(llm).generate_incremental(prompts, 16)
    assert [r.token_ids for r in inc] == [r.token_ids for r in batched]


def test_stops_on_eos_per_request(llm, incremental):
    eos = incremental[0].token_ids[5]
    ssm = LoadedModel(perturbed(llm.params, 0.05, seed=5), CFG)
    for engine, fn in ((Engine(llm), "generate_incremental"),
                       (Engine(llm, ssms=[ssm], tree=TreeConfig(expansion=(1, 1, 1), num_ssms=1)), "generate_spec")):
        out = getattr(engine, fn)(PROMPTS, 24, eos_ids=(eos,))
        first = incremental[0].token_ids.index(eos)
        assert out[0].token_ids == incremental[0].token_ids[: first + 1]
        assert out[0].finish_reason == "eos"
        for inc, r in zip(incremental[1:], out[1:]):
            if eos not in inc.token_ids:
                assert r.token_ids == inc.token_ids and r.finish_reason == "max_new_tokens"


def test_cache_full_stops_with_length_never_writes_past(llm, incremental):
    ssm = LoadedModel(perturbed(llm.params, 0.05, seed=5), CFG)
    tree = TreeConfig(expansion=(1, 1, 1), num_ssms=1)
    for engine, fn in ((Engine(llm, max_len=20), "generate_incremental"),
                       (Engine(llm, ssms=[ssm], tree=tree, max_len=20), "generate_spec")):
        out = getattr(engine, fn)(PROMPTS, 24)
        for inc, r in zip(incremental, out):
            assert r.finish_reason == "length"
            assert len(r.prompt_ids) + len(r.token_ids) <= 20
            assert r.token_ids == inc.token_ids[: len(r.token_ids)]  # a prefix of the true output


def test_sampling_runs_and_is_seeded(llm):
    ssm = LoadedModel(perturbed(llm.params, 0.05, seed=5), CFG)
    engine = Engine(llm, ssms=[ssm], tree=TreeConfig(expansion=(1, 2, 1), num_ssms=1))
    s = SamplingConfig(temperature=0.8, top_p=0.9)
    a = engine.generate_spec(PROMPTS, 16, s, seed=1)
    b = engine.generate_spec(PROMPTS, 16, s, seed=1)
    c = engine.generate_spec(PROMPTS, 16, s, seed=2)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    assert all(len(r.token_ids) == 16 for r in a)


def test_bad_input(llm):
    other_vocab = ModelConfig(**{**SSM_CFG.__dict__, "vocab_size": 65})
    ssm = LoadedModel(model.init_params(other_vocab, jax.random.PRNGKey(1)), other_vocab)
    with pytest.raises(EngineError, match="vocabulary of 65 tokens but the LLM has 64"):
        Engine(llm, ssms=[ssm], tree=TreeConfig(num_ssms=1))
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    a = LoadedModel(llm.params, CFG, Tok({"a": 0, "b": 1}))
    b = LoadedModel(llm.params, CFG, Tok({"a": 1, "b": 0}))
    with pytest.raises(EngineError, match="tokenizer differs from the LLM's"):
        Engine(a, ssms=[b], tree=TreeConfig(num_ssms=1))
    with pytest.raises(EngineError, match="tree config is for 2 SSM"):
        Engine(llm, ssms=[llm], tree=TreeConfig(num_ssms=2, expansion=(1, 1)))
    with pytest.raises(TreeConfigError, match="node_budget"):
        TreeConfig(expansion=(4, 4, 4), num_ssms=1, node_budget=64)
    with pytest.raises(EngineError, match="prompt 1 is empty"):
        Engine(llm).generate_incremental([[1], []], 4)
    with pytest.raises(EngineError, match="outside the vocabulary"):
        Engine(llm).generate_incremental([[1, 64]], 4)
    with pytest.raises(EngineError, match="prompt of 30 tokens does not fit the cache of 16 slots"):
        Engine(llm, max_len=16).generate_incremental([[1] * 30], 4)


def test_learned_positions_and_sliding_window_bound_the_cache(llm):
    """An OPT drafter with 40 learned positions caps the sequence (stop with "length"), and a prompt
    that cannot fit them is an error; so is a max_len over a Mistral-style sliding window."""
    opt = ModelConfig(family="opt", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=2, head_dim=8, max_position_embeddings=40,
                      activation="relu", position_offset=2, rope=None)
    ssm = LoadedModel(model.init_params(opt, jax.random.PRNGKey(2)), opt)
    engine = Engine(llm, ssms=[ssm], tree=TreeConfig(expansion=(1, 1), num_ssms=1))
    out = engine.generate_spec([[1, 2, 3]], 100)
    assert out[0].finish_reason == "length" and 3 + len(out[0].token_ids) <= 40
    with pytest.raises(EngineError, match="SSM 0's 40 learned positions"):
        engine.generate_spec([[1] * 45], 4)
    windowed = ModelConfig(**{**CFG.__dict__, "sliding_window": 32})
    with pytest.raises(EngineError, match="sliding_window=32"):
        Engine(LoadedModel(llm.params, windowed), max_len=64)


def test_no_recompile_within_a_length_bucket(llm):
    ssm = LoadedModel(perturbed(llm.params, 0.05, seed=5), CFG)
    engine = Engine(llm, ssms=[ssm], tree=TreeConfig(expansion=(1, 2), num_ssms=1))
    engine.generate_spec([[1, 2, 3], [4] * 9], 8)
    compiled = dict(engine._compiled)
    engine.generate_spec([[5] * 16, [6] * 2], 8, seed=3)  # other lengths, same bucket (16)
    assert engine._compiled.keys() == compiled.keys()
    engine.generate_spec([[5] * 17, [6] * 2], 8)  # the next bucket (32) compiles once more
    assert len(engine._compiled) > len(compiled)


def test_prompt_buckets():
    from specjax.engine import prompt_bucket

    assert [prompt_bucket(n) for n in (1, 16, 17, 300, 512)] == [16, 16, 32, 512, 512]
    assert [prompt_bucket(n) for n in (513, 768, 769, 1100, 1700)] == [768, 768, 1024, 1280, 1792]


def test_prefill_buckets_pad_less_than_the_cache_buckets():
    """The prefill computes every padded position: between 64 and 512 it pads to multiples of 64, never
    past prompt_bucket (which sizes the cache, so the loops compile as often as before)."""
    from specjax.engine import prefill_bucket, prompt_bucket

    assert [prefill_bucket(n) for n in (1, 17, 64, 65, 100, 300, 449, 512, 513, 1100)] == \
        [16, 32, 64, 128, 128, 320, 512, 512, 768, 1280]
    assert all(n <= prefill_bucket(n) <= prompt_bucket(n) for n in range(1, 3000))


def test_one_token_prompts_run_no_drafter_prefill(llm, monkeypatch):
    """A batcher's empty rows (one-token prompts) have nothing to prefill: no LLM forward for the
    recycling drafter's successors, just zeros of the forward's shapes; a real prompt still runs it."""
    engine = Engine(llm, drafters=("recycle", "lookup"))
    k = next(d.k for d in engine.drafters if d.kind == "recycle")
    calls = []
    run = engine._run
    monkeypatch.setattr(engine, "_run", lambda name, *a, **kw: calls.append(name) or run(name, *a, **kw))
    engine.init_state([[3], [5]], 4, 0, 8, 8, successors=k)
    assert "prefill" not in calls
    assert engine.prefill_successors.shape[::2] == (2, k) and not engine.prefill_successors.any()
    engine.init_state([[3, 4, 5]], 4, 0, 8, 8, successors=k)
    assert calls.count("prefill") == 1 and engine.prefill_successors.shape[2] == k
