"""Sharded decoding on 8 fake CPU devices. Run by tests/test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the device count is fixed when jax starts, and
the rest of the suite runs on one device); skipped when started without it.

- greedy speculative (and incremental) output under meshes dp=1 tp=8 (kv heads repeated),
  dp=2 tp=4 and dp=8 tp=1 (3 prompts: padded batches) equals single-device output, token for token;
- the default LLM (SmolLM2-135M) over tp=3 equals its single-device output;
- parameters and caches are really split (per-device shard shapes);
- checkpoints load straight into their sharding; a mesh that does not divide the model is an error.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from specjax import checkpoint, sharding
from specjax.api import Generator
from specjax.engine import Engine, LoadedModel
from specjax.sharding import ShardingError
from specjax.tree import TreeConfig
from test_sharding import CFG, SSM_CFG, perturbed, random_params, save_tiny

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: run through tests/test_sharding.py")

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 12]
TREE = TreeConfig(expansion=(1, 2, 1), num_ssms=1)
MESHES = ["dp=1,tp=8", "dp=2,tp=4", "dp=8,tp=1"]


def on_device(params):
    return jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module")
def models():
    params = random_params(CFG, 0)
    llm = LoadedModel(params, CFG)
    ssms = [LoadedModel(perturbed(params, 0.05, 1), CFG)]  # same config as the LLM, replicated
    return llm, ssms


@pytest.fixture(scope="module")
def reference(models):
    llm, ssms = models
    one = lambda m: dataclasses.replace(m, params=on_device(m.params))
    engine = Engine(one(llm), [one(s) for s in ssms], TREE)
    return engine.generate_spec(PROMPTS, 16), Engine(one(llm)).generate_incremental(PROMPTS, 16)


@pytest.mark.parametrize("spec", MESHES)
def test_speculative_greedy_equals_single_device(models, reference, spec):
    llm, ssms = models
    mesh = sharding.parse_mesh(spec)
    out = Engine(llm, ssms, TREE, mesh=mesh).generate_spec(PROMPTS, 16)
    assert [r.token_ids for r in out] == [r.token_ids for r in reference[0]]
    assert [r.accepted_per_step for r in out] == [r.accepted_per_step for r in reference[0]]
    assert max(r.mean_accepted for r in out) > 1.2  # the tree is really used


def test_incremental_greedy_equals_single_device(models, reference):
    out = Engine(models[0], mesh=sharding.parse_mesh("dp=2,tp=4")).generate_incremental(PROMPTS, 16)
    assert [r.token_ids for r in out] == [r.token_ids for r in reference[1]]


def test_parameters_and_caches_are_split(models):
    llm, ssms = models
    engine = Engine(llm, ssms, TREE, mesh=sharding.parse_mesh("dp=2,tp=4"))
    p = engine.llm.params
    D, F, H, K, A, V = 32, 64, 8, 4, 8, 64

    def shards(x):
        assert len(x.addressable_shards) == 8
        return {s.data.shape for s in x.addressable_shards}

    assert p["layers"][1]["q"].sharding.spec == P(None, "tp", None)
    assert shards(p["layers"][1]["q"]) == {(D, H // 4, A)} and shards(p["layers"][1]["o"]) == {(H // 4, A, D)}
    assert shards(p["layers"][1]["k"]) == shards(p["layers"][1]["v"]) == {(D, K // 4, A)}
    assert shards(p["layers"][1]["gate"]) == shards(p["layers"][1]["up"]) == {(D, F // 4)}
    assert shards(p["layers"][1]["down"]) == {(F // 4, D)}
    assert shards(p["embed"]) == {(V // 4, D)} and shards(p["lm_head"]) == {(D, V // 4)}
    assert shards(p["final_norm"]["scale"]) == {(D,)}
    # A tp group holds one copy of the LLM: the 4 shards of q on devices (0, 0..3) tile it.
    q = p["layers"][1]["q"]
    tile = np.concatenate([np.asarray(s.data) for s in sorted(q.addressable_shards, key=lambda s: s.device.id)[:4]], 1)
    np.testing.assert_array_equal(tile, llm.params["layers"][1]["q"])
    # Drafters replicated.
    assert all(x.sharding.is_fully_replicated for s in engine.ssms for x in jax.tree.leaves(s.params))

    state, _ = engine.init_state(PROMPTS, 16, 0, TREE.num_nodes, 16)
    B, S = state.tokens.shape
    assert B == 4  # 3 prompts padded to a multiple of dp=2
    assert state.cache.k[0].sharding.is_equivalent_to(NamedSharding(engine.mesh, P("dp", "tp", None, None)), 4)
    assert shards(state.cache.k[0]) == shards(state.cache.v[1]) == {(B // 2, K // 4, S, A)}
    assert shards(state.tokens) == {(B // 2, S)} and shards(state.length) == {(B // 2,)}
    assert shards(state.key) == {(B // 2, 2)}  # one PRNG key per row, rows over dp
    ssm_cache = sharding.new_cache(SSM_CFG, B, S, jnp.float32, engine.mesh, sharding.SSM_SPLIT)
    assert shards(ssm_cache.k[0]) == {(B // 2, 1, S, A)}

    # tp=8 > K=4: kv heads repeated, one per device; cache split likewise.
    engine = Engine(llm, ssms, TREE, mesh=sharding.parse_mesh("dp=1,tp=8"))
    assert engine.llm.cfg.num_kv_heads == 8
    k = engine.llm.params["layers"][0]["k"]
    assert shards(k) == {(D, 1, A)}
    np.testing.assert_array_equal(np.asarray(k), np.repeat(llm.params["layers"][0]["k"], 2, axis=1))
    state, _ = engine.init_state(PROMPTS, 16, 0, TREE.num_nodes, 16)
    assert shards(state.cache.k[0]) == {(3, 1, state.tokens.shape[1], A)}


@pytest.mark.parametrize("spec", ["dp=2,tp=4", "dp=1,tp=8"])
def test_load_sharded_reads_each_shard(models, tmp_path, spec):
    llm, _ = models
    path = save_tiny(tmp_path / "llm", llm.params, CFG)
    mesh = sharding.parse_mesh(spec)
    params, cfg = sharding.load_sharded(path, mesh)
    r = 2 if spec == "dp=1,tp=8" else 1  # kv heads repeated
    assert cfg == dataclasses.replace(CFG, num_kv_heads=CFG.num_kv_heads * r)
    for name, x in checkpoint.flatten(params).items():
        want = checkpoint.flatten(llm.params)[name]
        if r > 1 and name.split(".")[-1] in ("k", "v", "k_bias", "v_bias"):
            want = np.repeat(want, r, axis=want.ndim - 2)
        assert x.sharding.spec == sharding.param_specs(CFG, mesh)[name]
        for s in x.addressable_shards:
            np.testing.assert_array_equal(np.asarray(s.data), want[s.index])


def test_generator_load_with_mesh(models, reference, tmp_path):
    llm, ssms = models
    dirs = [str(save_tiny(tmp_path / f"m{i}", m.params, m.cfg)) for i, m in enumerate([llm] + ssms)]
    gen = Generator.load(llm=dirs[0], ssms=dirs[1:], tree="1,2,1", mesh="dp=2,tp=4")
    assert "mesh dp=2,tp=4" in gen.describe()
    assert gen.llm.params["embed"].sharding.spec == P("tp", None)
    out = gen.generate_ids(PROMPTS, max_new_tokens=16, batch_size=3)
    assert [r.token_ids for r in out] == [r.token_ids for r in reference[0]]


def test_mesh_not_dividing_the_model_is_an_error(models):
    with pytest.raises(ShardingError, match=r"tp=3 does not divide num_heads \(H=8\)"):
        Engine(models[0], mesh=sharding.parse_mesh("dp=1,tp=3"))


@pytest.mark.slow
def test_default_llm_over_tp3_equals_single_device(default_llm_dir):
    """SmolLM2-135M (9 heads, 3 kv heads, F=1536, V=49152) over tp=3; the drafter is the LLM's own
    first two layers (replicated)."""
    from specjax.tokenizer import load_tokenizer

    params, cfg = checkpoint.load_checkpoint(default_llm_dir)
    drafter = LoadedModel(on_device(dict(params, layers=params["layers"][:2])), dataclasses.replace(cfg, num_layers=2))
    tok = load_tokenizer(default_llm_dir)
    prompts = [tok.encode("The capital of France is", chat=False)]
    tree = TreeConfig(expansion=(1, 1, 2), num_ssms=1)
    ref = Engine(LoadedModel(on_device(params), cfg), [drafter], tree).generate_spec(prompts, 16)
    mesh = sharding.parse_mesh("dp=1,tp=3")
    sharded, _ = sharding.load_sharded(default_llm_dir, mesh)
    assert {s.data.shape for s in sharded["embed"].addressable_shards} == {(49152 // 3, 576)}
    assert {s.data.shape for s in sharded["layers"][0]["k"].addressable_shards} == {(576, 1, 64)}
    out = Engine(LoadedModel(sharded, cfg), [drafter], tree, mesh=mesh).generate_spec(prompts, 16)
    assert [r.token_ids for r in out] == [r.token_ids for r in ref]
    assert all(len(r.token_ids) == 16 for r in out)
