"""The automatic choice of drafters and budget: injected cost tables (expensive verification gets
incremental decoding, cheap verification a tree), the measured cost cache (kept, and measured again
when corrupt or stale)."""

import json

import jax

from specjax import autotune, model
from specjax.config import ModelConfig
from specjax.drafters import lookup, recycle
from specjax.engine import Engine, LoadedModel

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=3,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=512)
DRAFTERS = (recycle.Config(vocab_size=64), lookup.Config())


def costs(per_node: float, draft: float = 0.0) -> dict:
    """verify(N) = 1 + per_node * (N - 1), in units of one incremental step."""
    return {"verify": {n: 1.0 + per_node * (n - 1) for n in autotune.VERIFY_SIZES},
            "drafters": {d.name: draft for d in DRAFTERS}}


def test_expensive_verification_decodes_incrementally():
    c = autotune.choose(costs(per_node=1.0), DRAFTERS)  # every extra node costs a whole token
    assert c.drafters == () and c.budget is None and "incremental" in c.reason


def test_cheap_verification_gets_a_tree():
    c = autotune.choose(costs(per_node=0.01), DRAFTERS)
    assert c.drafters and c.budget >= 4 and c.speedup > 1.0
    assert all(name in c.reason for name in c.drafters)
    # The same costs with an expensive drafter: it is left out.
    heavy = costs(per_node=0.01)
    heavy["drafters"]["lookup"] = 5.0
    assert autotune.choose(heavy, DRAFTERS).drafters == ("recycle",)


def test_forced_spec_mode_gets_the_best_tree_even_when_slower():
    c = autotune.choose(costs(per_node=1.0), DRAFTERS, allow_incremental=False)
    assert c.drafters and c.speedup < 1.0


def test_costs_are_measured_once_and_corrupt_caches_are_measured_again(autotune_cache, monkeypatch):
    llm = LoadedModel(model.init_params(CFG, jax.random.PRNGKey(0)), CFG)
    engine = Engine(llm, drafters=("recycle", "lookup"))
    first, measured = autotune.load_or_measure(engine)
    assert measured and sorted(first["verify"]) == list(autotune.VERIFY_SIZES)
    assert all(s > 0 for s in first["verify"].values()) and set(first["drafters"]) == {"recycle", "lookup"}
    path = autotune.cache_path(autotune.cache_key(engine))
    again, measured = autotune.load_or_measure(engine)
    assert not measured and again == first
    # The measurement itself was just checked; from here on it is counted, not redone (each real one
    # compiles the LLM at every verify size again): a corrupt or stale cache must lead to exactly one
    # new measurement, rewritten to the cache.
    calls = []
    remeasured = {"verify": {n: 2 * s for n, s in first["verify"].items()}, "drafters": first["drafters"]}
    monkeypatch.setattr(autotune, "measure", lambda e: calls.append(e) or remeasured)
    for i, corrupt in enumerate(("{not json", json.dumps({"key": "other"}),
                                 json.dumps({**json.loads(path.read_text()), "verify": {"1": -1.0}}))):
        path.write_text(corrupt)
        notes = []
        fixed, measured = autotune.load_or_measure(engine, log=notes.append)
        assert measured and "corrupt or stale" in notes[0]
        assert calls == [engine] * (i + 1) and fixed == remeasured
        assert autotune.load_or_measure(engine) == (remeasured, False)  # rewritten, valid
    assert len(calls) == 3


def test_auto_choice_in_the_generator(monkeypatch):
    """Generator.load with tree auto follows the choice: incremental where verification is costly."""
    from specjax import api

    llm = LoadedModel(model.init_params(CFG, jax.random.PRNGKey(0)), CFG)
    monkeypatch.setattr(api, "load", lambda path, mesh=None, split=None: llm)
    for per_node, mode in ((1.0, "incremental"), (0.01, "spec")):
        monkeypatch.setattr(autotune, "load_or_measure", lambda engine, log=None, p=per_node: (costs(p), False))
        gen = api.Generator.load(llm="x", drafters="recycle,lookup")
        assert gen.mode == mode and gen.choice is not None
        if mode == "spec":
            assert gen.engine.budget == gen.choice.budget
