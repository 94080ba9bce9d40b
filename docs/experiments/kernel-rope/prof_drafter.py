"""Per-call times of the feature drafter's kernel calls in the default loop (jax.profiler, README prompt, 2 x 128 tokens)."""
import collections, glob, shutil, re
import numpy as np, jax
from specjax import api
from jax.profiler import ProfileData
g = api.Generator.load()
prompt = "What is speculative decoding?"
g.generate([prompt], max_new_tokens=128, chat=True)
d = "/tmp/probe/dr"; shutil.rmtree(d, ignore_errors=True)
jax.profiler.start_trace(d)
steps = sum(g.generate([prompt], max_new_tokens=128, chat=True)[0]["llm_steps"] for _ in range(2))
jax.profiler.stop_trace()
pd = ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
calls = collections.defaultdict(list)
for plane in pd.planes:
    for line in plane.lines:
        if "Eigen" not in line.name and "PjRt" not in line.name: continue
        for ev in line.events:
            st = dict((k, v) for k, v in ev.stats if k == "hlo_module")
            if st.get("hlo_module") == "jit_spec_until_finish" and ev.name.startswith("ffi_call"):
                calls[ev.name].append(ev.duration_ns / 1e3)
names = sorted(calls, key=lambda s: int(s.split(".")[1]))
for c in names[:-151]:
    print(c, len(calls[c]), f"median {np.median(calls[c]):.1f} us  min {np.min(calls[c]):.1f}")
