"""The automatic choice of drafters and budget: injected cost tables (expensive verification gets
incremental decoding, cheap verification a tree), the measured cost cache (kept, and measured again
when corrupt or stale)."""

import json

import jax
import numpy as np
import pytest

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


def test_the_measured_incremental_step_is_the_baseline():
    """Speedups are over the real incremental loop's measured step, and what that loop adds to the
    forward is charged to each speculative step as well (a lower bound on the speculative loop's)."""
    c = {**costs(per_node=0.04), "incremental": 1.5}
    choice = autotune.choose(c, DRAFTERS)
    n = choice.budget
    step = autotune._interp(c["verify"], n + 1) + 0.5  # + the loop's 0.5 beside the forward
    assert choice.speedup == pytest.approx(choice.expected_tokens * 1.5 / step)
    assert "incremental step" in choice.reason
    # verify(1) above the loop's step (a timed jitted call pays a per-call cost the loop does not): a
    # speculative step is the incremental step plus what the extra tokens add, no more.
    c = {**costs(per_node=0.04), "incremental": 0.8}
    choice = autotune.choose(c, DRAFTERS)
    step = 0.8 + autotune._interp(c["verify"], choice.budget + 1) - 1.0
    assert choice.speedup == pytest.approx(choice.expected_tokens * 0.8 / step)


def test_a_busy_machine_is_measured_again_then_scaled(monkeypatch):
    """verify(1) timed far above the incremental step means one of them ran beside another job: the
    costs are measured again, and if they never agree, the most consistent try is scaled to the
    incremental step (the curve's ratios, timed side by side, are kept)."""
    seq = [({1: 2.0, 2: 2.2}, 1.0), ({1: 1.05, 2: 1.2}, 1.0)]  # busy, then quiet
    monkeypatch.setattr(autotune, "measure_verify", lambda llm: seq[0][0])
    monkeypatch.setattr(autotune, "measure_incremental", lambda engine: seq.pop(0)[1])
    engine = type("E", (), {"llm": None, "drafters": ()})()
    notes = []
    c = autotune.measure(engine, notes.append)
    assert c["verify"] == {1: 1.05, 2: 1.2} and c["incremental"] == 1.0
    assert len(notes) == 1 and "busy, measuring again" in notes[0]
    seq[:] = [({1: 3.0, 2: 3.6}, 1.0), ({1: 2.0, 2: 2.2}, 1.0), ({1: 4.0, 2: 4.0}, 1.0)]  # never quiet
    notes.clear()
    c = autotune.measure(engine, notes.append)
    assert c["verify"] == pytest.approx({1: 1.0, 2: 1.1}) and "scaled" in notes[-1]


def test_merged_drafters_use_measured_mix_or_overlap_discount(monkeypatch):
    """A mix of drafters is not the sum of its members: its measured MAT is used where shipped, else
    the summed node acceptances times the overlap factor; one drafter alone sums its own nodes."""
    from specjax.drafters import acceptance

    acc = {"recycle": np.array([0.5, 0.3, 0.2]), "lookup": np.array([0.5, 0.4])}
    monkeypatch.setattr(autotune, "node_acceptance", lambda d, sampled=False: acc[d.name])
    monkeypatch.setattr(acceptance, "merged_mat",
                        lambda names, sampled=False: {2: 1.6} if names == ("recycle", "lookup") else None)
    monkeypatch.setattr(acceptance, "overlap_factor", lambda sampled=False: 0.5)
    monkeypatch.setattr(acceptance, "only_measured_mixes", lambda names, sampled=False: False)  # a user's drafters
    pool = np.sort(np.concatenate(list(acc.values())))[::-1]
    both = DRAFTERS
    assert autotune.expected_tokens(both[:1], 2, acc["recycle"], 0.5) == (1.8, "measured alone")
    assert autotune.expected_tokens(both, 2, pool, 0.5) == (1.6, "measured mix")  # not 1 + 0.5 + 0.5
    e, source = autotune.expected_tokens(both, 4, pool, 0.5)
    assert e == pytest.approx(1 + 0.5 * (0.5 + 0.5 + 0.4 + 0.3)) and "overlap" in source
    # With verification free, the chooser still prefers a single drafter whose own sum beats the mix.
    c = autotune.choose(costs(per_node=0.0), DRAFTERS, budgets=(2,))
    assert c.drafters == ("recycle",) or c.drafters == ("lookup",)
    assert c.expected_tokens == pytest.approx(1.9)  # lookup alone: 1 + 0.5 + 0.4


