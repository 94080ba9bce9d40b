"""Continuous batching (specjax.batching) is exact: 32 requests of mixed prompt lengths and
max_new_tokens through B = 4 rows, refilled as rows finish, give every request the greedy output it
gets alone, incremental and speculative (== incremental, token for token); a cancelled request frees
its row; stop strings and streamed text pieces."""

import jax
import numpy as np
import pytest
from conftest import perturbed

from specjax import batching, model
from specjax.config import ModelConfig
from specjax.engine import Engine, EngineError, LoadedModel
from specjax.sampling import SamplingConfig
from specjax.streaming import StopText, TextDelta
from specjax.tree import TreeConfig

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=512)
RNG = np.random.RandomState(0)
PROMPTS = [RNG.randint(1, 64, size=RNG.randint(1, 30)).tolist() for _ in range(32)]
MAX_NEW = [int(RNG.randint(1, 24)) for _ in range(32)]
EOS = (5,)
SLOTS = 128  # every request fits: prompt + max_new + one step's room


@pytest.fixture(scope="module")
def llm():
    return LoadedModel(model.init_params(CFG, jax.random.PRNGKey(0), std=0.3), CFG)


@pytest.fixture(scope="module")
def alone(llm):
    """Each request alone: one row, the same cache size."""
    engine = Engine(llm)
    return [batching.generate(engine, [p], n, False, rows=1, eos_ids=EOS, num_slots=SLOTS)[0]
            for p, n in zip(PROMPTS, MAX_NEW)]


def test_incremental_continuous_equals_alone_and_static(llm, alone):
    engine = Engine(llm)
    out = batching.generate(engine, PROMPTS, MAX_NEW, False, rows=4, eos_ids=EOS, num_slots=SLOTS)
    assert engine.last_batcher.refills == 32  # 4 rows, refilled 28 times
    assert any(r.finish_reason == "eos" for r in out) and any(r.finish_reason == "max_new_tokens" for r in out)
    static = engine.generate_incremental(PROMPTS, max(MAX_NEW), eos_ids=EOS)  # another path: one static batch
    for a, c, s, n in zip(alone, out, static, MAX_NEW):
        assert c.token_ids == a.token_ids == s.token_ids[:n]
        assert (c.finish_reason, c.llm_steps, c.accepted_per_step) == (a.finish_reason, a.llm_steps, a.accepted_per_step)
        assert c.prompt_ids == a.prompt_ids


def test_speculative_continuous_equals_incremental_alone(llm, alone):
    ssm = LoadedModel(perturbed(llm.params, 0.05, 1), CFG)
    engine = Engine(llm, [ssm], TreeConfig(expansion=(2, 1, 1), num_ssms=1), drafters=("ssm", "recycle", "lookup"))
    out = batching.generate(engine, PROMPTS, MAX_NEW, True, rows=4, eos_ids=EOS, num_slots=SLOTS)
    assert engine.last_batcher.refills == 32
    for a, c in zip(alone, out):
        assert c.token_ids == a.token_ids and c.finish_reason == a.finish_reason
        assert sum(c.accepted_per_step) == len(c.token_ids) and len(c.accepted_per_step) == c.llm_steps
    assert sum(len(r.token_ids) for r in out) / sum(r.llm_steps for r in out) > 1.2  # drafts get accepted
    assert sum(sum(r.drafter_tokens.values()) for r in out) > 0


def test_cancelled_request_frees_its_row(llm, alone):
    engine = Engine(llm)
    b = batching.Batcher(engine, False, 1, SLOTS, EOS, steps_per_call=2)
    got = {}
    first = b.add(batching.Request(prompt=PROMPTS[0], max_new_tokens=40, on_done=lambda r: got.setdefault("a", r)))
    b.add(batching.Request(prompt=PROMPTS[1], max_new_tokens=MAX_NEW[1], on_done=lambda r: got.setdefault("b", r)))
    b.step()  # the first request runs 2 steps, the second waits for the only row
    first.cancel()
    while b.step():
        pass
    assert got["a"].finish_reason == "cancelled" and len(got["a"].token_ids) == 2
    assert got["b"].token_ids == alone[1].token_ids
    with pytest.raises(EngineError, match="cache slots"):
        b.add(batching.Request(prompt=[1] * 100, max_new_tokens=40))
    with pytest.raises(EngineError, match="empty"):
        b.add(batching.Request(prompt=[], max_new_tokens=4))


