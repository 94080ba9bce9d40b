"""Speculation watched while it runs (specjax.fallback): when it is slower than incremental decoding
would be, the rest of the request decodes incrementally on the same state, and the output is still
exactly the incremental output (greedy) with every token kept; when it pays, nothing changes."""

import jax
import pytest
from conftest import perturbed

from specjax import model
from specjax.config import ModelConfig
from specjax.engine import Engine, LoadedModel
from specjax.fallback import FallbackConfig
from specjax.tree import TreeConfig

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=512)
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 12]
NEW = 80


@pytest.fixture(scope="module")
def engines():
    llm = LoadedModel(model.init_params(CFG, jax.random.PRNGKey(0), std=0.3), CFG)
    ssm = LoadedModel(perturbed(llm.params, 0.3, seed=1), CFG)  # agrees sometimes, not always
    spec = Engine(llm, [ssm], TreeConfig(expansion=(2, 1)), drafters=("ssm", "recycle", "lookup"), budget=4)
    inc = Engine(llm).generate_incremental(PROMPTS, NEW)
    return spec, inc


def run(engine, verify_seconds: float, steps_per_call: int):
    engine.fallback = FallbackConfig(((1, verify_seconds), (8, verify_seconds)))
    try:
        return engine.generate_spec(PROMPTS, NEW, steps_per_call=steps_per_call), engine.last_fallback
    finally:
        engine.fallback = None


def test_falls_back_when_incremental_would_be_faster(engines):
    spec, inc = engines
    lines = []
    spec.progress = lines.append
    out, why = run(spec, 1e-9, steps_per_call=4)  # an incremental step "costs" a nanosecond
    spec.progress = None
    assert why.startswith("speculation fell back to incremental decoding") and lines == [why]
    assert [r.token_ids for r in out] == [r.token_ids for r in inc]  # exact, nothing lost at the switch
    for r in out:
        assert len(r.token_ids) == NEW and r.llm_steps == len(r.accepted_per_step)
        # speculative steps (some accepting more than one token) up to the switch, then one token each
        tail = r.accepted_per_step[-8:]
        assert tail == [1] * len(tail) and max(r.accepted_per_step) > 1


def test_keeps_speculating_when_it_pays(engines):
    spec, inc = engines
    out, why = run(spec, 1e3, steps_per_call=4)  # an incremental step "costs" 1000 s
    assert why == ""
    assert [r.token_ids for r in out] == [r.token_ids for r in inc]
    assert sum(sum(r.accepted_per_step) for r in out) / sum(r.llm_steps for r in out) > 1.2


def test_continuous_batching_falls_back_exactly(engines):
    """The same watch in continuous batching (specjax.batching, what Generator.generate_ids runs):
    the batch goes incremental, every request's output is still its incremental output."""
    from specjax import batching

    spec, inc = engines
    spec.fallback = FallbackConfig(((1, 1e-9), (8, 1e-9)))
    try:
        out = batching.generate(spec, PROMPTS, NEW, speculative=True, rows=2, steps_per_call=4)
    finally:
        spec.fallback = None
    assert spec.last_fallback.startswith("speculation fell back to incremental decoding")
    assert [r.token_ids for r in out] == [r.token_ids for r in inc]
