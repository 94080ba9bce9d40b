"""The skinny-matmul kernel of an older source tree vs this one, interleaved in one process: the default
LLM's weight matmuls (every layer + the LM head chained in one jitted function, B=1) per row count.

    mkdir -p /tmp/old && git archive REV specjax/kernels | tar -x -C /tmp/old
    python scripts/ab_kernel.py --old /tmp/old/specjax/kernels [--sizes 1,4,8,12,16,32] [--repeats 15]

Both libraries are built here (the old one into a temporary directory) and registered under their own
FFI target names. Prints per row count the median ms of each, new/old, and whether the outputs agree
bitwise. SPECJAX_SKINNY_ISA picks the instruction set for both.
"""
import argparse, ctypes, importlib.util, shutil, statistics, sys, tempfile, time
from pathlib import Path

import jax, jax.numpy as jnp, numpy as np

from specjax import api, skinny

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--old", required=True, help="an older specjax/kernels directory (sources and build.py)")
ap.add_argument("--sizes", default="1,4,8,12,16,32")
ap.add_argument("--repeats", type=int, default=15)
args = ap.parse_args()
if not (Path(args.old) / "build.py").is_file():
    ap.error(f"--old {args.old}: not a specjax/kernels directory (no build.py there)")
try:
    sizes = [int(t) for t in args.sizes.split(",")]
except ValueError:
    ap.error(f"--sizes {args.sizes!r}: expected row counts like 1,8,16")
if not sizes or not all(1 <= t for t in sizes) or args.repeats < 1:
    ap.error("--sizes must be row counts >= 1 and --repeats >= 1")

tmp = Path(tempfile.mkdtemp())
src = tmp / "src"
shutil.copytree(args.old, src, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
spec = importlib.util.spec_from_file_location("old_build", src / "build.py")
old_build = importlib.util.module_from_spec(spec); spec.loader.exec_module(old_build)
old_lib = ctypes.CDLL(str(old_build.build(tmp / "lib", "_old.so")))
print(skinny.status()[1])  # registers this tree's kernel
jax.ffi.register_ffi_target("ab_old_skinny_f32", jax.ffi.pycapsule(old_lib.SpecjaxSkinnyF32), platform="cpu")
targets = {"old": "ab_old_skinny_f32", "new": "specjax_skinny_f32"}

llm = api.load(None); cfg = llm.cfg; D = cfg.hidden_size
p = skinny.pack_params(llm.params, cfg)


def chain_for(target):
    def dense(x, w):
        return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((*x.shape[:-1], w.n), jnp.float32))(
            x, w.data, n=np.int64(w.n))

    @jax.jit
    def chain(p, x):  # the weight matmuls of a step (attention and norms left out), as probe_kernel_matmuls.py
        for lp in p["layers"]:
            x = x + dense(dense(x, lp["qkv"])[..., :D], lp["o"])
            gu = dense(x, lp["gate_up"])
            x = x + dense(gu[..., : gu.shape[-1] // 2], lp["down"])
            x = x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)  # finite values to compare
        return dense(x, p["embed"])
    return chain


chains = {name: chain_for(t) for name, t in targets.items()}
xs = {T: jax.random.normal(jax.random.PRNGKey(T), (1, T, D)) for T in sizes}
outs = {(n, T): np.asarray(c(p, xs[T])) for n, c in chains.items() for T in sizes}
ts = {(n, T): [] for n in chains for T in sizes}
for _ in range(args.repeats):
    for T in sizes:
        for n, c in chains.items():
            t = time.perf_counter(); jax.block_until_ready(c(p, xs[T])); ts[(n, T)].append(time.perf_counter() - t)
print(f"{'rows':>5} {'old ms':>8} {'new ms':>8} {'new/old':>8}  bitwise equal")
for T in sizes:
    o, n = (statistics.median(ts[(k, T)]) * 1e3 for k in ("old", "new"))
    print(f"{T:>5} {o:>8.1f} {n:>8.1f} {n / o:>8.2f}  {np.array_equal(outs[('old', T)], outs[('new', T)])}")
shutil.rmtree(tmp, ignore_errors=True)