def test_stop_strings_are_never_sent():
    s = StopText(["STOP", "\n\n"])
    assert s.feed("hello ST") == ("hello ", False)  # "ST" could start STOP: held back
    assert s.feed("ay ") == ("STay ", False)
    assert s.feed("x\n") == ("x", False)
    assert s.feed("\nmore") == ("", True)
    assert s.feed("late") == ("", True) and s.flush() == ""
    t = StopText([])
    assert t.feed("abc") == ("abc", False) and t.flush() == ""


def test_text_pieces_concatenate_to_the_decoded_text():
    class Bytes:  # a byte-level tokenizer: one id per byte, so characters span tokens
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    ids = list("héllo wörld ✓".encode())
    d = TextDelta(Bytes())
    pieces = [d.feed(ids[i:i + 1]) for i in range(len(ids))] + [d.flush()]
    assert "".join(pieces) == "héllo wörld ✓" and "\ufffd" not in "".join(pieces)


@pytest.mark.parametrize("speculative", [False, True])
def test_sampled_request_draws_the_same_however_batched(llm, speculative):
    """Every row draws from its own PRNG key (seed, request index): a sampled request's output is the
    same alone, in a static batch and in whichever row of a continuous batch it lands; another seed
    changes it. (Drafters without state shared across rows: the recycling table is shared.)"""
    from specjax.sampling import SamplingConfig

    ssm = LoadedModel(perturbed(llm.params, 0.05, 1), CFG)
    engine = (Engine(llm, [ssm], TreeConfig(expansion=(2, 1), num_ssms=1), drafters=("ssm", "lookup")) if speculative
              else Engine(llm))
    gen = engine.generate_spec if speculative else engine.generate_incremental
    s, n, seed = SamplingConfig(temperature=1.0), 8, 7
    prompts, new = PROMPTS[:n], MAX_NEW[:n]
    alone = [batching.generate(engine, [p], k, speculative, rows=1, sampling=s, seed=seed, eos_ids=EOS,
                               num_slots=SLOTS, first_index=i)[0].token_ids for i, (p, k) in enumerate(zip(prompts, new))]
    cont = batching.generate(engine, prompts, new, speculative, rows=4, sampling=s, seed=seed, eos_ids=EOS,
                             num_slots=SLOTS)
    static = gen(prompts, max(new), s, seed, EOS)
    for a, c, st, k in zip(alone, cont, static, new):
        assert c.token_ids == a
        assert st.token_ids[:len(a)] == a and (len(a) == k or st.token_ids[len(a) - 1] in EOS)
    other = batching.generate(engine, prompts, new, speculative, rows=4, sampling=s, seed=seed + 1, eos_ids=EOS,
                              num_slots=SLOTS)
    assert sum(o.token_ids != a for o, a in zip(other, alone)) >= n // 2


def run_schedule(batcher, arrivals: dict, results: dict) -> list[int]:
    """Steps the batcher, adding request i (PROMPTS[i], MAX_NEW[i]) at the call numbers `arrivals`
    gives ({call: [i, ...]}), until every request is done. Returns the tier of each call."""
    tiers, k = [], 0
    while k <= max(arrivals) or batcher.busy:
        for i in arrivals.get(k, []):
            batcher.add(batching.Request(prompt=PROMPTS[i], max_new_tokens=MAX_NEW[i], index=i,
                                         on_done=lambda r, i=i: results.__setitem__(i, r)))
        batcher.step()
        tiers.append(batcher.tier)
        k += 1
    return tiers


# call -> requests arriving then (incremental decoding goes through tiers 1, 4, 1, 2, 4, 2, 1, 2, 1, 2,
# speculative 1, 4, 1, 4, 1, 4, 1, 4; each shrink SHRINK_AFTER_CALLS calls after the smaller tier would do)
ARRIVALS = {0: [0], 2: [1, 2, 3], 3: [4], 20: [5], 22: [6], 24: [7, 8, 9, 10], 40: [11], 41: [12], 55: [13, 14]}


