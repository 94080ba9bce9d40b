"""Scale out: the LLM, the SSMs, their caches and the loop state over a `dp` x `tp` device mesh.

    mesh = parse_mesh("dp=2,tp=4")                  # 8 devices: 2 data-parallel groups of 4
    params, cfg = load_sharded(path, mesh)          # each device reads only its shard
    Engine(LoadedModel(params, cfg), ssms, tree, mesh=mesh)

Mesh. Two named axes: `dp` splits the batch, `tp` splits the model (Megatron-style tensor
parallelism). The default (`parse_mesh(None)` / "auto") is dp=1 and every device on tp: speculative
decoding is bound by reading the weights once per step, and splitting them is what makes each step
faster (and a model larger than one device fit at all); add dp when the batch is large.

Parameters. An ordered table `PARAM_RULES` maps a flat parameter name (`checkpoint.flatten`:
"embed", "layers.3.q", "final_norm.scale") to the dimension letters of its shape; the first rule
that matches the whole name wins, and a name that matches none is an error. A split table maps
letters to mesh axes: `TP_SPLIT` (the LLM) splits

    H  query heads     q [D, H, A], o [H, A, D], q_bias [H, A]
    K  kv heads        k, v [D, K, A], k_bias, v_bias [K, A]
    F  MLP hidden      gate, up [D, F], down [F, D], gate_bias, up_bias [F]
    V  vocabulary      embed [V, E], lm_head [E, V]

over `tp`; everything else (norms, o_bias / down_bias [D], pos_embed, project_in/out) is replicated.
Attention and MLP then need one all-reduce each per layer (after `o` and `down`), which XLA inserts.
The vocabulary is split rather than replicated: on SmolLM2-135M the tied embedding is 21% of the
weights and on LLaMA-3-70B embed + lm_head are 2 GiB each in bf16, so replicating them would cap
what tp saves (scripts/sharding_report.py prints the per-device bytes); the price is a small
all-reduce after the embedding gather and collectives in the argmax / sampling over V.

Kv heads fewer than tp (GQA / MQA): when tp is a multiple of K, k and v are replicated over tp (every
device holds all K kv heads; each device's query heads then use one of them). Any other dimension
that tp does not divide is an error (`ShardingError`) naming the dimension and the tp sizes that fit.

SSMs are replicated (`SSM_SPLIT`, nothing split over tp): they are a few percent of the LLM, and the
draft is a chain of small sequential forwards (one per tree level) whose latency per-layer
all-reduces would dominate; replicated, each tp device drafts redundantly with no communication.
Their batch is still split over dp.

Caches and loop state. A cache [B, S, K, A] is P('dp', None, kv, None) where kv is the axis its
model's k projection splits K over (so `tp` for the LLM, None for SSMs and replicated kv heads);
every other state array has the batch first and is split over dp (the PRNG key is replicated).
B must be a multiple of dp: the engine pads a batch with finished dummy rows (`padded_batch`).

Multi-host: call `init_distributed()` first in every process; every process then runs the same
program on the same prompts (SPMD), and `fetch` gathers results onto every host.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from specjax import checkpoint, model
from specjax.config import ModelConfig

AXES = ("dp", "tp")

# Flat parameter name (full match) -> its dimension letters, first match wins (see model.py).
PARAM_RULES: tuple[tuple[str, str], ...] = (
    (r"embed", "VE"),
    (r"lm_head", "EV"),
    (r"pos_embed", "PD"),  # P: learned positions (OPT)
    (r"project_in", "ED"),
    (r"project_out", "DE"),
    (r"layers\.\d+\.q", "DHA"),
    (r"layers\.\d+\.[kv]", "DKA"),
    (r"layers\.\d+\.o", "HAD"),
    (r"layers\.\d+\.q_bias", "HA"),
    (r"layers\.\d+\.[kv]_bias", "KA"),
    (r"layers\.\d+\.(gate|up)", "DF"),
    (r"layers\.\d+\.(gate|up)_bias", "F"),
    (r"layers\.\d+\.down", "FD"),
    (r"layers\.\d+\.(o|down)_bias", "D"),
    (r"(layers\.\d+\.)?(attn_norm|mlp_norm|final_norm)\.(scale|bias)", "D"),
)
TP_SPLIT = {"H": "tp", "K": "tp", "F": "tp", "V": "tp"}  # the LLM: dimension letter -> mesh axis
SSM_SPLIT: dict[str, str] = {}  # drafters: replicated
DIM_NAMES = {"H": "num_heads", "K": "num_kv_heads", "F": "intermediate_size", "V": "vocab_size",
             "D": "hidden_size", "E": "embed_dim", "A": "head_dim"}


class ShardingError(ValueError):
    """A mesh that does not fit the devices, the model or the batch, or a parameter no rule covers."""


# ----------------------------------------------------------------------------- the mesh


def mesh_shape(spec: str | None, num_devices: int) -> tuple[int, int]:
    """"dp=2,tp=4" -> (2, 4). One axis given: the other takes the remaining devices; None / "auto":
    (1, num_devices). dp * tp may be fewer than num_devices (the first dp * tp devices are used)."""
    if spec is None or spec.strip() in ("", "auto"):
        return 1, num_devices
    sizes = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in AXES or not value.strip().isdigit() or int(value) < 1 or name in sizes:
            raise ShardingError(f"bad mesh {spec!r}: expected e.g. 'dp=2,tp=4' (axes dp and tp, sizes >= 1)")
        sizes[name] = int(value)
    for given, other in (("dp", "tp"), ("tp", "dp")):
        if given in sizes and other not in sizes:
            if num_devices % sizes[given]:
                fix = ",".join(f"{a}={sizes.get(a, 1)}" for a in AXES)
                raise ShardingError(f"mesh {spec!r}: {given}={sizes[given]} does not divide the {num_devices} "
                                    f"devices; give both axes, e.g. '{fix}'")
            sizes[other] = num_devices // sizes[given]
    dp, tp = sizes["dp"], sizes["tp"]
    if dp * tp > num_devices:
        raise ShardingError(f"mesh {spec!r} needs dp * tp = {dp * tp} devices but only {num_devices} are "
                            f"available ({jax.default_backend()})")
    return dp, tp


def make_mesh(dp: int, tp: int, devices: Sequence | None = None) -> Mesh:
    """A (dp, tp) mesh over the first dp * tp devices, tp innermost (neighbouring devices, the fast
    links, share a model replica). Axes are Auto: shardings propagate through the jitted loops."""
    devices = list(jax.devices() if devices is None else devices)[: dp * tp]
    if len(devices) < dp * tp:
        raise ShardingError(f"a dp={dp} x tp={tp} mesh needs {dp * tp} devices, {len(devices)} available")
    return jax.make_mesh((dp, tp), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def parse_mesh(spec: str | None, devices: Sequence | None = None) -> Mesh:
    """"dp=2,tp=4" (or "tp=8", "dp=2", "auto", None) -> Mesh over the available devices."""
    devices = list(jax.devices() if devices is None else devices)
    return make_mesh(*mesh_shape(spec, len(devices)), devices)


def describe(mesh) -> str:
    return ",".join(f"{a}={n}" for a, n in dict(mesh.shape).items())


# ----------------------------------------------------------------------------- partition rules


def dims(cfg: ModelConfig) -> dict[str, int]:
    """Dimension letter -> size for cfg."""
    return {"V": cfg.vocab_size, "D": cfg.hidden_size, "E": cfg.embed_dim if cfg.projects_embeddings
            else cfg.hidden_size, "F": cfg.intermediate_size, "H": cfg.num_heads, "K": cfg.num_kv_heads,
            "A": cfg.head_dim, "P": cfg.max_position_embeddings + cfg.position_offset}


def dim_axis(letter: str, size: int, mesh, split: dict[str, str]) -> str | None:
    """The mesh axis dimension `letter` (of `size`) is split over, or None (replicated).
    Raises ShardingError when the axis does not divide it (kv heads fewer than tp: replicated)."""
    axis = split.get(letter)
    n = dict(mesh.shape)[axis] if axis else 1
    if n == 1:
        return None
    if size % n == 0:
        return axis
    if letter == "K" and n % size == 0:
        return None  # GQA / MQA with tp a multiple of K: every device holds all kv heads
    raise ShardingError(f"{axis}={n} does not divide {DIM_NAMES.get(letter, letter)} ({letter}={size})")


def check_fits(cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT) -> None:
    """Raises ShardingError listing every split dimension the mesh does not divide, and the tp sizes
    that would fit."""
    sizes = dims(cfg)
    problems = []
    for letter in split:
        try:
            dim_axis(letter, sizes[letter], mesh, split)
        except ShardingError as e:
            problems.append(str(e))
    if problems:
        ok = [t for t in range(1, 65) if fits_tp(cfg, t, split)]
        raise ShardingError(
            f"mesh {describe(mesh)} does not divide the model: {'; '.join(problems)}. Tensor parallelism "
            f"splits {', '.join(f'{DIM_NAMES[l]} ({l})' for l in split)} over tp; tp sizes that fit this "
            f"model: {ok} (pass e.g. --mesh dp=..,tp={ok[-1]})")


def fits_tp(cfg: ModelConfig, tp: int, split: dict[str, str] = TP_SPLIT) -> bool:
    sizes = dims(cfg)
    return all(sizes[l] % tp == 0 or (l == "K" and tp % sizes[l] == 0) for l in split)


def param_spec(name: str, shape: Sequence[int], cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT,
               rules: Sequence[tuple[str, str]] = PARAM_RULES) -> P:
    """The PartitionSpec of parameter `name` (flat, e.g. "layers.3.q") of `shape`."""
    for pattern, letters in rules:
        if re.fullmatch(pattern, name):
            break
    else:
        raise ShardingError(f"no partition rule matches parameter {name!r} {tuple(shape)}: add one to "
                            "sharding.PARAM_RULES")
    if len(letters) != len(shape):
        raise ShardingError(f"partition rule {pattern!r} gives {name!r} dimensions {letters!r} but it "
                            f"has shape {tuple(shape)}")
    sizes = dims(cfg)
    axes = []
    for letter, n in zip(letters, shape):
        if n != sizes.get(letter, n):
            raise ShardingError(f"{name}: dimension {letter} is {n}, the config says {sizes[letter]}")
        try:
            axes.append(dim_axis(letter, n, mesh, split))
        except ShardingError as e:
            raise ShardingError(f"cannot shard {name} {tuple(shape)} over mesh {describe(mesh)}: {e}") from None
    return P(*axes)


def param_specs(cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT) -> dict[str, P]:
    """Flat parameter name -> PartitionSpec for every parameter of cfg."""
    check_fits(cfg, mesh, split)
    return {name: param_spec(name, shape, cfg, mesh, split)
            for name, shape in checkpoint.expected_shapes(cfg).items()}


def cache_spec(cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT) -> P:
    """[B, S, K, A]: batch over dp, kv heads as the model's k projection splits them."""
    return P("dp", None, dim_axis("K", cfg.num_kv_heads, mesh, split), None)


