"""A generate of 4 and of 128 tokens (best of 3) in a process with nothing or libgomp loaded: the cost per extra token.
    python loop_ab.py plain|gomp spec|incremental"""
import sys, os, time
if sys.argv[1] == "gomp":
    import ctypes, importlib.util
    ctypes.CDLL(os.path.join(importlib.util.find_spec("torch").submodule_search_locations[0], "lib", "libgomp.so.1"), mode=ctypes.RTLD_GLOBAL)
from specjax import api
g = api.Generator.load(mode=sys.argv[2])
g.generate(["What is speculative decoding?"], max_new_tokens=4, chat=True)
g.generate(["What is speculative decoding?"], max_new_tokens=128, chat=True)
def t(n):
    ts = []
    for _ in range(3):
        s = time.perf_counter(); g.generate(["What is speculative decoding?"], max_new_tokens=n, chat=True); ts.append(time.perf_counter() - s)
    return min(ts)
a, b = t(4), t(128)
print(sys.argv[1], sys.argv[2], f"4 tokens {a*1e3:.0f} ms, 128 tokens {b*1e3:.0f} ms, per extra token {(b-a)/124*1e3:.2f} ms")