@pytest.mark.parametrize("speculative", [False, True])
def test_row_tiers_grow_and_shrink_exactly_and_compile_once_per_tier(llm, alone, speculative):
    """Row tiers (incremental: 1, 2, 4 rows of 4; speculative: 1 and 4, one loop compile fewer):
    requests arriving and finishing move the batch between tiers several times (the SSM's cache moves
    with its rows, the shared recycling table stays); every request's greedy output equals its output
    alone; the loop compiles once per tier, and a second wave of the same traffic compiles nothing.
    Incremental compiles each tier at its first use; speculative compiles them all first, one at a
    time as `specjax serve` does while idle (precompile_when_idle, compile_next), and then the traffic
    compiles nothing but prefills."""
    if speculative:  # the speculative test's engine: its 4-row loop is compiled already
        ssm = LoadedModel(perturbed(llm.params, 0.05, 1), CFG)
        engine = Engine(llm, [ssm], TreeConfig(expansion=(2, 1, 1), num_ssms=1),
                        drafters=("ssm", "recycle", "lookup"))
    else:
        engine = Engine(llm)
    b = batching.Batcher(engine, speculative, 4, SLOTS, EOS, steps_per_call=2,
                         row_tiers=(1,) if speculative else True)
    assert b.tiers == ((1, 4) if speculative else (1, 2, 4)) and b.tier == 1
    if speculative:
        assert b.precompile_when_idle() > 0 and b.compile_plan()[0][0] == "tier 1 loop (greedy)"
        while b.compile_next():
            pass
        assert not b.to_compile and b.compile_plan() == [] and b.idle_compiled > 0
    precompiled = {key for key in engine._compiled if key[0] != "prefill"}
    got: dict = {}
    tiers = run_schedule(b, ARRIVALS, got)
    if speculative:
        assert {key for key in engine._compiled if key[0] != "prefill"} == precompiled
    assert set(tiers) == set(b.tiers) and b.grows >= 3 and b.shrinks >= 3, tiers
    for i, r in got.items():
        assert r.token_ids == alone[i].token_ids and r.finish_reason == alone[i].finish_reason, i
        if speculative:
            assert sum(r.accepted_per_step) == len(r.token_ids) and len(r.accepted_per_step) == r.llm_steps
        else:
            assert r.accepted_per_step == alone[i].accepted_per_step
    loop = "spec_cb" if speculative else "incremental_cb"
    compiled = set(engine._compiled)
    assert sum(key[0] == loop for key in compiled) == len(b.tiers)  # one loop per tier
    again: dict = {}
    assert run_schedule(b, ARRIVALS, again) and set(engine._compiled) == compiled  # nothing new
    assert all(again[i].token_ids == got[i].token_ids for i in got)


@pytest.mark.parametrize("shrink_after", [1, batching.SHRINK_AFTER_CALLS])
def test_a_row_finishing_just_before_the_next_request_moves_nothing(llm, shrink_after):
    """Two rows busy (tier 2), one finishes, the next request comes one call later: with the default
    hysteresis the batch stays at tier 2 (no move); shrinking at once (shrink_after=1, what the tiers
    did before) shrinks to 1 and grows back. Output is exact either way."""
    engine = Engine(llm)
    b = batching.Batcher(engine, False, 2, SLOTS, EOS, steps_per_call=2, row_tiers=True, shrink_after=shrink_after)
    got: dict = {}

    def add(i, n):
        b.add(batching.Request(prompt=PROMPTS[i], max_new_tokens=n, index=i, on_done=lambda r: got.__setitem__(i, r)))
    add(0, 20), add(1, 2)
    while 1 not in got:
        b.step()
    assert 0 not in got and (b.tier, b.grows, b.shrinks) == (2, 1, 0)
    b.step()  # the next request is not there yet
    add(2, 4)
    b.step()
    assert (b.grows, b.shrinks) == ((1, 0) if shrink_after > 1 else (2, 1)) and b.tier == 2
    b.run()
    for i, n in ((0, 20), (1, 2), (2, 4)):
        [a] = batching.generate(engine, [PROMPTS[i]], n, False, rows=1, eos_ids=EOS, num_slots=SLOTS)
        assert got[i].token_ids == a.token_ids and got[i].finish_reason == a.finish_reason