def row_spec(ndim: int) -> P:
    """An array with the batch first: over dp."""
    return P("dp", *([None] * (ndim - 1)))


# ----------------------------------------------------------------------------- placing arrays


def put(x: Any, sharding: NamedSharding) -> jax.Array:
    """x (host array or jax.Array) -> jax.Array with `sharding`; each device receives only its shard.
    An array that already has the sharding is returned as is."""
    if isinstance(x, jax.Array):
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if not x.is_fully_addressable or sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_params(params: Any, cfg: ModelConfig, mesh: Mesh, split: dict[str, str] = TP_SPLIT) -> Any:
    """params pytree (numpy or jax arrays) -> the same pytree placed by the partition rules."""
    specs = param_specs(cfg, mesh, split)
    flat = checkpoint.flatten(params)
    unknown = sorted(set(flat) - set(specs))
    if unknown:
        raise ShardingError(f"parameters not in the config's layout: {', '.join(unknown)}")
    placed = {name: put(x, NamedSharding(mesh, specs[name])) for name, x in flat.items()}
    return checkpoint.unflatten(placed, params)


def load_sharded(path: str | os.PathLike | None, mesh: Mesh, split: dict[str, str] = TP_SPLIT,
                 dtype: Any = np.float32) -> tuple[dict, ModelConfig]:
    """Loads a checkpoint straight into its sharding -> (params pytree of jax.Arrays, cfg).

    A specjax checkpoint is read shard by shard (`safetensors` slices): no device, and no host, ever
    holds more than one parameter whole. An HF directory or .gguf is converted on the host first.
    path None: the embedded default LLM.
    """
    from safetensors import safe_open

    if path is None:
        from specjax import default_model

        path = default_model.default_llm_dir()
    if not checkpoint.is_checkpoint(path):
        params, cfg = checkpoint.load_model(path, dtype)
        return shard_params(params, cfg, mesh, split), cfg
    cfg = checkpoint.load_config(path)
    specs = param_specs(cfg, mesh, split)
    file = os.path.join(path, checkpoint.WEIGHTS_FILE)
    if not os.path.isfile(file):
        raise checkpoint.CheckpointError(f"{path}: {checkpoint.WEIGHTS_FILE} not found")
    try:
        with safe_open(file, framework="np") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
            checkpoint.check_tensors(shapes, checkpoint.expected_shapes(cfg), file)
            flat = {name: _read_sharded(f, name, shapes[name], NamedSharding(mesh, specs[name]), dtype)
                    for name in shapes}
    except (checkpoint.CheckpointError, ShardingError):
        raise
    except Exception as e:  # safetensors raises its own error type for truncated / corrupt files
        raise checkpoint.CheckpointError(f"{file}: cannot read safetensors file ({e})") from e
    return checkpoint.unflatten(flat, model.param_shapes(cfg)), cfg


