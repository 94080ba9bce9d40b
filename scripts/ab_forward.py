"""The default LLM's forward + LM head over N tree tokens (B=1, 320 slots, 100 in cache) with an older
specjax/model.py vs this one, interleaved in one process: one jitted step, and per step of a jitted
while_loop of 8 (where the loop's K/V cache copies show).

    git show REV:specjax/model.py > /tmp/old_model.py
    python scripts/ab_forward.py --old /tmp/old_model.py

Prints the old version's median ms and new/old per kind and N.
"""
import argparse, functools, importlib.util, time, sys
from pathlib import Path
import numpy as np, jax
from specjax import api, skinny, model as new_model
from specjax.tree_search import random_tree, tree_forward
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec); sys.modules[name] = m; spec.loader.exec_module(m); return m
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--old", required=True, help="an older specjax/model.py")
args = ap.parse_args()
variants = {"old": args.old, "new": str(Path(__file__).parents[1] / "specjax" / "model.py")}
llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg)
S, P0 = 320, 100
def make(m):
    step = tree_forward(cfg, P0, S, model_module=m)
    fwd = jax.jit(step, donate_argnums=1)
    @functools.partial(jax.jit, donate_argnums=1)
    def loop(params, cache, tree):  # 8 steps of the same forward inside a while_loop
        def body(c):
            cache, i, acc = c
            logits, cache = step(params, cache, tree)
            return cache, i + 1, acc + logits[0, 0, 0]
        cache, _, acc = jax.lax.while_loop(lambda c: c[1] < 8, body, (cache, 0, 0.0))
        return acc, cache
    return fwd, loop
rng = np.random.default_rng(0)
sizes = [1, 8, 16]
trees = {n: random_tree(n, rng) for n in sizes}
fns = {k: make(load("m_" + k, v)) for k, v in variants.items()}
caches = {k: new_model.init_cache(cfg, 1, S) for k in fns}
times = {(k, kind, n): [] for k in fns for kind in ("step", "loop/8") for n in sizes}
for it in range(11):
    for k, (fwd, loop) in fns.items():
        for n in sizes:
            for kind, f in (("step", fwd), ("loop/8", loop)):
                t = time.perf_counter(); _, caches[k] = jax.block_until_ready(f(p, caches[k], trees[n]))
                dt = time.perf_counter() - t
                if it: times[(k, kind, n)].append(dt / (8 if kind == "loop/8" else 1))
for kind in ("step", "loop/8"):
    for n in sizes:
        o = np.median(times[("old", kind, n)]) * 1e3
        print(f"{kind:7s} N={n:2d}: old {o:6.1f} ms " + " ".join(f"{k} {np.median(times[(k, kind, n)])*1e3/o:.3f}" for k in fns if k != "old"))