def test_overlap_factor_from_the_shipped_mixes():
    """The factor applied to unmeasured mixes is in (0, 1] (never more than the sum); the shipped mixes
    cover the default drafters' every pair and the triple at every budget their nodes fill."""
    from specjax.drafters import acceptance

    f = acceptance.overlap_factor()
    assert 0.0 < f <= 1.0
    shipped = acceptance._shipped()
    merged = shipped["merged"]
    for mix in ("feature+recycle", "feature+lookup", "recycle+lookup", "feature+recycle+lookup"):
        pool = sum(len(shipped["shapes"][name]) for name in mix.split("+"))
        assert sorted(map(int, merged[mix])) == [n for n in autotune.BUDGETS if n <= pool]
        assert acceptance.merged_mat(tuple(mix.split("+")))[16] > 1.0
        # Any order of the same drafters is the same mix (specjax bench lists them in another order).
        assert acceptance.merged_mat(tuple(reversed(mix.split("+")))) == acceptance.merged_mat(tuple(mix.split("+")))
    assert acceptance.merged_mat(("feature", "ssm0")) is None


def test_sampled_decoding_is_chosen_for_from_sampled_acceptance(monkeypatch):
    """Under sampling the drafters' nodes are accepted far less often: the choice for temperature > 0
    reads the file's sampled section (node acceptances and mixes measured at one temperature), and
    says so; a file without one gives the greedy figures and says that instead."""
    from specjax.drafters import acceptance

    greedy = {"node_acceptance": {"recycle": [0.6, 0.3, 0.2, 0.1], "lookup": [0.5, 0.4]},
              "merged": {"recycle+lookup": {"2": 2.0, "4": 2.4}}}
    sampled = {"temperature": 0.7, "node_acceptance": {"recycle": [0.1, 0.02, 0.01, 0.0], "lookup": [0.12, 0.05]},
               "merged": {"recycle+lookup": {"2": 1.15, "4": 1.2}}}
    drafters = (recycle.Config(vocab_size=64, expansion=(2, 1)), lookup.Config(length=2))
    assert [d.topology.num_nodes for d in drafters] == [4, 2]
    c = costs(per_node=0.1)  # a tree token costs 10% of a step

    def reset():
        acceptance.overlap_factor.cache_clear()
    for shipped in (dict(greedy, sampled=sampled), greedy):
        monkeypatch.setattr(acceptance, "_shipped", lambda s=shipped: s)
        reset()
        g = autotune.choose(c, drafters)
        assert g.drafters and g.expected_tokens >= 2.0 and "sampled" not in g.reason
        t = autotune.choose(c, drafters, sampled=True)
        if "sampled" in shipped:  # the best tree reaches ~1.12 tokens for >= 1.1x a step's cost
            assert t.drafters == () and "incremental" in t.reason
            assert autotune.expected_tokens(drafters, 4, np.array([0.12, 0.1, 0.05, 0.02, 0.01, 0.0]),
                                            0.5, sampled=True) == (1.2, "measured mix")
            forced = autotune.choose(c, drafters, sampled=True, allow_incremental=False)
            assert forced.drafters and "sampled at T = 0.7" in forced.reason
        else:  # nothing sampled shipped: the greedy figures, named as such
            assert (t.drafters, t.budget, t.expected_tokens) == (g.drafters, g.budget, g.expected_tokens)
            assert "greedy: no sampled statistics shipped" in t.reason
        # A mix of drafters the file knows is taken only as measured (budget 1 was not): the overlap
        # factor over-promises for drafters that propose the same tokens.
        for on in (False, True):
            assert autotune.expected_tokens(drafters, 1, np.array([0.6, 0.5]), 0.5, on) == (None, "not measured")
            assert all(c_[1] != ("recycle", "lookup") or c_[2] in (2, 4)
                       for c_ in autotune.candidates(c, drafters, sampled=on))
            mine = type("Drafter", (), {"name": "mine"})()  # a drafter the file does not know: estimated
            e, source = autotune.expected_tokens((drafters[1], mine), 1, np.array([0.6, 0.5]), 0.5, on)
            assert e == pytest.approx(1.3) and source.startswith("estimated")
    reset()


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
    assert first["incremental"] > 0  # the real incremental loop's step
    remeasured = {"verify": {n: 2 * s for n, s in first["verify"].items()}, "drafters": first["drafters"],
                  "incremental": 2 * first["incremental"]}
    monkeypatch.setattr(autotune, "measure", lambda e, log=None: calls.append(e) or remeasured)
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
    # The choice is made for the sampling asked for (the CLI passes its --temperature).
    seen = []
    real = autotune.choose
    monkeypatch.setattr(autotune, "choose", lambda *a, **kw: seen.append(kw.get("sampled")) or real(*a, **kw))
    api.Generator.load(llm="x", drafters="recycle,lookup")
    api.Generator.load(llm="x", drafters="recycle,lookup", temperature=0.7)
    assert seen == [False, True]