def _read_sharded(f, name: str, shape: tuple, sharding: NamedSharding, dtype) -> jax.Array:
    """One parameter, each device's shard read from the file (each distinct shard read once)."""
    read: dict = {}

    def shard(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in read:
            read[key] = f.get_slice(name)[index].astype(dtype, copy=False)
        return read[key]

    return jax.make_array_from_callback(shape, sharding, shard)


def new_cache(cfg: ModelConfig, batch: int, num_slots: int, dtype, mesh: Mesh | None,
              split: dict[str, str] = TP_SPLIT) -> model.KVCache:
    """model.init_cache, created directly in its sharding (never whole on one device).
    mesh None: model.init_cache."""
    if mesh is None:
        return model.init_cache(cfg, batch, num_slots, dtype)
    sharding = NamedSharding(mesh, cache_spec(cfg, mesh, split))
    shape = (batch, num_slots, cfg.num_kv_heads, cfg.head_dim)
    zeros = lambda: jnp.zeros(shape, dtype, device=sharding)
    return model.KVCache(k=tuple(zeros() for _ in range(cfg.num_layers)),
                         v=tuple(zeros() for _ in range(cfg.num_layers)))


def shard_cache(cache: model.KVCache, cfg: ModelConfig, mesh: Mesh, split: dict[str, str] = TP_SPLIT):
    sharding = NamedSharding(mesh, cache_spec(cfg, mesh, split))
    return jax.tree.map(lambda x: put(x, sharding), cache)


def shard_rows(tree: Any, mesh: Mesh | None) -> Any:
    """Every array of tree [B, ...] over dp. mesh None: jnp.asarray (one device)."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    return jax.tree.map(lambda x: put(x, NamedSharding(mesh, row_spec(np.ndim(x)))), tree)


def shard_decode_state(state, cfg: ModelConfig, mesh: Mesh | None, split: dict[str, str] = TP_SPLIT):
    """A DecodeState placed: cache by `cache_spec`, PRNG key replicated, every other field over dp."""
    if mesh is None:
        return state
    rows = shard_rows(state.replace(cache=None, key=None), mesh)
    return rows.replace(cache=shard_cache(state.cache, cfg, mesh, split),
                        key=put(state.key, NamedSharding(mesh, P())))


def shard_spec_state(state, cfg, mesh: Mesh | None):
    """A SpecState (cfg: its SpecConfig) placed: the LLM's as `shard_decode_state`, SSM caches with
    replicated kv heads, ssm_len over dp."""
    if mesh is None:
        return state
    caches = tuple(shard_cache(c, s, mesh, SSM_SPLIT) for c, s in zip(state.ssm_caches, cfg.ssms))
    return state.replace(base=shard_decode_state(state.base, cfg.llm, mesh), ssm_caches=caches,
                         ssm_len=shard_rows(state.ssm_len, mesh))


def padded_batch(batch: int, mesh: Mesh | None) -> int:
    """The batch rounded up to a multiple of dp (the engine fills it with finished dummy rows)."""
    dp = dict(mesh.shape)["dp"] if mesh is not None else 1
    return -(-batch // dp) * dp


def fetch(tree: Any) -> Any:
    """jax.device_get, also for arrays spread over several hosts (gathered onto every host)."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.device_get(x)

    return jax.tree.map(get, tree)


def param_bytes(cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT, itemsize: int = 4) -> dict:
    """Bytes of cfg's parameters: {"total", "per_device", "replicated"} (per_device: on each
    device, replicated: the part of it that every device holds whole)."""
    specs = param_specs(cfg, mesh, split)
    sizes = dict(mesh.shape)
    total = per_device = replicated = 0
    for name, shape in checkpoint.expected_shapes(cfg).items():
        n = math.prod(shape) * itemsize
        ways = math.prod(sizes[a] for a in specs[name] if a is not None)
        total += n
        per_device += n // ways
        replicated += n if ways == 1 else 0
    return {"total": total, "per_device": per_device, "replicated": replicated}


# ----------------------------------------------------------------------------- multi-host


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
    """jax.distributed.initialize for multi-host runs; call it first, before anything touches a device.

    Arguments default to $SPECJAX_COORDINATOR ("host:port" of process 0), $SPECJAX_NUM_PROCESSES and
    $SPECJAX_PROCESS_ID. With none of them set, JAX detects the cluster itself (Cloud TPU pods,
    SLURM, Open MPI, ...).
    """
    env = os.environ.get
    coordinator_address = coordinator_address or env("SPECJAX_COORDINATOR")
    if num_processes is None and env("SPECJAX_NUM_PROCESSES"):
        num_processes = int(env("SPECJAX_NUM_PROCESSES"))
    if process_id is None and env("SPECJAX_PROCESS_ID"):
        process_id = int(env("SPECJAX_PROCESS_ID"))
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ShardingError("multi-host set-up needs all of coordinator address, number of processes and "
                            "process id (or none of them, to let JAX detect the cluster)")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
