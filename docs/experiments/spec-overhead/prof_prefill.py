"""What a one-token generate call costs, default vs incremental (the prefill and its drafters' part),
by jitted module under jax.profiler, five calls each.

    python docs/experiments/spec-overhead/prof_prefill.py
"""
import time, glob, shutil, collections, jax
from specjax import api
from jax.profiler import ProfileData
prompt = "What is speculative decoding?"
g = api.Generator.load(mode=None) if False else api.Generator.load()
gi = api.Generator.load(mode="incremental")
for x in (g, gi): x.generate([prompt], max_new_tokens=1, chat=True); x.generate([prompt], max_new_tokens=1, chat=True)
for name, x in (("spec", g), ("inc", gi)):
    d = f"/tmp/probe/pf_{name}"; shutil.rmtree(d, ignore_errors=True)
    jax.profiler.start_trace(d)
    t = time.perf_counter()
    for _ in range(5): x.generate([prompt], max_new_tokens=1, chat=True)
    w = (time.perf_counter() - t) / 5
    jax.profiler.stop_trace()
    pd = ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
    mods = collections.Counter(); py = collections.Counter()
    for plane in pd.planes:
        for line in plane.lines:
            for ev in line.events:
                st = dict((k, v) for k, v in ev.stats if k == "hlo_module")
                if line.name == "python": 
                    if "specjax" in ev.name: py[ev.name[:70]] += ev.duration_ns
                elif st.get("hlo_module"): mods[st["hlo_module"]] += ev.duration_ns
    print(name, f"wall {w*1e3:.1f} ms")
    for m, ns in mods.most_common(8): print(f"   device {ns/5/1e6:7.2f} ms {m}")
    for m, ns in py.most_common(25): print(f"   python {ns/5/1e6:7.2f} ms {m}")
