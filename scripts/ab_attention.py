"""30 layers' model.attend, an older specjax/model.py vs this one, interleaved in one process.

    git show REV:specjax/model.py > /tmp/old_model.py
    python scripts/ab_attention.py --old /tmp/old_model.py

Prints per (B, T, S, tokens in cache) the median ms of each and the max |difference| of the outputs.
"""
import argparse, importlib.util, sys, time
from pathlib import Path
import numpy as np, jax, jax.numpy as jnp
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--old", required=True, help="an older specjax/model.py (with an attend function)")
args = ap.parse_args()
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec); sys.modules[name] = m; spec.loader.exec_module(m); return m
mods = {"old": load("m_old", args.old), "new": load("m_new", str(Path(__file__).parents[1] / "specjax" / "model.py"))}
K, H, A = 3, 9, 64
for (B, T, S, P) in [(1, 1, 320, 100), (1, 16, 320, 100), (1, 1, 1024, 150), (8, 1, 1024, 150), (1, 16, 1024, 150), (1, 1, 1024, 900)]:
    key = jax.random.PRNGKey(0)
    kc = [jax.random.normal(jax.random.PRNGKey(l), (B, K, S, A)) for l in range(30)]
    q = jax.random.normal(key, (B, T, H, A)); k = jax.random.normal(key, (B, T, K, A))
    slots = P + jnp.broadcast_to(jnp.arange(T)[None], (B, T)); mask = jnp.arange(S)[None, None] <= slots[:, :, None]
    res = {}
    fs = {}
    for name, m in mods.items():
        def f(q, k, kc, m=m):
            out = 0.0; outs = []
            for l in range(30):
                o = m.attend(q + out, k, k, kc[l], kc[l], slots, mask)
                outs.append(o); out = out + o.reshape(q.shape).mean()
            return outs[0], out
        fs[name] = jax.jit(f); jax.block_until_ready(fs[name](q, k, kc))
    ts = {n: [] for n in fs}
    for _ in range(15):
        for n, f in fs.items():
            t = time.perf_counter(); r = jax.block_until_ready(f(q, k, kc)); ts[n].append(time.perf_counter() - t); res[n] = r[0]
    err = float(jnp.max(jnp.abs(res["old"] - res["new"])))
    print(f"B={B} T={T:2d} S={S} P={P}: " + "  ".join(f"{n} {np.median(t)*1e3:.2f} ms" for n, t in ts.items()) + f"  max|diff| {err:.2e}")