def test_precompile_covers_every_tier_and_the_sampling_configs_given(llm):
    """Batcher.precompile(samplings) compiles each tier's executables for the batch's config and the
    ones given: sampled requests then grow the batch (1 -> 2 rows) compiling nothing but prefills,
    and draw what they draw alone (same seed and index)."""
    engine = Engine(llm)
    s = SamplingConfig(temperature=1.0)
    b = batching.Batcher(engine, False, 2, SLOTS, EOS, steps_per_call=2, row_tiers=True)
    assert b.precompile([s]) > 0 and b.sampling == SamplingConfig()
    compiled = {key for key in engine._compiled if key[0] != "prefill"}
    got: dict = {}
    for i in (3, 4):
        b.add(batching.Request(prompt=PROMPTS[i], max_new_tokens=MAX_NEW[i], sampling=s, seed=7, index=i,
                               on_done=lambda r, i=i: got.__setitem__(i, r)))
    b.run()
    assert b.grows == 1 and {key for key in engine._compiled if key[0] != "prefill"} == compiled
    for i in (3, 4):
        [a] = batching.generate(engine, [PROMPTS[i]], MAX_NEW[i], False, rows=1, sampling=s, seed=7, eos_ids=EOS,
                                num_slots=SLOTS, first_index=i)
        assert got[i].token_ids == a.token_ids


def test_a_request_arriving_during_the_idle_compile_waits_for_one_executable(llm, alone, monkeypatch):
    """A request submitted while compile_next compiles (here: from inside the compile) waits for that
    one executable, then runs (compile_next compiles nothing while it is active or waiting) and gets
    its output alone; once the batcher is idle again the queue resumes and empties, the request's own
    insert not compiled twice."""
    engine = Engine(llm)
    b = batching.Batcher(engine, False, 2, SLOTS, EOS, steps_per_call=2, row_tiers=True)
    n = b.precompile_when_idle()
    labels = [label for label, _ in b.to_compile]
    assert labels[:3] == ["tier 1 loop (greedy)", "tier 1 insert (greedy)", "tier 1 release"]
    assert labels[-2:] == ["move 1 -> 2 rows (greedy)", "move 2 -> 1 rows (greedy)"] and n == len(labels) == 8
    got: dict = {}
    compiling, arrived = engine._executable, []

    def arrive_while_compiling(*spec):
        if not arrived:
            arrived.append(b.add(batching.Request(prompt=PROMPTS[2], max_new_tokens=MAX_NEW[2],
                                                  on_done=lambda r: got.setdefault(2, r))))
        return compiling(*spec)
    monkeypatch.setattr(engine, "_executable", arrive_while_compiling)
    assert b.compile_next() and b.idle_compiled == 1 and len(b.waiting) == 1
    assert not b.compile_next() and b.idle_compiled == 1  # work waits: nothing more compiles
    b.run()
    assert got[2].token_ids == alone[2].token_ids and got[2].finish_reason == alone[2].finish_reason
    while b.compile_next():
        pass
    assert b.idle_compiled == n - 1 and b.compile_plan() == []  # the insert compiled for the request


def test_row_tier_sizes_and_move_index():
    from specjax import row_tiers

    assert row_tiers.tiers_for(8) == (1, 2, 4, 8) and row_tiers.tiers_for(6) == (1, 2, 4, 6)
    assert row_tiers.tiers_for(1) == (1,) and row_tiers.tiers(4, False) == (4,) and row_tiers.tiers(4, [2, 1]) == (1, 2, 4)
    with pytest.raises(ValueError):
        row_tiers.tiers(4, (0, 2))
    assert [row_tiers.tier_for(n, (1, 2, 4, 6)) for n in (1, 2, 3, 5, 6, 9)] == [1, 2, 4, 6, 6, 6]
    assert row_tiers.move_index([1, 3], 4).tolist() == [1, 3, -1, -1]
    with pytest.raises(ValueError):
        row_tiers.move_index([0, 1, 2], 2)
