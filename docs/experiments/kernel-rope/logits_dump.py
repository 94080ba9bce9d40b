"""Logits of tree forwards (kernel path, default LLM; N = 1, 8, 16 after a 16-node tree), a layer's K cache, and 48 greedy tokens of the README prompt (default and incremental), saved to compare two trees bitwise:  python logits_dump.py OUT.npz"""
import sys, numpy as np, jax
from specjax import api, skinny, model
from specjax.tree_search import random_tree, tree_forward
llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg)
fwd = jax.jit(tree_forward(cfg, 100, 320), donate_argnums=1)
out = {}
rng = np.random.default_rng(0)
for n in (1, 8, 16):
    cache = model.init_cache(cfg, 1, 320, model.compute_dtype(p))
    # a cache with content: run a 16-node tree first, then the tree of n
    _, cache = fwd(p, cache, random_tree(16, rng))
    lg, cache = fwd(p, cache, random_tree(n, rng))
    out[f"n{n}"] = np.asarray(lg)
    out[f"k{n}"] = np.asarray(cache.k[5])
g = api.Generator.load()
r = g.generate(["What is speculative decoding?"], max_new_tokens=48, chat=True)[0]
out["spec"] = np.asarray(r["token_ids"])
gi = api.Generator.load(mode="incremental")
out["inc"] = np.asarray(gi.generate(["What is speculative decoding?"], max_new_tokens=48, chat=True)[0]["token_ids"])
np.savez(sys.argv[1], **out)
print("saved", {k: v.shape for k, v in out.items()})
