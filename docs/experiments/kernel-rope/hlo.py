"""Dumps the optimized HLO of a tree-verification forward (kernel path) to /tmp/hloN.txt.  python hlo.py N"""
import jax, sys
from specjax import api, skinny, model
from specjax.tree_search import random_tree, tree_forward
import numpy as np
llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg)
N = int(sys.argv[1])
fwd = jax.jit(tree_forward(cfg, 100, 320), donate_argnums=1)
cache = model.init_cache(cfg, 1, 320, model.compute_dtype(p))
tree = random_tree(N, np.random.default_rng(0))
txt = fwd.lower(p, cache, tree).compile().as_text()
open(f"/tmp/hlo{N}.txt", "w").write(txt)
print(len(txt))