def test_a_batch_speculates_only_where_its_rows_still_pay(monkeypatch):
    """The choice is made for one row; a batch of B rows verifies B x (budget + 1) tree tokens a step
    against B for incremental decoding. Worked example on a curve that is flat to 4 tokens, then
    grows one unit per 4: verify(N) = max(1, N / 4)."""
    curve = {"verify": {n: max(1.0, n / 4) for n in autotune.VERIFY_SIZES},
             "drafters": {"recycle": 0.1, "lookup": 0.0}, "incremental": 1.0}
    choice = autotune.Choice(("recycle",), 3, 2.0, 2.0 / 1.1, "")
    # One row: 2 tokens for verify(4) + 0.1 = 1.1 against 1.0.
    assert autotune.speedup_at_rows(curve, choice, 1) == pytest.approx(2.0 / 1.1)
    # 4 rows: 16 tree tokens, verify 4.0, + drafters 0.1 x verify(4)/verify(1) = 0.1: 2.0 x 1.0 / 4.1.
    assert autotune.speedup_at_rows(curve, choice, 4) == pytest.approx(2.0 / 4.1)
    # 16 rows: 64 tokens, past the curve's end (32 -> 8.0, slope 0.25): 16.0; incremental verify(16) = 4.0.
    assert autotune.speedup_at_rows(curve, choice, 16) == pytest.approx(2.0 * 4.0 / (0.4 + 16.0))

    # The generator decodes such a batch incrementally (same output), a single row speculatively.
    from specjax import api, batching

    llm = LoadedModel(model.init_params(CFG, jax.random.PRNGKey(0)), CFG)
    monkeypatch.setattr(api, "load", lambda path, mesh=None, split=None: llm)
    monkeypatch.setattr(autotune, "load_or_measure", lambda engine, log=None: (curve, False))
    monkeypatch.setattr(autotune, "choose", lambda costs, drafters, **kw: choice)
    gen = api.Generator.load(llm="x", drafters="recycle,lookup")
    notes = []
    gen.engine.progress = notes.append
    assert gen.mode == "spec" and gen.speculates_at(1) and not gen.speculates_at(4)
    assert notes and "4 rows at a time: incremental" in notes[0]
    seen = []
    monkeypatch.setattr(batching, "generate", lambda engine, prompts, n, spec, *a, **kw: seen.append(spec) or [])
    gen.generate_ids([[1, 2, 3]] * 4, max_new_tokens=4, batch_size=4)
    assert gen.last_mode == "incremental"  # what the CLI's summary line reports
    gen.generate_ids([[1, 2, 3]], max_new_tokens=4, batch_size=4)
    assert seen == [False, True] and gen.last_mode == "spec"
    # A mode or budget given by the user is kept.
    forced = api.Generator.load(llm="x", drafters="recycle,lookup", budget=3)
    assert forced.speculates_at(8)


def test_a_bigger_budget_must_win_by_the_margin(monkeypatch):
    """Within MARGIN of the best, the smallest budget is chosen (a bigger tree's loop costs more than
    the forward curve says); a bigger one that wins by more is kept."""
    c = costs(per_node=0.01)
    for b8, want in ((2.01, 4), (2.10, 8)):
        cands = [(1.98, ("feature", "lookup"), 4, 2.3, 1.1, "measured mix"),
                 (b8, ("feature", "lookup"), 8, 2.6, 1.2, "measured mix"),
                 (1.50, ("lookup",), 2, 1.6, 1.0, "measured alone")]
        monkeypatch.setattr(autotune, "candidates", lambda costs, drafters, budgets, sampled=False, cands=cands: cands)
        assert autotune.choose(c, DRAFTERS).budget == want
