"""One process: the default generate (README prompt, 128 tokens, best and median of 3 after a warm-up), with nothing,
libgomp (torch's copy) or torch loaded first.  python torch_ab.py plain|gomp|torch"""
import sys, time
if sys.argv[1] == "gomp":
    import ctypes; ctypes.CDLL(__import__("os").path.join(__import__("importlib.util").util.find_spec("torch").submodule_search_locations[0], "lib", "libgomp.so.1"), mode=ctypes.RTLD_GLOBAL)
if sys.argv[1] == "torch":
    import torch  # noqa
from specjax import api
g = api.Generator.load()
g.generate(["What is speculative decoding?"], max_new_tokens=128, chat=True)
ts = []
for _ in range(3):
    t = time.perf_counter(); g.generate(["What is speculative decoding?"], max_new_tokens=128, chat=True); ts.append(time.perf_counter() - t)
print(sys.argv[1], f"best {128/min(ts):.1f} tok/s, median {128/sorted(ts)[1]:.1f}")
