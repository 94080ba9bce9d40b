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

Kv heads fewer than tp (GQA / MQA): when tp is a multiple of K, each kv head is repeated tp / K times
(`mesh_config`: the model then runs with K' = tp kv heads, one per device, computing the same
function), so the cache splits over tp like the query heads. Replicating k and v over tp instead
would make XLA all-gather the whole cache every step. Any other dimension that tp does not divide
is an error (`ShardingError`) naming the dimension and the tp sizes that fit.

SSMs are replicated (`SSM_SPLIT`, nothing split over tp): they are a few percent of the LLM, and the
draft is a chain of small sequential forwards (one per tree level) whose latency per-layer
all-reduces would dominate; replicated, each tp device drafts redundantly with no communication.
Their batch is still split over dp.

Caches and loop state. A cache [B, K, S, A] is P('dp', kv, None, None) where kv is the axis its
model's k projection splits K over (`tp` for the LLM, None for the SSMs);
every other state array (the rows' PRNG keys too) has the batch first and is split over dp.
B must be a multiple of dp: the engine pads a batch with finished dummy rows (`padded_batch`).

Multi-host: call `init_distributed()` first in every process; every process then runs the same
program on the same prompts (SPMD), and `fetch` gathers results onto every host.
"""

from __future__ import annotations

import dataclasses
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
    """A mesh that does not fit the devices or the model, or a parameter no rule covers."""


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
                            "available")
    return dp, tp


def make_mesh(dp: int, tp: int, devices: Sequence | None = None) -> Mesh:
    """A (dp, tp) mesh over the first dp * tp devices, tp innermost (neighbouring devices, the fast
    links, share a model replica). Axes are Auto: shardings propagate through the jitted loops."""
    devices = list(jax.devices() if devices is None else devices)[: dp * tp]
    if len(devices) < dp * tp:
        raise ShardingError(f"a dp={dp} x tp={tp} mesh needs {dp * tp} devices, {len(devices)} available")
    try:  # topology-aware device order where JAX knows one (TPU slices)
        return jax.make_mesh((dp, tp), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):  # e.g. a part of a TPU slice
        return Mesh(np.asarray(devices).reshape(dp, tp), AXES, axis_types=(AxisType.Auto,) * 2)


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


def axis_size(mesh, split: dict[str, str], letter: str) -> int:
    axis = split.get(letter)
    return dict(mesh.shape)[axis] if axis else 1


def kv_repeats(cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT) -> int:
    """r > 1 when the kv heads are fewer than tp and tp is a multiple of them: each kv head is then
    repeated r = tp / K times (K' = tp kv heads, one per device), else 1."""
    n, K = axis_size(mesh, split, "K"), cfg.num_kv_heads
    return n // K if n > K and n % K == 0 else 1


def mesh_config(cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT) -> ModelConfig:
    """The config the model runs with on this mesh: cfg, with num_kv_heads K * kv_repeats.

    Repeating kv head k as heads k*r .. k*r + r - 1 computes the same function (query head h reads kv
    head h // (H / K) = (h // (H / K')) // r); it lets the cache split over tp like the query heads.
    Replicating K over tp instead would make XLA all-gather the whole cache every step."""
    r = kv_repeats(cfg, mesh, split)
    return cfg if r == 1 else dataclasses.replace(cfg, num_kv_heads=cfg.num_kv_heads * r)


def fits_tp(cfg: ModelConfig, tp: int, split: dict[str, str] = TP_SPLIT) -> bool:
    """Whether tp splits every dimension of `split` (kv heads: or is a multiple of them)."""
    sizes = dims(cfg)
    return all(sizes[l] % tp == 0 or (l == "K" and tp % sizes[l] == 0) for l in split)


def check_fits(cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT) -> None:
    """Raises ShardingError naming every split dimension the mesh does not divide, and the tp sizes
    that would fit."""
    sizes = dims(cfg)
    problems = [f"{split[l]}={axis_size(mesh, split, l)} does not divide {DIM_NAMES[l]} ({l}={sizes[l]})"
                for l in split if not fits_tp(cfg, axis_size(mesh, split, l), {l: split[l]})]
    if problems:
        ok = [t for t in range(1, 65) if fits_tp(cfg, t, split)]
        raise ShardingError(
            f"mesh {describe(mesh)} does not divide the model: {'; '.join(problems)}. Tensor parallelism "
            f"splits {', '.join(f'{DIM_NAMES[l]} ({l})' for l in split)} over tp; tp sizes that fit this "
            f"model: {ok} (pass e.g. --mesh dp=..,tp={ok[-1]})")


def rule_letters(name: str, rules: Sequence[tuple[str, str]] = PARAM_RULES) -> str:
    """The dimension letters of parameter `name` (flat, e.g. "layers.3.q" -> "DHA")."""
    for pattern, letters in rules:
        if re.fullmatch(pattern, name):
            return letters
    raise ShardingError(f"no partition rule matches parameter {name!r}: add one to sharding.PARAM_RULES")


def param_spec(name: str, shape: Sequence[int], cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT) -> P:
    """The PartitionSpec of parameter `name` of `shape` (cfg: the mesh config, see `mesh_config`)."""
    letters, sizes = rule_letters(name), dims(cfg)
    if len(letters) != len(shape) or any(n != sizes.get(l, n) for l, n in zip(letters, shape)):
        raise ShardingError(f"parameter {name!r} has shape {tuple(shape)}, its rule says "
                            f"{tuple(sizes.get(l, l) for l in letters)} ({letters})")
    axes = []
    for letter, n in zip(letters, shape):
        k = axis_size(mesh, split, letter)
        if n % k:
            raise ShardingError(f"cannot shard {name} {tuple(shape)} over mesh {describe(mesh)}: "
                                f"{split[letter]}={k} does not divide {DIM_NAMES[letter]} ({letter}={n})")
        axes.append(split[letter] if k > 1 else None)
    return P(*axes)


def param_specs(cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT) -> dict[str, P]:
    """Flat parameter name -> PartitionSpec for every parameter of cfg on this mesh."""
    check_fits(cfg, mesh, split)
    cfg = mesh_config(cfg, mesh, split)
    return {name: param_spec(name, shape, cfg, mesh, split)
            for name, shape in checkpoint.expected_shapes(cfg).items()}


def cache_spec(cfg: ModelConfig, mesh, split: dict[str, str] = TP_SPLIT) -> P:
    """[B, K, S, A] (K of the mesh config): batch over dp, kv heads as the k projection splits them."""
    return P("dp", param_specs(cfg, mesh, split)["layers.0.k"][1], None, None)


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


def shard_model(params: Any, cfg: ModelConfig, mesh: Mesh, split: dict[str, str] = TP_SPLIT
                ) -> tuple[Any, ModelConfig]:
    """params pytree (numpy or jax arrays) of cfg -> (the pytree placed by the partition rules, the
    mesh config). Kv heads are repeated first when tp is a multiple of them (`mesh_config`)."""
    specs = param_specs(cfg, mesh, split)
    flat = checkpoint.flatten(params)
    unknown = sorted(set(flat) - set(specs))
    if unknown:
        raise ShardingError(f"parameters not in the config's layout: {', '.join(unknown)}")
    r = kv_repeats(cfg, mesh, split)
    placed = {}
    for name, x in flat.items():
        sharding = NamedSharding(mesh, specs[name])
        letters = rule_letters(name)
        if r == 1 or "K" not in letters:
            placed[name] = put(x, sharding)
        elif isinstance(x, jax.Array):
            placed[name] = put(jnp.repeat(x, r, axis=letters.index("K")), sharding)
        else:
            x = np.asarray(x)
            placed[name] = _from_reader(_repeated_kv(lambda index, x=x: x[index], letters, r),
                                        _repeated_shape(x.shape, letters, r), sharding)
    return checkpoint.unflatten(placed, params), mesh_config(cfg, mesh, split)


def load_sharded(path: str | os.PathLike | None, mesh: Mesh, split: dict[str, str] = TP_SPLIT,
                 dtype: Any = np.float32) -> tuple[dict, ModelConfig]:
    """Loads a checkpoint straight into its sharding -> (params pytree of jax.Arrays, mesh config).

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
        return shard_model(params, cfg, mesh, split)
    cfg = checkpoint.load_config(path)
    specs = param_specs(cfg, mesh, split)
    r = kv_repeats(cfg, mesh, split)
    file = os.path.join(path, checkpoint.WEIGHTS_FILE)
    if not os.path.isfile(file):
        raise checkpoint.CheckpointError(f"{path}: {checkpoint.WEIGHTS_FILE} not found")
    try:
        with safe_open(file, framework="np") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
            checkpoint.check_tensors(shapes, checkpoint.expected_shapes(cfg), file)
            flat = {}
            for name, shape in shapes.items():
                read = lambda index, name=name: f.get_slice(name)[index].astype(dtype, copy=False)
                letters = rule_letters(name)
                flat[name] = _from_reader(_repeated_kv(read, letters, r), _repeated_shape(shape, letters, r),
                                          NamedSharding(mesh, specs[name]))
    except (checkpoint.CheckpointError, ShardingError):
        raise
    except Exception as e:  # safetensors raises its own error type for truncated / corrupt files
        raise checkpoint.CheckpointError(f"{file}: cannot read safetensors file ({e})") from e
    cfg = mesh_config(cfg, mesh, split)
    return checkpoint.unflatten(flat, model.param_shapes(cfg)), cfg


def _from_reader(read, shape: tuple, sharding: NamedSharding) -> jax.Array:
    """A jax.Array of `shape` whose every device gets read(its index) (each distinct shard read once)."""
    shards: dict = {}

    def shard(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in shards:
            shards[key] = read(index)
        return shards[key]

    return jax.make_array_from_callback(tuple(shape), sharding, shard)


def _repeated_shape(shape: tuple, letters: str, r: int) -> tuple:
    return tuple(n * r if l == "K" else n for l, n in zip(letters, shape))


def _repeated_kv(read, letters: str, r: int):
    """read(index) of a tensor -> read(index) of that tensor with its K axis repeated r times
    (head k becomes heads k*r .. k*r + r - 1); only the original heads the index covers are read."""
    if r == 1 or "K" not in letters:
        return read
    axis = letters.index("K")

    def expanded(index):
        sl = index[axis]
        if sl.stop is None:  # the whole K axis
            return np.repeat(read(index), r, axis=axis)
        start, stop = sl.start or 0, sl.stop
        lo, hi = start // r, (stop - 1) // r + 1
        x = np.repeat(read(index[:axis] + (slice(lo, hi),) + index[axis + 1:]), r, axis=axis)
        return x[(slice(None),) * axis + (slice(start - lo * r, stop - lo * r),)]

    return expanded


def new_cache(cfg: ModelConfig, batch: int, num_slots: int, dtype, mesh: Mesh | None,
              split: dict[str, str] = TP_SPLIT) -> model.KVCache:
    """model.init_cache (of the mesh config), created directly in its sharding (never whole on one
    device). mesh None: model.init_cache."""
    if mesh is None:
        return model.init_cache(cfg, batch, num_slots, dtype)
    cfg = mesh_config(cfg, mesh, split)
    sharding = NamedSharding(mesh, cache_spec(cfg, mesh, split))
    shape = (batch, cfg.num_kv_heads, num_slots, cfg.head_dim)
    zeros = lambda: jnp.zeros(shape, dtype, device=sharding)
    return model.KVCache(k=tuple(zeros() for _ in range(cfg.num_layers)),
                         v=tuple(zeros() for _ in range(cfg.num_layers)))


def shard_cache(cache: model.KVCache, cfg: ModelConfig, mesh: Mesh, split: dict[str, str] = TP_SPLIT):
    """A cache (of cfg's mesh config) placed by `cache_spec`."""
    sharding = NamedSharding(mesh, cache_spec(cfg, mesh, split))
    return jax.tree.map(lambda x: put(x, sharding), cache)


def shard_rows(tree: Any, mesh: Mesh | None) -> Any:
    """Every array of tree [B, ...] over dp. mesh None: jnp.asarray (one device)."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    return jax.tree.map(lambda x: put(x, NamedSharding(mesh, row_spec(np.ndim(x)))), tree)


def shard_decode_state(state, cfg: ModelConfig, mesh: Mesh | None, split: dict[str, str] = TP_SPLIT):
    """A DecodeState placed: cache by `cache_spec`, every other field (the rows' PRNG keys too) over dp."""
    if mesh is None:
        return state
    rows = shard_rows(state.replace(cache=None), mesh)
    return rows.replace(cache=shard_cache(state.cache, cfg, mesh, split))


def shard_spec_state(state, cfg, mesh: Mesh | None):
    """A SpecState (cfg: its SpecConfig) placed: the LLM's as `shard_decode_state`, each drafter's
    state by its own shard_state (SSM caches with replicated kv heads, rows over dp), stats over dp."""
    if mesh is None:
        return state
    from specjax import drafters

    states = tuple(drafters.module(d).shard_state(s, d, mesh) for d, s in zip(cfg.drafters, state.drafters))
    return state.replace(base=shard_decode_state(state.base, cfg.llm, mesh), drafters=states,
                         hits=shard_rows(state.hits, mesh), credit=shard_rows(state.credit, mesh))


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
    """Bytes of cfg's parameters: {"total": the model, "per_device": what each device holds,
    "replicated": the part of per_device that every device holds whole (repeated kv heads count as split)}."""
    specs = param_specs(cfg, mesh, split)
    sizes = dict(mesh.shape)
    total = sum(math.prod(shape) for shape in checkpoint.expected_shapes(cfg).values()) * itemsize
    per_device = replicated = 0
    for name, shape in checkpoint.expected_shapes(mesh_config(cfg, mesh, split)).items():
        n = math.prod(shape) * itemsize
        ways = math.prod(sizes[a] for a in specs[name] if a is not None)
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
