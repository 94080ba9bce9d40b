"""Skinny matmuls on CPU: y[M, N] = x[M, K] @ W[K, N] for few rows M, through a C++ kernel called
from XLA (jax.ffi), with W re-laid-out once at load.

XLA:CPU runs a dot of 2..64 rows through a GEMM that re-packs the whole weight matrix on every call,
so verifying a tree of 8 tokens costs far more than one token although it reads the same weight
bytes. The kernel (specjax/kernels/) reads each weight once per call straight from a panel layout,
keeps the rows of x in registers, splits the columns over XLA's intra-op threads and uses AVX-512,
AVX2 or baseline vector code as the processor allows. It serves a prefill's many rows as well (x in
blocks of 128 rows, each panel streamed once per block): faster than XLA's GEMM there too.

    packed = pack(w)                  # W [K, N] -> PackedWeight, data [NP, K, 16] (f32 or bf16)
    y = matmul(x, packed)             # x [..., K] -> [..., N] in float32
    rows = packed.columns(ids)        # W[:, ids] -> [..., K]: a tied embedding read from its packed head
    params = pack_params(params, cfg) # every weight matmul of a model, for inference on CPU

`pack_params` returns the params unchanged (with a one-line note, once) when the kernel cannot be
used: not built and no compiler, a load failure, or SPECJAX_SKINNY=0. Packed params run only on CPU
(the engine packs only when the params live there and no mesh is given); GPU and TPU keep XLA's dot.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

NB = 16  # panel width (columns), fixed by the kernel
# Rows the baseline (generic, scalar-tiled) kernel serves; above it XLA's GEMM is faster there. The
# vector kernels (AVX2, AVX-512) serve every row count: a prefill's many rows too (on Zen 4 at 128 /
# 512 / 2,048 rows 1.34 / 1.40 / ~1.45 ms a row vs XLA's 2.72 / 1.79 / 1.52, docs/benchmarks.md).
GENERIC_MAX_ROWS = 64

_KERNELS = Path(__file__).resolve().parent / "kernels"
_TARGETS = {jnp.dtype(jnp.float32): "specjax_skinny_f32", jnp.dtype(jnp.bfloat16): "specjax_skinny_bf16"}


@flax.struct.dataclass
class PackedWeight:
    """W [K, N] as panels data [NP, K, 16] (NP = ceil(N / 16), zero past N). n = N is static."""

    data: jax.Array
    n: int = flax.struct.field(pytree_node=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.data.shape[1], self.n)

    @property
    def dtype(self):
        return self.data.dtype

    def unpack(self) -> jax.Array:
        """W [K, N] (a transposing copy: for the rare many-row matmul, not per step)."""
        NP, K, _ = self.data.shape
        return jnp.swapaxes(self.data, 0, 1).reshape(K, NP * NB)[:, : self.n]

    def columns(self, ids) -> jax.Array:
        """W[:, ids] as [..., K] for int ids [...] (a gather of K elements with stride 16 each)."""
        return self.data[ids // NB, :, ids % NB]


def pack(w, dtype=None) -> PackedWeight:
    """W [K, N] (numpy or jax) -> PackedWeight, on the host; dtype float32 (default: w's) or bfloat16."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"pack takes a 2-D weight [K, N], got shape {w.shape}")
    dtype = jnp.dtype(dtype or (jnp.float32 if w.dtype != jnp.bfloat16 else jnp.bfloat16))
    if dtype not in _TARGETS:
        raise ValueError(f"the skinny kernel stores float32 or bfloat16 weights, not {dtype}")
    K, N = w.shape
    NP = -(-N // NB)
    padded = np.zeros((K, NP * NB), np.float32)
    padded[:, :N] = w.astype(np.float32)
    data = np.ascontiguousarray(padded.reshape(K, NP, NB).transpose(1, 0, 2)).astype(dtype)
    return PackedWeight(data=jnp.asarray(data), n=N)


def matmul(x, w: PackedWeight):
    """x [..., K] @ W [K, N] -> [..., N] float32 (x is taken as float32; accumulation in float32).

    The kernel serves any number of rows (max_rows()); past that XLA's dot over w.unpack()."""
    *lead, K = x.shape
    if K != w.shape[0]:
        raise ValueError(f"matmul: x has {K} features but the packed weight expects {w.shape[0]}")
    rows = int(np.prod(lead)) if lead else 1
    x = x.astype(jnp.float32)
    limit = max_rows()  # loads and registers the kernel (packed params imply it is; a direct call may come first)
    if limit is not None and rows > limit:
        return x @ w.unpack().astype(jnp.float32)
    out = jax.ShapeDtypeStruct((*lead, w.n), jnp.float32)
    return jax.ffi.ffi_call(_TARGETS[jnp.dtype(w.dtype)], out)(x, w.data, n=np.int64(w.n))


def attend(q, k_new, v_new, k_cache, v_cache, old_mask, new_mask, slots, rope=None):
    """One layer's attention step in one kernel call: RoPE, attention, the cache write (what
    model.attention computes with XLA ops: per layer two rotations, a transposing copy, a loop over
    cache blocks, a dozen small fusions and two scatters, whose dispatch costs more than the
    arithmetic at decode sizes).

    q [B, T, H, A]; k_new, v_new [B, T, K, A] (before RoPE); k_cache, v_cache [B, K, S, A]; old_mask
    [B, T, S] (query t sees cache slot s); new_mask [B, T, T] (query t sees new token u); slots [B, T]
    int32 (where token t's K/V go; outside [0, S): nowhere); rope: (cos, sin) [B, T, A/2] of
    model.rope_tables, or None (no rotation). The rotation's floats equal model.rotate's.
    Returns (out [B, T, H, A] float32, k_cache, v_cache): the caches with the rotated new keys and
    the values written at their slots, in place (the results alias the cache operands).
    A query's result depends only on what it sees (slots ascending, then new tokens ascending), not on
    T or the other rows. A query that sees nothing gets zeros."""
    _load()  # registered (packed params imply it is; a direct call may come first)
    B, T, H, A = q.shape
    f32 = lambda a: a.astype(jnp.float32)
    if rope is None:
        cos = sin = jnp.zeros((B, T, 0), jnp.float32)
    else:
        cos, sin = (f32(jnp.broadcast_to(t.reshape(t.shape[0], t.shape[1], -1), (B, T, A // 2))) for t in rope)
    cache = jax.ShapeDtypeStruct(k_cache.shape, jnp.float32)
    outs = (jax.ShapeDtypeStruct((B, T, H, A), jnp.float32), cache, cache)
    return jax.ffi.ffi_call("specjax_attend_f32", outs, input_output_aliases={3: 1, 4: 2})(
        f32(q), f32(k_new), f32(v_new), f32(k_cache), f32(v_cache), old_mask.astype(bool), new_mask.astype(bool),
        slots.astype(jnp.int32), cos, sin)


# ----------------------------------------------------------------------------- the library


class KernelUnavailable(RuntimeError):
    pass


def _cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("specjax")) / "kernels"


def _open(path: Path, want: str):
    """The library at path if it loads and was built from these sources and this jaxlib, else None."""
    if not path.is_file() or path.stat().st_size == 0:  # setup.py leaves an empty file when it failed
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    try:
        build_id = lib.specjax_skinny_build_id  # a library from before build ids is stale too
    except AttributeError:
        return None
    build_id.restype = ctypes.c_char_p
    return lib if build_id() == want.encode() else None


def _find_or_build():
    """The built library: the one pip install built next to the sources, else the user cache's (built
    there now if missing or stale, e.g. after a jaxlib upgrade or a source change).

    A cache build is named by its build id: a process that has opened a stale library keeps it mapped
    under its name (dlopen returns the loaded one again), so a fresh build under the same name would
    not load until the next process."""
    from specjax.kernels import build as kbuild  # no jax import: setup.py uses it too

    try:
        want = kbuild.source_hash()
    except kbuild.BuildError as e:
        raise KernelUnavailable(str(e)) from None
    cache = _cache_dir()
    named = cache / cache_library_name(want)
    for path in [*sorted(_KERNELS.glob("_skinny*.so")), named]:
        lib = _open(path, want)
        if lib is not None:
            return lib
    try:
        path = kbuild.build(cache, named.name)
    except kbuild.BuildError as e:
        raise KernelUnavailable(f"could not build it: {str(e).splitlines()[0]}") from None
    lib = _open(path, want)
    if lib is None:
        raise KernelUnavailable(f"{path} was built but does not load")
    for old in cache.glob("_skinny*.so"):  # other builds' (best effort; a process using one keeps its mapping)
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass
    return lib


def cache_library_name(build_id: str) -> str:
    return f"_skinny-{build_id}.so"


@functools.lru_cache(maxsize=None)
def _load() -> str:
    """Loads and registers the kernel once; returns its instruction set. Raises KernelUnavailable."""
    if os.environ.get("SPECJAX_SKINNY", "1").strip().lower() in ("0", "off", "false", "no"):
        raise KernelUnavailable("disabled by SPECJAX_SKINNY=0")
    lib = _find_or_build()
    lib.specjax_skinny_isa.restype = ctypes.c_char_p
    isa = lib.specjax_skinny_isa()
    if isa is None:
        raise KernelUnavailable(f"SPECJAX_SKINNY_ISA={os.environ.get('SPECJAX_SKINNY_ISA')} names an "
                                "instruction set this processor lacks")
    jax.ffi.register_ffi_target("specjax_skinny_f32", jax.ffi.pycapsule(lib.SpecjaxSkinnyF32), platform="cpu")
    jax.ffi.register_ffi_target("specjax_skinny_bf16", jax.ffi.pycapsule(lib.SpecjaxSkinnyBF16), platform="cpu")
    jax.ffi.register_ffi_target("specjax_attend_f32", jax.ffi.pycapsule(lib.SpecjaxAttendF32), platform="cpu")
    return isa.decode()


def max_rows() -> int | None:
    """The most rows one kernel call serves: any number (None) with vector tiles, GENERIC_MAX_ROWS on
    the baseline instruction set. Raises KernelUnavailable like _load."""
    return GENERIC_MAX_ROWS if _load() == "generic" else None


def status() -> tuple[bool, str]:
    """(usable, one line saying which kernel runs or why XLA's dot is used instead)."""
    try:
        isa = _load()
    except KernelUnavailable as e:
        return False, f"specjax: CPU skinny-matmul kernel not used ({e}); XLA's dot is used instead"
    return True, f"specjax: CPU skinny-matmul kernel ({isa})"


@functools.lru_cache(maxsize=None)
def _note(line: str) -> None:
    print(line, file=sys.stderr)


def available() -> bool:
    ok, line = status()
    if not ok:
        _note(line)
    return ok


# ----------------------------------------------------------------------------- model params

# Weights that the model multiplies with `model.dense` (2-D views: q [D, H, A] is used as [D, H*A]);
# packed, q/k/v become one "qkv" [D, (H + 2K) A] and gate/up one "gate_up" [D, 2F].
_LAYER_WEIGHTS = ("q", "k", "v", "o", "gate", "up", "down")


def on_cpu(params) -> bool:
    """Whether every leaf lives on a CPU device (host numpy arrays: whether JAX's default backend is
    the CPU, where jit would put them)."""
    def cpu(leaf):
        devices = getattr(leaf, "devices", None)
        if devices is None:
            return jax.default_backend() == "cpu"
        return all(d.platform == "cpu" for d in devices())

    leaves = jax.tree.leaves(params)
    return bool(leaves) and all(cpu(l) for l in leaves)


def pack_params(params: dict, cfg, dtype=None) -> dict:
    """Inference params with every weight matmul packed for the kernel (the LM head too; a tied
    embedding is replaced by its packed head, whose columns are the embedding rows). Unchanged when
    the kernel is unavailable, the params are not on CPU, or they are packed already."""
    if not available() or not on_cpu(params) or is_packed(params):
        return params
    out = dict(params)
    out["layers"] = []
    for lp in params["layers"]:
        lp = dict(lp)
        two_d = {name: np.asarray(lp.pop(name)) for name in _LAYER_WEIGHTS if name in lp}
        # q/k/v [D, H, A] as [D, H*A]; o [H, A, D] as [H*A, D]; the rest are 2-D already.
        two_d = {n: w.reshape(w.shape[0], -1) if n in ("q", "k", "v") else w.reshape(-1, w.shape[-1])
                 for n, w in two_d.items()}
        # One call (and one pass over the inputs) instead of three and two: model.attention / mlp
        # split the outputs.
        lp["qkv"] = pack(np.concatenate([two_d.pop("q"), two_d.pop("k"), two_d.pop("v")], axis=1), dtype)
        if "gate" in two_d:
            lp["gate_up"] = pack(np.concatenate([two_d.pop("gate"), two_d.pop("up")], axis=1), dtype)
        lp.update({n: pack(w, dtype) for n, w in two_d.items()})
        out["layers"].append(lp)
    for name in ("project_in", "project_out", "lm_head"):
        if name in params:
            out[name] = pack(params[name], dtype)
    if cfg.tie_word_embeddings:
        out["embed"] = pack(np.asarray(params["embed"]).T, dtype)
    return out


def is_packed(params) -> bool:
    return any(isinstance(l, PackedWeight) for l in
               jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, PackedWeight)))


def describe(params) -> str:
    """Which matmul path params run on: 'xla', or 'skinny-<isa>-<weight dtype>' (e.g. for cache keys
    of measured costs, which differ between the two)."""
    packed = [l for l in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, PackedWeight))
              if isinstance(l, PackedWeight)]
    if not packed:
        return "xla"
    return f"skinny-{_load()}-{jnp.dtype(packed[0].dtype).name}"
