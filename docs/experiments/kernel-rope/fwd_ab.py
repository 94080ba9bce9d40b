"""The default LLM's 1- and 8-token tree forwards (kernel path, min of 15) in a process with nothing or libgomp loaded.
    python fwd_ab.py plain|gomp"""
import sys, os
if sys.argv[1] == "gomp":
    import ctypes, importlib.util
    ctypes.CDLL(os.path.join(importlib.util.find_spec("torch").submodule_search_locations[0], "lib", "libgomp.so.1"), mode=ctypes.RTLD_GLOBAL)
from specjax import api, skinny
from specjax.tree_search import tree_forward_seconds_by
llm = api.load(None)
p = skinny.pack_params(llm.params, llm.cfg)
r = tree_forward_seconds_by({"k": p}, llm.cfg, [1, 8], repeats=15, stat=min)["k"]
print(sys.argv[1], {n: round(v * 1e3, 2) for n, v in r.items()})
