"""Sharding: partition rules and mesh errors on abstract meshes (cheap, one device), then the real
thing in subprocesses, since the number of fake CPU devices is fixed when jax starts:

- tests/sharded_cases.py on 8 fake CPU devices: sharded greedy output equals single-device output
  (several meshes, and the default LLM over tp=3), parameters and caches really split, sharded loading;
- two processes of 4 fake devices each, joined by `jax.distributed` (the multi-host code path), run
  `specjax generate --distributed --mesh dp=2,tp=4` and write the single-device output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from specjax import checkpoint, model, sharding
from specjax.config import ModelConfig
from specjax.sharding import ShardingError

ROOT = Path(__file__).resolve().parents[1]
# Tiny models whose head counts divide tp = 1, 2, 4 and 8 (kv heads replicated at tp = 8).
CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=8, num_kv_heads=4, head_dim=8, max_position_embeddings=512, qkv_bias=True,
                  mlp_bias=True, eos_token_ids=(63,))
SSM_CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=8, max_position_embeddings=512,
                      tie_word_embeddings=True)
SMOLLM = ModelConfig(family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                     num_heads=9, num_kv_heads=3, head_dim=64, max_position_embeddings=8192,
                     tie_word_embeddings=True)


def mesh(dp: int, tp: int) -> AbstractMesh:
    return AbstractMesh((dp, tp), sharding.AXES)


# ----------------------------------------------------------------------------- helpers, shared with sharded_cases


def random_params(cfg: ModelConfig, seed: int, std: float = 0.3) -> dict:
    """numpy params: every weight and bias normal(std), norm scales 1 + normal(0.1)."""
    rng = np.random.RandomState(seed)
    flat = {name: (1.0 + 0.1 * rng.randn(*shape) if name.endswith("scale") else std * rng.randn(*shape))
            .astype(np.float32) for name, shape in checkpoint.expected_shapes(cfg).items()}
    return checkpoint.unflatten(flat, model.param_shapes(cfg))


def perturbed(params: dict, scale: float, seed: int) -> dict:
    """A drafter that agrees with the LLM often: its weights plus noise."""
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda x: (x + scale * rng.randn(*x.shape)).astype(np.float32), params)


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over vocab_size tokens w0 w1 ... (no special tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


def save_tiny(directory: Path, params: dict, cfg: ModelConfig) -> Path:
    return checkpoint.save_checkpoint(directory, params, cfg, tokenizer=word_tokenizer(cfg.vocab_size))


# ----------------------------------------------------------------------------- rules and errors (abstract meshes)


def test_mesh_shape_parsing():
    assert sharding.mesh_shape("dp=2,tp=4", 8) == (2, 4)
    assert sharding.mesh_shape("tp=4,dp=2", 8) == (2, 4)
    assert sharding.mesh_shape("dp=2", 8) == (2, 4)
    assert sharding.mesh_shape("tp=8", 8) == (1, 8)
    assert sharding.mesh_shape(None, 8) == sharding.mesh_shape("auto", 8) == (1, 8)
    assert sharding.mesh_shape("dp=1,tp=3", 8) == (1, 3)  # a subset of the devices
    with pytest.raises(ShardingError, match="does not divide the 8 devices; give both axes, e.g. 'dp=1,tp=3'"):
        sharding.mesh_shape("tp=3", 8)
    with pytest.raises(ShardingError, match="needs dp \\* tp = 16 devices but only 8"):
        sharding.mesh_shape("dp=4,tp=4", 8)
    for bad in ("mp=2", "dp=0,tp=8", "dp=two", "dp=2,dp=4"):
        with pytest.raises(ShardingError, match="bad mesh"):
            sharding.mesh_shape(bad, 8)


def test_partition_rules_split_heads_mlp_and_vocab():
    specs = sharding.param_specs(CFG, mesh(2, 4))
    assert specs["embed"] == P("tp", None) and specs["lm_head"] == P(None, "tp")
    assert specs["layers.1.q"] == P(None, "tp", None) and specs["layers.1.o"] == P("tp", None, None)
    assert specs["layers.1.k"] == specs["layers.1.v"] == P(None, "tp", None)
    assert specs["layers.1.q_bias"] == specs["layers.1.k_bias"] == P("tp", None)
    assert specs["layers.1.gate"] == specs["layers.1.up"] == P(None, "tp")
    assert specs["layers.1.down"] == P("tp", None) and specs["layers.1.up_bias"] == P("tp")
    for name in ("layers.0.attn_norm.scale", "layers.0.mlp_norm.scale", "final_norm.scale", "layers.0.down_bias"):
        assert specs[name] == P(None)
    assert sharding.cache_spec(CFG, mesh(2, 4)) == P("dp", "tp", None, None)
    # Drafters are replicated; a batch-only mesh replicates everything.
    assert set(sharding.param_specs(SSM_CFG, mesh(2, 4), sharding.SSM_SPLIT).values()) == {P(None), P(None, None),
                                                                                          P(None, None, None)}
    assert sharding.cache_spec(SSM_CFG, mesh(2, 4), sharding.SSM_SPLIT) == P("dp", None, None, None)
    assert all(a is None for s in sharding.param_specs(CFG, mesh(8, 1)).values() for a in s)


@pytest.mark.parametrize("family", ["opt_post", "opt_pre", "llama_tied"])
def test_rules_cover_every_family(family):
    cfg = {"opt_post": ModelConfig(family="opt", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                                   num_heads=4, num_kv_heads=4, head_dim=8, max_position_embeddings=64,
                                   activation="relu", qkv_bias=True, o_bias=True, mlp_bias=True, rope=None,
                                   pre_norm=False, final_norm=False, embed_dim=16, position_offset=2),
           "opt_pre": ModelConfig(family="opt", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                                  num_heads=4, num_kv_heads=4, head_dim=8, max_position_embeddings=64,
                                  activation="relu", qkv_bias=True, o_bias=True, mlp_bias=True, rope=None,
                                  tie_word_embeddings=True, position_offset=2),
           "llama_tied": SSM_CFG}[family]
    specs = sharding.param_specs(cfg, mesh(1, 2))
    assert set(specs) == set(checkpoint.expected_shapes(cfg))
    if cfg.family == "opt":
        assert specs["pos_embed"] == P(None, None) and specs["layers.0.attn_norm.bias"] == P(None)
    if cfg.projects_embeddings:
        assert specs["project_in"] == specs["project_out"] == P(None, None)


def test_parameter_without_rule_raises():
    with pytest.raises(ShardingError, match="no partition rule matches parameter 'layers.0.rotary'"):
        sharding.param_spec("layers.0.rotary", (8, 4), CFG, mesh(1, 2))
    with pytest.raises(ShardingError, match="parameters not in the config's layout: layers.0.extra"):
        params = random_params(CFG, 0)
        params["layers"][0]["extra"] = np.zeros((32,), np.float32)
        sharding.shard_model(params, CFG, mesh(1, 2))


def test_mesh_not_dividing_the_model_raises():
    # SmolLM2-135M: 9 heads, 3 kv heads: tp=2 and tp=4 divide neither.
    with pytest.raises(ShardingError) as e:
        sharding.param_specs(SMOLLM, mesh(2, 4))
    msg = str(e.value)
    assert "mesh dp=2,tp=4 does not divide the model" in msg
    assert "tp=4 does not divide num_heads (H=9)" in msg and "tp=4 does not divide num_kv_heads (K=3)" in msg
    assert "tp sizes that fit this model: [1, 3]" in msg
    assert sharding.param_specs(SMOLLM, mesh(1, 3))["layers.0.k"] == P(None, "tp", None)
    # Kv heads alone: 12 heads split 4 ways, 6 kv heads neither split nor replicated by tp=4.
    cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=12, num_kv_heads=6, head_dim=8, max_position_embeddings=64)
    with pytest.raises(ShardingError, match=r"tp=4 does not divide num_kv_heads \(K=6\)\..*fit this model: \[1, 2\]"):
        sharding.param_specs(cfg, mesh(1, 4))
    # MLP width and vocabulary too.
    with pytest.raises(ShardingError, match=r"tp=2 does not divide intermediate_size \(F=63\).*vocab_size \(V=65\)"):
        sharding.param_specs(ModelConfig(family="llama", vocab_size=65, hidden_size=32, intermediate_size=63,
                                         num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8,
                                         max_position_embeddings=64), mesh(1, 2))


def test_kv_heads_repeated_when_tp_is_a_multiple_of_them():
    m = mesh(1, 8)  # K=4 < tp=8: each kv head repeated twice, one per device
    assert sharding.kv_repeats(CFG, m) == 2 and sharding.mesh_config(CFG, m).num_kv_heads == 8
    specs = sharding.param_specs(CFG, m)
    assert specs["layers.0.k"] == specs["layers.0.v"] == specs["layers.0.q"] == P(None, "tp", None)
    assert specs["layers.0.k_bias"] == P("tp", None)
    assert sharding.cache_spec(CFG, m) == P("dp", "tp", None, None)
    assert sharding.mesh_config(CFG, mesh(2, 4)) == CFG and sharding.mesh_config(SMOLLM, mesh(1, 3)) == SMOLLM


def test_repeated_kv_heads_compute_the_same_function():
    import jax.numpy as jnp

    cfg = sharding.mesh_config(CFG, mesh(1, 8))
    params = random_params(CFG, 0)
    flat = checkpoint.flatten(params)
    repeated = {}
    for name, x in flat.items():
        letters = sharding.rule_letters(name)
        read = sharding._repeated_kv(lambda index, x=x: x[index], letters, 2)
        if "K" in letters:  # a shard read through the index mapping equals the slice of the repeated array
            axis = letters.index("K")
            full = np.repeat(x, 2, axis=axis)
            for lo, hi in ((0, 8), (3, 4), (2, 6), (5, 8)):
                index = tuple(slice(lo, hi) if a == axis else slice(None) for a in range(x.ndim))
                np.testing.assert_array_equal(read(index), full[index])
        repeated[name] = read(tuple(slice(None) for _ in x.shape))
    tokens = jnp.asarray([[1, 5, 9, 13, 2, 60]])
    want = model.causal_logits(jax.tree.map(jnp.asarray, params), CFG, tokens)
    got = model.causal_logits(checkpoint.unflatten({k: jnp.asarray(v) for k, v in repeated.items()},
                                                   model.param_shapes(cfg)), cfg, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_param_bytes_split_by_tp():
    b = sharding.param_bytes(SMOLLM, mesh(1, 3))
    assert b["total"] == 4 * sum(int(np.prod(s)) for s in checkpoint.expected_shapes(SMOLLM).values())
    assert b["replicated"] == 4 * 576 * (2 * 30 + 1)  # the norms
    assert b["per_device"] == (b["total"] - b["replicated"]) // 3 + b["replicated"]


def test_padded_batch():
    assert sharding.padded_batch(3, None) == 3
    assert sharding.padded_batch(3, mesh(2, 4)) == 4 and sharding.padded_batch(3, mesh(8, 1)) == 8


# ----------------------------------------------------------------------------- subprocesses


def run(cmd: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


def test_sharded_cases_on_8_devices():
    """tests/sharded_cases.py with 8 fake CPU devices (see its docstring)."""
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                "tests/sharded_cases.py"],
               {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_generate_like_one_device(tmp_path):
    """The multi-host path (jax.distributed, a mesh over two processes, sharded loading, gathering the
    results) with two local processes of 4 CPU devices each: dp spans the processes, tp stays inside."""
    from specjax.engine import Engine, LoadedModel
    from specjax.tree import TreeConfig

    params = random_params(CFG, 0)
    llm_dir = save_tiny(tmp_path / "llm", params, CFG)
    ssm_dir = save_tiny(tmp_path / "ssm", perturbed(params, 0.05, 1), CFG)
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9], [10] * 12]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in prompts))
    llm, _ = checkpoint.load_checkpoint(llm_dir)
    ssm, _ = checkpoint.load_checkpoint(ssm_dir)
    ref = Engine(LoadedModel(jax.tree.map(jax.numpy.asarray, llm), CFG),
                 [LoadedModel(jax.tree.map(jax.numpy.asarray, ssm), CFG)],
                 TreeConfig(expansion=(1, 2, 1), num_ssms=1)).generate_spec(prompts, 12, eos_ids=(63,))

    port = free_port()
    cmd = [sys.executable, "-m", "specjax.cli", "generate", "--distributed", "--mesh", "dp=2,tp=4",
           "--llm", str(llm_dir), "--ssm", str(ssm_dir), "--tree", "1,2,1", "--drafters", "ssm", "--prompts",
           str(tmp_path / "prompts.jsonl"), "--max-new-tokens", "12"]
    procs = []
    for pid in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
               "SPECJAX_COORDINATOR": f"localhost:{port}", "SPECJAX_NUM_PROCESSES": "2",
               "SPECJAX_PROCESS_ID": str(pid)}
        out = ["--output", str(tmp_path / f"out{pid}.jsonl")]
        procs.append(subprocess.Popen(cmd + out, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    assert "mesh dp=2,tp=4" in logs[0]
    rows = [json.loads(line) for line in (tmp_path / "out0.jsonl").read_text().splitlines()]
    assert not (tmp_path / "out1.jsonl").exists()  # process 0 writes
    assert [r["token_ids"] for r in rows] == [r.token_ids for r in ref]
    assert [r["llm_steps"] for r in rows] == [r.llm_steps for r in ref]
